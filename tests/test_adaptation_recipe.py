"""recipes/Adaptation/run_experiment.py: the speaker split, the prepared data, the tables, the frontier plot and
(slow) a tiny end-to-end run."""
import csv
import json
import pathlib

import numpy as np
import pytest
import soundfile

from tiny import load_script

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "Adaptation" / "run_experiment.py"
EXISTING_SYSTEMS = ("base", "ft_lambda0", "anchors")  # systems whose keys every stage2.yaml has


@pytest.fixture(scope="module")
def recipe():
    return load_script(SCRIPT, "adaptation_recipe")


def column(csv_file, name):
    with open(csv_file, newline="", encoding="utf-8") as f:
        return {row[name] for row in csv.DictReader(f)}


# ------------------------------------------------------------------ split ----
def test_split_holds_test_speakers_out_of_every_training_set(recipe):
    speakers = {"librispeech-train": [f"L{i}" for i in range(30)], "asc": [f"A{i}" for i in range(10)],
                "dsp": [f"D{i}" for i in range(12)]}
    counts = {"librispeech-train": 8, "asc": 3, "dsp": 4}
    split = recipe.split_speakers(speakers, counts, small_size=5, seed=7)
    for corpus, ids in speakers.items():
        assert len(split["test"][corpus]) == counts[corpus] and set(split["test"][corpus]) <= set(ids)
    test = {s for ids in split["test"].values() for s in ids}
    broad = {s for ids in split["broad"].values() for s in ids}
    assert set(split["broad"]) == {"librispeech-train", "asc"}  # the base never sees the adapted corpus
    assert not broad & set(speakers["dsp"])
    assert broad == (set(speakers["librispeech-train"]) | set(speakers["asc"])) - test
    assert set(split["adapt"]["full"]) == set(speakers["dsp"]) - test
    assert len(split["adapt"]["small"]) == 5 and set(split["adapt"]["small"]) <= set(split["adapt"]["full"])
    assert split == recipe.split_speakers(speakers, counts, small_size=5, seed=7)  # reproducible


def test_split_refuses_impossible_counts(recipe):
    speakers = {"librispeech-train": ["a", "b", "c"], "asc": ["d", "e", "f"], "dsp": ["g", "h", "i"]}
    with pytest.raises(ValueError, match="asc"):
        recipe.split_speakers(speakers, {"librispeech-train": 2, "asc": 3, "dsp": 2}, small_size=0, seed=1)
    with pytest.raises(ValueError, match="small_size"):
        recipe.split_speakers(speakers, {"librispeech-train": 2, "asc": 2, "dsp": 2}, small_size=1, seed=1)


def test_linked_folders_hold_exactly_the_speakers_asked_for(recipe, tmp_path):
    source = tmp_path / "corpus"
    for speaker in ("a", "b", "c"):
        for utt in ("u1.flac", "u2.flac", "notes.txt"):
            (source / speaker / "s1").mkdir(parents=True, exist_ok=True)
            (source / speaker / "s1" / utt).write_bytes(b"x")
    tree = recipe.link_speakers(source, tmp_path / "tree", ["a", "b"], max_utterances=1)
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*.flac")) == ["a/s1/u1.flac", "b/s1/u1.flac"]
    flat = recipe.link_speakers(source, tmp_path / "flat", ["a", "c"], flat=True)
    assert sorted(p.name for p in flat.iterdir()) == ["a_s1_u1.flac", "a_s1_u2.flac", "c_s1_u1.flac", "c_s1_u2.flac"]
    recipe.link_speakers(source, tree, ["c"], max_utterances=1)  # another split: a and b leave the folder
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == ["c", "c/s1", "c/s1/u1.flac"]
    assert (tree / "c" / "s1" / "u1.flac").resolve() == (source / "c" / "s1" / "u1.flac").resolve()


def write_tone(path, seconds, frequency, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    audio = 0.1 * np.sin(2 * np.pi * frequency * t) + 0.01 * rng.standard_normal(t.size)
    soundfile.write(path, audio.astype(np.float32), 16000)


@pytest.fixture
def fake_shared(tmp_path):
    """A shared-data folder in miniature: 3 corpora of 7 speakers x 3 utterances, noise, music, rooms."""
    rng = np.random.default_rng(0)
    root = tmp_path / "shared"
    for c, corpus in enumerate(("librispeech-train", "asc", "dsp")):
        for s in range(7):
            for u in range(3):
                write_tone(root / "speech" / corpus / f"{corpus[:3]}{s}" / "s1" / f"u{u}.flac", 1.6,
                           100 + 40 * s + 300 * c, rng)
    for kind in ("noise", "music", "rir"):
        for n in range(2):
            write_tone(root / kind / f"{kind}{n}.flac", 1.2 if kind != "rir" else 0.2, 50 + 10 * n, rng)
    return root


def test_prepared_data_keeps_test_speakers_and_the_adapted_corpus_where_they_belong(recipe, fake_shared, tmp_path):
    args = recipe.parse_args([
        f"--shared_data={fake_shared}", f"--output_folder={tmp_path / 'out'}", "--systems", *EXISTING_SYSTEMS,
        "--test_speakers", "librispeech-train=2", "asc=2", "dsp=3", "--small_size=3", "--batch_size=2",
        "--override=babble_mixtures=2", "--override=seg_dur=1.5", "--test_seg_dur=0.8",
    ])
    runner = recipe.Runner(args, fake_shared)
    split = runner.layout()
    runner.prepare()
    test = {s for ids in split["test"].values() for s in ids}
    dsp = {f"dsp{s}" for s in range(7)}
    broad = runner.prep("broad")
    broad_train = column(broad / "train.csv", "spk_id") | column(broad / "dev.csv", "spk_id")
    assert broad_train == {f"{c[:3]}{s}" for c in ("librispeech-train", "asc") for s in range(7)} - test
    for size, speakers in (("4", dsp - test), ("3", set(split["adapt"]["small"]))):
        prep = runner.prep(f"adapt_{size}")
        assert column(prep / "train.csv", "spk_id") | column(prep / "dev.csv", "spk_id") == speakers
    replay = {p.parent.parent.name for p in (tmp_path / "out" / "data" / "replay").rglob("*.flac")}
    assert replay == broad_train  # replay draws on the base's own speakers only
    trial_speakers = {entry.split("/")[0] for line in (runner.prep("eval") / "trials.txt").read_text().splitlines()
                      for entry in line.split()[1:]}
    assert trial_speakers == test  # every corpus' test speakers, and no one else
    # noise, music and rooms are split by file identically for training and evaluation in every data set
    for name in ("eval_noise", "eval_music", "eval_rir", "noise_train", "rir_train"):
        assert column(runner.prep("adapt_4") / f"{name}.csv", "wav") == column(broad / f"{name}.csv", "wav")
    assert not column(broad / "eval_noise.csv", "wav") & column(broad / "noise_train.csv", "wav")


def test_systems_with_keys_their_yaml_lacks_are_refused_before_any_work(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(recipe.SYSTEMS, "ft_lambda0", ("stage2.yaml", {"no_such_key": 1}))
    with pytest.raises(SystemExit):
        recipe.parse_args(["--output_folder", str(tmp_path), "--systems", "base", "wiseft"])
    assert "system ft_lambda0: ['no_such_key']" in capsys.readouterr().err  # wiseft brings its fine-tuning
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------- tables ----
def results(clean, corrupted, corpora=None):
    """A results dict: clean EER and corrupted conditions' EERs (+ per corpus: {corpus: (clean, [corrupted])})."""
    def conditions(clean, corrupted):
        rows = {"clean": {"EER": clean, "minDCF": 0.5, "noise_type": None}}
        rows.update({f"noise_{5 * k}dB": {"EER": e, "minDCF": 0.5, "noise_type": "noise"}
                     for k, e in enumerate(corrupted)})
        return rows

    out = {"system": "s", "conditions": conditions(clean, corrupted)}
    out["corpora"] = {c: conditions(cl, co) for c, (cl, co) in (corpora or {}).items()}
    return out


def collected_by_hand(recipe):
    """base 5 / 20; three systems on seeds 1-3 (hand-picked values)."""
    def entry(system, speakers, per_seed):
        return {"system": system, "speakers": speakers,
                "seeds": {seed: {**recipe.run_stats(results(cl, co)), "rows": 1000}
                          for seed, (cl, co) in per_seed.items()}}

    return {
        "base": {"system": "base", "speakers": 0, "seeds": {1: recipe.run_stats(results(5.0, [10.0, 30.0]))}},
        # meets: clean 5.5 (= base + 0.5), corrupted 15 (= 0.75 x 20)
        "anchors": entry("anchors", 14, {1: (5.0, [14.0, 16.0]), 2: (6.0, [15.0, 15.0]), 3: (5.5, [15.0, 15.0])}),
        # clean 5.6 > 5.5: fails
        "ft_lambda0": entry("ft_lambda0", 14, {1: (5.6, [12.0, 12.0]), 2: (5.6, [13.0, 13.0]), 3: (5.6, [11.0, 11.0])}),
        # corrupted 15.1 > 15: fails
        "anchors_5spk": entry("anchors", 5, {1: (4.0, [15.1, 15.1]), 2: (4.0, [15.1, 15.1])}),
    }


def row_of(table, run):
    return next(line for line in table.splitlines() if line.startswith(f"| {run} |"))


def test_run_stats_averages_every_corrupted_condition_per_corpus_too(recipe):
    stats = recipe.run_stats(results(4.0, [10.0, 20.0, 60.0], {"dsp": (8.0, [12.0, 14.0])}))
    assert stats["clean"] == 4.0 and stats["corrupted"] == pytest.approx(30.0)
    assert stats["corpora"]["dsp"] == {"clean": 8.0, "corrupted": pytest.approx(13.0)}


def test_summary_marks_the_rule_on_the_means_over_seeds(recipe):
    table = recipe.summary_table(collected_by_hand(recipe))
    assert row_of(table, "anchors").endswith("| yes |")
    assert row_of(table, "ft_lambda0").endswith("| no |")
    assert row_of(table, "anchors_5spk").endswith("| no |")
    assert row_of(table, "base").endswith("| – |")
    # anchors: clean 5.0, 6.0, 5.5 -> 5.50 ± 0.50; corrupted 15, 15, 15 -> 15.00 ± 0.00, 0.75 x base
    assert "| 5.50 ± 0.50 | 15.00 ± 0.00 | 0.75 |" in row_of(table, "anchors")
    assert "| 3 |" in row_of(table, "anchors") and "| 2 |" in row_of(table, "anchors_5spk")


def test_meets_rule_boundaries(recipe):
    assert recipe.meets_rule(5.5, 15.0, 5.0, 20.0)
    assert not recipe.meets_rule(5.51, 15.0, 5.0, 20.0)
    assert not recipe.meets_rule(5.0, 15.01, 5.0, 20.0)


def test_paired_differences_are_taken_seed_by_seed(recipe):
    collected = collected_by_hand(recipe)
    clean = recipe.paired_differences(collected, "anchors", "ft_lambda0", "clean")
    assert clean == pytest.approx({1: -0.6, 2: 0.4, 3: -0.1})
    table = recipe.paired_table(collected, lambda system, size: system if size == "14" else f"{system}_{size}spk",
                                {"14": [], "5": []})
    row = row_of(table, "anchors − ft_lambda0")
    # clean: -0.6, 0.4, -0.1 -> mean -0.10, sd 0.50; corrupted: 15-12, 15-13, 15-11 -> 3.00 ± 1.00
    assert "| 14 | 3 | -0.10 ± 0.50 | 3.00 ± 1.00 |" in row
    assert "1: -0.60 / +3.00" in row
    assert "_5spk" not in table and "| 5 |" not in table  # no control on the small set


def test_per_corpus_table_has_a_column_pair_per_corpus(recipe):
    collected = {"base": {"system": "base", "speakers": 0, "seeds": {1: recipe.run_stats(
        results(5.0, [20.0], {"asc": (3.0, [9.0]), "dsp": (7.0, [11.0, 13.0])}))}}}
    table = recipe.per_corpus_table(collected)
    assert table.splitlines()[0] == ("| Run | seeds | asc clean | asc corrupted | dsp clean | dsp corrupted | "
                                     "pooled clean | pooled corrupted |")
    assert row_of(table, "base") == "| base | 1 | 3.00 | 9.00 | 7.00 | 12.00 | 5.00 | 20.00 |"


def test_frontier_plot_has_a_panel_per_size_one_point_per_run_and_marks_the_base(recipe, tmp_path, monkeypatch):
    figures = []
    save = recipe.save_figure
    monkeypatch.setattr(recipe, "save_figure", lambda figure, path: (figures.append(figure), save(figure, path))[1])
    collected = collected_by_hand(recipe)
    path = recipe.plot_frontier(collected, tmp_path / "frontier.png")
    assert path.is_file() and path.stat().st_size > 0
    panels = {axis.get_title(): axis for axis in figures[0].axes}
    assert set(panels) == {"14 adaptation speakers", "5 adaptation speakers"}
    points = {title: {c.get_label(): c for c in axis.containers} for title, axis in panels.items()}
    assert set(points["14 adaptation speakers"]) == {"anchors (n=3)", "ft_lambda0 (n=3)"}
    assert set(points["5 adaptation speakers"]) == {"anchors (n=2)"}  # every run but the base, with seed bars
    anchors = points["14 adaptation speakers"]["anchors (n=3)"].lines[0]
    assert anchors.get_xdata()[0] == pytest.approx(5.5) and anchors.get_ydata()[0] == pytest.approx(15.0)
    for axis in panels.values():
        base = [line for line in axis.lines if line.get_label() == "base"]
        assert len(base) == 1 and base[0].get_xdata()[0] == 5.0 and base[0].get_ydata()[0] == 20.0
        assert axis.get_ylim()[0] <= 15.0  # the rule's corrupted limit (0.75 x 20) stays in view


# -------------------------------------------------------------- end to end ----
@pytest.mark.slow
def test_tiny_run_leaves_exports_tables_plot_and_skips_finished_runs(recipe, shared_data, tmp_path):
    out = tmp_path / "out"
    argv = [
        f"--shared_data={shared_data}", f"--output_folder={out}", "--systems", *EXISTING_SYSTEMS,
        "--small_systems", "ft_lambda0", "--seeds", "1", "2", "--max_speakers=7", "--max_utterances=3",
        "--test_speakers", "librispeech-train=2", "asc=2", "dsp=3", "--small_size=3", "--channels=16",
        "--stage1_epochs=1", "--stage2_epochs=1", "--batch_size=4", "--jobs=2", "--threads=1",
        "--override=emb_dim=16", "--override=anchor_batch_size=8", "--override=num_workers=0",
        "--override=babble_mixtures=4", "--override=seg_dur=1.5",
    ]
    recipe.main(argv)
    for run in ("base", "ft_lambda0", "anchors", "ft_lambda0_3spk"):
        assert (out / run / "export" / "embedding_model.ckpt").is_file()
    for run in ("ft_lambda0", "anchors", "ft_lambda0_3spk"):
        for seed in (1, 2):
            saved = json.loads((out / run / f"seed{seed}" / "results.json").read_text())
            assert set(saved["corpora"]) == {"librispeech-train", "asc", "dsp"}
            per_corpus = sum(c["clean"]["n_trials"] for c in saved["corpora"].values())
            assert per_corpus == saved["conditions"]["clean"]["n_trials"]
    assert len(list((out / "runs" / "adapt_4" / "ft_lambda0").iterdir())) == 2  # seeds on one base
    summary = (out / "summary.md").read_text()
    for run in ("base", "ft_lambda0", "anchors", "ft_lambda0_3spk"):
        assert f"| {run} |" in summary
    assert "| anchors − ft_lambda0 | 4 | 2 |" in (out / "paired.md").read_text()
    assert (out / "frontier.png").is_file() and (out / "per_corpus.md").is_file()
    timing = json.loads((out / "timing.json").read_text())
    assert "train-anchors-seed2" in timing and "total" in timing
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/results.json")}
    recipe.main(argv)  # everything is done: nothing is trained or scored again
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/results.json")} == stamps
    assert json.loads((out / "timing.json").read_text())["train-anchors-seed2"] == timing["train-anchors-seed2"]
