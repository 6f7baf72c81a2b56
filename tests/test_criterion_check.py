"""recipes/Adaptation/criterion_check.py: the rank correlations, the runs read from an output folder, the table,
the logged epochs and the criterion of a model on fixed dev rows."""
import json
import pathlib

import pytest
import torch

from tiny import load_script

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "Adaptation" / "criterion_check.py"


@pytest.fixture(scope="module")
def check():
    return load_script(SCRIPT, "criterion_check")


def point(criterion, clean, corrupted, dsp=None):
    stats = {"clean": clean, "corrupted": corrupted, "mean": (clean + corrupted) / 2, "dsp corrupted": dsp}
    return {"adapted": criterion, "stats": stats}


def test_spearman_on_hand_made_ranks(check):
    # criterion ranks 1..5; clean ranks 2,1,4,3,5: d = -1,1,-1,1,0, rho = 1 - 6*4/(5*24) = 0.8
    points = [point(c, clean, 10 - clean) for c, clean in zip([0.1, 0.2, 0.3, 0.4, 0.5], [7.0, 6.0, 9.0, 8.0, 11.0])]
    found = check.correlations(points, "adapted")
    assert found["clean"][0] == pytest.approx(0.8)
    assert found["corrupted"][0] == pytest.approx(-0.8)  # corrupted = 10 - clean: the ranks reversed
    assert found["clean"][2] == 5
    assert "mean" not in found  # (clean + corrupted) / 2 is constant here: rho is undefined
    assert "dsp corrupted" not in found  # no value: nothing to correlate


def test_spearman_needs_three_points_and_skips_missing_values(check):
    points = [point(0.1, 5.0, 6.0), point(None, 1.0, 2.0), point(0.3, 7.0, 8.0)]
    assert check.correlations(points, "adapted") == {}


def write_results(folder, clean, corrupted_values, dsp_clean, dsp_corrupted):
    conditions = {"clean": {"EER": clean}, **{f"noise_{i}dB": {"EER": v} for i, v in enumerate(corrupted_values)}}
    corpora = {"dsp": {"clean": {"EER": dsp_clean}, "noise_0dB": {"EER": dsp_corrupted}}}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"conditions": conditions, "corpora": corpora}))


def test_runs_and_table_of_a_fake_output_folder(check, tmp_path):
    (tmp_path / "data").mkdir()
    split = {"adapt": {"full": ["a", "b", "c"], "small": ["a", "b"]}}
    (tmp_path / "data" / "speakers.json").write_text(json.dumps(split))
    write_results(tmp_path / "base" / "seed1", 8.0, [20.0, 22.0], 9.0, 21.0)
    write_results(tmp_path / "ft_lambda0" / "seed1", 10.0, [24.0, 26.0, 28.0], 9.5, 19.0)
    write_results(tmp_path / "ft_lambda0_2spk" / "seed2", 11.0, [30.0], 10.0, 20.0)
    (tmp_path / "ft_lambda0" / "export").mkdir()  # a folder without seed results is no run

    runs = {(r["run"], r["seed"]): r for r in check.finished_runs(tmp_path)}
    assert set(runs) == {("base", 1), ("ft_lambda0", 1), ("ft_lambda0_2spk", 2)}
    assert (runs["base", 1]["system"], runs["base", 1]["speakers"]) == ("base", 0)
    assert (runs["ft_lambda0", 1]["system"], runs["ft_lambda0", 1]["speakers"]) == ("ft_lambda0", 3)
    assert (runs["ft_lambda0_2spk", 2]["system"], runs["ft_lambda0_2spk", 2]["speakers"]) == ("ft_lambda0", 2)
    stats = runs["ft_lambda0", 1]["stats"]
    assert stats["corrupted"] == pytest.approx(26.0) and stats["mean"] == pytest.approx(18.0)
    assert stats["dsp corrupted"] == pytest.approx(19.0)
    # one base, whatever the stage-2 seeds asked for
    assert [r["run"] for r in check.finished_runs(tmp_path, seeds=[2])] == ["base", "ft_lambda0_2spk"]

    groups = {3: [{**runs["base", 1], "adapted": 0.25, "broad": 0.5, "source": "base/export"},
                  {**runs["ft_lambda0", 1], "adapted": 0.125, "broad": None, "source": "best checkpoint"}]}
    checks = {("labelfree", 1): {"logged": {1: 0.2, 2: 0.1}, "criterion_epochs": [2], "chosen": 2, "kept": 2,
                                 "loss_epoch": 1, "logged_at_kept": 0.1, "recomputed": 0.1, "dev_rows": 10}}
    text = check.report(groups, checks, {3: 8, "broad": 4})
    assert "## 3 adaptation speakers (8 adapted dev rows, 4 broad dev rows)" in text
    assert "| base | 1 | 25.00 | 50.00 | 8.00 | 21.00 | 14.50 | 21.00 | base/export |" in text
    assert "| ft_lambda0 | 1 | 12.50 | – | 10.00 | 26.00 | 18.00 | 19.00 | best checkpoint |" in text
    assert "| labelfree | 1 | 1: 20.0, 2: 10.0 | [2] | 2 | 2 | 1 | 10.00 | 10.00 | 10 |" in text


def test_logged_epochs_reads_the_train_log(check, tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text(
        "epoch: 1, lr: 5.00e-04 - train loss: 2.28e-01 - valid loss: 1.92e-01, valid ErrorRate: 1.30e-01\n"
        "epoch: 2, lr: 4.36e-04, stopped_early: True - train loss: 4.10e-01, train loss_replay: 1.88e-01"
        " - valid loss: 1.96e-01, valid ErrorRate: 5.26e-02\n")
    assert check.logged_epochs(log) == {1: (0.192, 0.13), 2: (0.196, 0.0526)}


class PickEncoder:
    """encode_batch: the first two samples of the waveform as the (1, 1, 2) embedding."""

    def encode_batch(self, wavs):
        return wavs[:, None, :2]


def test_criterion_of_a_model_on_fixed_dev_rows(check):
    dev = check.DevRows.__new__(check.DevRows)  # the inputs, without a prepared folder
    dev.gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # row 0 nearest its own anchor, row 1 nearest anchor 0, row 2 its own: one error in three
    dev.noisy = [torch.tensor([2.0, 0.1, 9.0]), torch.tensor([1.0, 0.5, 9.0]), torch.tensor([-3.0, 1.0, 9.0])]
    assert dev.error(PickEncoder()) == pytest.approx(1 / 3)


def test_audio_key_names_the_audio_whatever_the_link(check, tmp_path):
    audio = tmp_path / "a.flac"
    audio.write_bytes(b"x")
    (tmp_path / "link.flac").symlink_to(audio)
    row = {"wav": str(audio), "start": "0", "stop": "16000"}
    assert check.audio_key({**row, "wav": str(tmp_path / "link.flac")}) == check.audio_key(row)
    assert check.audio_key({**row, "start": "8000"}) != check.audio_key(row)
