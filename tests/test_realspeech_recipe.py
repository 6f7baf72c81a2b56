"""recipes/RealSpeech/run_experiment.py end to end on a tiny subset of the shared data."""
import hashlib
import json
import logging
import pathlib
import re

import pytest
import ruamel.yaml

from tiny import load_script

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "RealSpeech" / "run_experiment.py"
SYSTEMS = ("base", "stage2_contrastive", "joint", "joint_equal_updates")



@pytest.fixture(scope="module")
def recipe():
    return load_script(SCRIPT, "realspeech_recipe")


def tiny_argv(shared_data, out):
    """4 speakers x 3 utterances per corpus, C=32, 1 + 1 epochs vs joint 3, 1 seed, 4 systems + 1 variant."""
    overrides = {"emb_dim": 32, "batch_size": 8, "anchor_batch_size": 8, "num_workers": 0,
                 "babble_mixtures": 4, "seg_dur": 1.5}
    return [
        f"--shared_data={shared_data}", f"--output_folder={out}", "--seeds", "1", "--systems", *SYSTEMS,
        "--channels=32", "--stage1_epochs=1", "--stage2_epochs=1", "--joint_epochs=3", "--patience=3",
        "--max_speakers=4", "--max_utterances=3", "--jobs=2",
        "--variant", "tiny_lambda3 anchor_weight=3.0",
        "--variant", "tiny_cleanbase base.stage1_noise=False",
        *(f"--override={key}={value}" for key, value in overrides.items()),
    ]


@pytest.fixture(scope="module")
def tiny_run(recipe, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("realspeech")
    recipe.main(tiny_argv(shared_data, out))
    return recipe, shared_data, out


@pytest.mark.slow  # trains every system (once for the module)
def test_leaves_exports_results_tables_and_plots(tiny_run):
    recipe, _, out = tiny_run
    expected = {"clean", "reverb"} | {f"{kind}_{snr}dB" for kind in ("noise", "music", "babble")
                                      for snr in (0, 5, 10, 15, 20)}
    labels = [line.split()[0] for line in (out / "runs" / "realspeech" / "prepared" / "trials.txt").read_text().splitlines()]
    n_target, n_nontarget = labels.count("1"), labels.count("0")
    # an EER is the mean of a miss rate and a false-alarm rate: (misses / targets + false alarms / non-targets) / 2
    possible_eers = [50 * (m / n_target + f / n_nontarget) for m in range(n_target + 1) for f in range(n_nontarget + 1)]
    for system in SYSTEMS:
        export = out / system / "export"
        assert (export / "hyperparams.yaml").is_file() and (export / "embedding_model.ckpt").is_file()
        results = json.loads((out / system / "seed1" / "results.json").read_text())
        assert results["system"] == system and set(results["conditions"]) == expected
        for cond in results["conditions"].values():
            assert (cond["n_trials"], cond["n_target"]) == (len(labels), n_target)
            assert min(abs(cond["EER"] - eer) for eer in possible_eers) < 1e-9
    table = (out / "comparison.md").read_text()
    assert all(f"| {system} |" in table for system in SYSTEMS)
    assert "noise EER" in table and "music EER" in table and "babble EER" in table
    assert (out / "eer_vs_snr.png").stat().st_size > 1000 and (out / "dev_curves.png").stat().st_size > 1000
    by_condition = (out / "eer_by_condition.md").read_text()
    assert "music_20dB" in by_condition and "| stage2_contrastive | 1 |" in by_condition


@pytest.mark.slow  # trains every system (once for the module)
def test_summary_reports_the_corrupted_mean_of_each_results_file(tiny_run):
    _, _, out = tiny_run
    summary = (out / "summary.md").read_text()
    for system in SYSTEMS:
        conditions = json.loads((out / system / "seed1" / "results.json").read_text())["conditions"]
        corrupted = [c["EER"] for name, c in conditions.items() if name != "clean"]
        mean = sum(corrupted) / len(corrupted)
        row = next(line for line in summary.splitlines() if line.startswith(f"| {system} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert float(cells[2]) == pytest.approx(conditions["clean"]["EER"], abs=0.0051)  # printed to 2 decimals
        assert float(cells[3]) == pytest.approx(mean, abs=0.0051)


@pytest.mark.slow  # trains every system (once for the module)
def test_each_system_is_used_at_its_best_dev_epoch(tiny_run):
    recipe, _, out = tiny_run
    joint = out / "runs" / "realspeech" / "1" / "joint"
    curve = recipe.dev_curve(joint)
    assert len(curve) == 3  # patience 3 never stops a 3-epoch run
    log_lines = [line for line in (joint / "train_log.txt").read_text().splitlines() if line.startswith("epoch")]
    assert [float(line.split("valid ErrorRate: ")[1]) for line in log_lines] == curve
    best_epoch = min(range(3), key=curve.__getitem__) + 1
    assert checkpoint_epoch_of_export(out / "joint" / "export", joint) == best_epoch


@pytest.mark.slow  # trains every system (once for the module)
def test_joint_at_equal_updates_is_its_checkpoint_after_base_plus_stage2_epochs(tiny_run):
    recipe, _, out = tiny_run
    root = out / "runs" / "realspeech" / "1"
    budget = len(recipe.dev_curve(root / "stage1")) + len(recipe.dev_curve(root / "variants" / "stage2_contrastive"))
    assert budget == 2
    assert checkpoint_epoch_of_export(out / "joint_equal_updates" / "export", root / "joint") == 2


def checkpoint_epoch_of_export(export, stage_folder):
    """The training epoch of the checkpoint an export names in its hyperparams.yaml."""
    import yaml

    name = re.search(r"checkpoint: (CKPT\+\S+)", (export / "hyperparams.yaml").read_text()).group(1)
    return yaml.safe_load((stage_folder / "save" / name / "CKPT.yaml").read_text())["epoch"]


@pytest.mark.slow  # trains every system (once for the module)
def test_trials_stay_within_held_out_speakers_of_each_corpus(tiny_run):
    _, _, out = tiny_run
    prep = out / "runs" / "realspeech" / "prepared"
    train_speakers = {line.split(",")[-1] for line in (prep / "train.csv").read_text().split()[1:]}
    corpus_of = {}
    for line in (prep / "test.csv").read_text().split()[1:]:
        wav, spk = line.split(",")[2], line.split(",")[-1]
        corpus_of[spk] = pathlib.Path(wav).parents[2].name
    assert corpus_of and not train_speakers & set(corpus_of)
    assert set(corpus_of.values()) == {"librispeech-train", "dsp", "asc"}
    enrol_and_test_spk = {}
    for line in (prep / "enrol.csv").read_text().split()[1:] + (prep / "test.csv").read_text().split()[1:]:
        fields = line.split(",")
        enrol_and_test_spk[fields[0]] = fields[-1]
    for line in (prep / "trials.txt").read_text().splitlines():
        label, enrol, test = line.split()
        spk_e = enrol_and_test_spk[recipe_id(enrol)]
        spk_t = enrol_and_test_spk[recipe_id(test)]
        assert corpus_of[spk_e] == corpus_of[spk_t]
        assert (label == "1") == (spk_e == spk_t)


def recipe_id(entry):
    """Trial entry -> CSV row ID (strip the audio extension)."""
    return entry.rsplit(".", 1)[0] if entry.endswith((".wav", ".flac")) else entry


def trained_state(out):
    """sha256 of every file of the training folders, anchors, exports and results (locks aside), by path."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix != ".lock" and len(p.relative_to(out).parts) > 2
        and p.relative_to(out).parts[0] not in ("logs", "subset", "variants")
    }


@pytest.mark.slow  # trains every system (once for the module)
def test_rerun_with_the_same_options_trains_and_evaluates_nothing(tiny_run, caplog):
    """Every skip is the pipeline's: each step is started again and finds its step.json matching."""
    recipe, shared_data, out = tiny_run
    before = trained_state(out)
    results = {path: path.stat().st_mtime_ns for path in out.glob("*/seed1/results.json")}
    runs = {log.name: log.read_text().count("$ ") for log in (out / "logs").glob("*.log")}
    assert set(runs) == {"1-base.log", "1-stage2_contrastive.log", "1-joint.log", "1-tiny_lambda3.log",
                         "1-tiny_cleanbase.log", "1-base_stage1_noise-False.log"}
    with caplog.at_level(logging.INFO, logger="anchor_reg.pipeline"):
        runner = recipe.main(tiny_argv(shared_data, out))
    evaluations = [r.getMessage() for r in caplog.records if r.name == "anchor_reg.pipeline"]
    assert len(evaluations) == len(results) == 7 and all(": done (" in line for line in evaluations)
    assert {path: path.stat().st_mtime_ns for path in results} == results  # not evaluated again
    assert trained_state(out) == before  # no checkpoint, anchors, export or results file written again
    for log in (out / "logs").glob("*.log"):
        text = log.read_text()
        assert text.count("$ ") == runs[log.name] + 1  # the pipeline was asked again ...
        this_run = text[text.rindex("$ "):]
        assert ": done (" in this_run and ": running (" not in this_run  # ... and skipped every step
    assert (out / "runs" / "realspeech" / "1" / "stage1" / "step.json").is_file()
    assert (out / "base" / "seed1" / "step.json").is_file()  # the evaluation is a step too
    assert runner.timing["1/train/base"]["wall_s"] > 0 and runner.timing["total"]["cpu_s"] > 0


@pytest.mark.slow  # trains every system (once for the module)
def test_rerun_with_other_settings_stops_with_one_error_line_and_keeps_everything(tiny_run):
    recipe, shared_data, out = tiny_run
    before = trained_state(out)
    with pytest.raises(SystemExit) as stopped:
        recipe.main([*tiny_argv(shared_data, out), "--channels=64"])
    message = str(stopped.value)
    assert message.startswith("error: ") and "\n" not in message
    assert re.search(r"(stage1|joint) in \S+ finished training with other settings \(channels: 32 then, 64 now\)",
                     message)
    assert re.search(r"log: \S+/logs/1-[\w-]+\.log\]$", message)
    assert trained_state(out) == before


@pytest.mark.slow  # trains every system (once for the module)
def test_variant_trains_beside_the_shared_stage1(tiny_run):
    _, _, out = tiny_run
    seed_root = out / "runs" / "realspeech" / "1"
    assert (seed_root / "variants" / "tiny_lambda3" / "train_log.txt").is_file()
    assert (seed_root / "stage1" / "train_log.txt").read_text().count("epoch: 1,") == 1  # not retrained
    assert not (seed_root / "variants" / "tiny_lambda3" / "stage1").exists()
    table = (out / "variants" / "seeds_1" / "comparison.md").read_text()
    assert "| tiny_lambda3 |" in table and "| stage2_contrastive |" in table
    assert "anchor_weight: 3.0" in (seed_root / "variants" / "tiny_lambda3" / "hyperparams.yaml").read_text()


@pytest.mark.slow  # trains every system (once for the module)
def test_variant_with_base_keys_trains_its_own_base_and_anchors(tiny_run):
    _, _, out = tiny_run
    seed_root = out / "runs" / "realspeech" / "1"
    own_base = seed_root / "stage1_stage1_noise-False"
    assert "stage1_noise: false" in (own_base / "hyperparams.yaml").read_text().lower()
    assert "stage1_noise: true" in (seed_root / "stage1" / "hyperparams.yaml").read_text().lower()  # the default
    record = ruamel.yaml.YAML(typ="rt").load((seed_root / "variants" / "tiny_cleanbase" / "hyperparams.yaml").read_text())
    assert record["base_model"] == str(own_base)
    assert record["anchors"] == str(seed_root / "anchors_stage1_noise-False" / "anchors.pt")
    assert (seed_root / "anchors_stage1_noise-False" / "anchors.pt").is_file()
    assert (out / "logs" / "1-base_stage1_noise-False.log").is_file()  # trained as a step of its own
    assert (own_base / "train_log.txt").read_text().count("epoch: 1,") == 1  # once, not again by stage 2
    table = (out / "variants" / "seeds_1" / "comparison.md").read_text()
    assert "| tiny_cleanbase |" in table and "| base_stage1_noise-False |" in table  # the own base is evaluated
    assert json.loads((out / "base_stage1_noise-False" / "seed1" / "results.json").read_text())["system"] == \
        "base_stage1_noise-False"


def test_own_bases_train_beside_the_seeds_base_and_their_variants_in_parallel(recipe, tmp_path):
    """With --jobs 2, a variant's own base starts while the seed's base trains, and two variants
    sharing it run at once (steps are stubs that meet at barriers; sequential scheduling times out)."""
    import threading

    args = recipe.parse_args([f"--output_folder={tmp_path}", "--seeds", "1", "--systems", "base", "--jobs", "2"])
    runner = recipe.Runner(args, {})
    bases_meet, variants_meet = threading.Barrier(2, timeout=20), threading.Barrier(2, timeout=20)
    calls = []
    runner.base = lambda seed, with_base: (calls.append("base"), bases_meet.wait())
    runner.own_base = lambda seed, overrides: (calls.append(recipe.own_base_system(overrides)), bases_meet.wait())
    runner.stage2 = lambda seed, name, overrides: (calls.append(name), variants_meet.wait())
    clean = {"base.stage1_noise": "False"}
    runner.run_seed_chains({1: {"cb_a": clean, "cb_b": {**clean, "anchor_weight": "0.0"}}}, ["base"])
    assert calls[:2] in (["base", "base_stage1_noise-False"], ["base_stage1_noise-False", "base"])
    assert sorted(calls[2:]) == ["cb_a", "cb_b"]


def test_seeds_finish_one_after_the_other_each_leaving_its_tables(recipe, tmp_path):
    """Of the ready steps the lowest seed's starts first: seed 1's stage 2s and equal-updates view before
    seed 2's base; the tables are written as each seed finishes, over the seeds finished so far."""
    args = recipe.parse_args([f"--output_folder={tmp_path}", "--seeds", "1", "2", "--jobs", "1"])
    runner = recipe.Runner(args, {})
    calls = []
    runner.base = lambda seed, with_base: calls.append(f"base{seed}")
    runner.joint_chain = lambda seed: calls.append(f"joint{seed}")
    runner.stage2 = lambda seed, name, overrides: calls.append(f"{name}{seed}")
    runner.equal_updates = lambda seed: calls.append(f"equal{seed}")
    runner.compare = lambda systems, seeds, folder: calls.append(f"tables{seeds}")
    variants = {"s2a": {"anchor_weight": "1.0"}, "stage2_contrastive": {}}
    runner.run_seed_chains({1: dict(variants), 2: dict(variants)}, list(recipe.DEFAULT_SYSTEMS))
    assert calls == ["base1", "joint1", "s2a1", "stage2_contrastive1", "equal1", "tables[1]",
                     "base2", "joint2", "s2a2", "stage2_contrastive2", "equal2", "tables[1, 2]"]


def test_an_interrupted_run_keeps_the_tables_of_its_finished_seeds(recipe, tmp_path):
    """A step of seed 2 fails: seed 1's tables were written before it, none claim seed 2."""
    args = recipe.parse_args([f"--output_folder={tmp_path}", "--seeds", "1", "2", "--jobs", "1",
                              "--systems", "base"])
    runner = recipe.Runner(args, {})
    tables = []

    def base(seed, with_base):
        if seed == 2:
            raise RuntimeError("killed")

    runner.base = base
    runner.compare = lambda systems, seeds, folder: tables.append(seeds)
    with pytest.raises(RuntimeError, match="killed"):
        runner.run_seed_chains({1: {}, 2: {}}, ["base"])
    assert tables == [[1]]


def test_the_runner_starts_every_step_even_where_results_exist(recipe, tmp_path):
    """Skipping is the pipeline's (each step's step.json), never the runner's: results on disk change nothing."""
    args = recipe.parse_args([f"--output_folder={tmp_path}", "--seeds", "1", "--jobs", "1"])
    runner = recipe.Runner(args, {})
    for system in recipe.DEFAULT_SYSTEMS:
        runner.results_file(system, 1).parent.mkdir(parents=True)
        runner.results_file(system, 1).write_text("{}")
    calls = []
    runner.base = lambda seed, with_base: calls.append("base")
    runner.joint_chain = lambda seed: calls.append("joint")
    runner.stage2 = lambda seed, name, overrides: calls.append(name)
    runner.equal_updates = lambda seed: calls.append("equal")
    runner.compare = lambda systems, seeds, folder: calls.append("tables")
    runner.run_seed_chains({1: dict(args.variants)}, args.systems)
    assert calls == ["base", "joint", "stage2_contrastive", "stage2_lambda0", "equal", "tables"]


def test_a_step_the_pipeline_refuses_stops_the_runner_with_its_one_error_line(recipe, tmp_path):
    args = recipe.parse_args([f"--output_folder={tmp_path}", "--seeds", "1"])
    runner = recipe.Runner(args, {})
    with pytest.raises(SystemExit) as stopped:
        runner.train("stage1.yaml", 1, "base", no_such_key=1)
    message = str(stopped.value)
    assert message.startswith("error: ") and "\n" not in message
    assert "unknown key(s) ['no_such_key']" in message and message.endswith(f"log: {tmp_path}/logs/1-base.log]")
    log = (tmp_path / "logs" / "1-base.log").read_text()
    assert log.startswith("$ ") and " -m anchor_reg.pipeline hparams/stage1.yaml " in log


def test_rejects_bad_options(recipe):
    with pytest.raises(SystemExit):
        recipe.parse_args(["--override=no_such_key=1"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--variant", "joint anchor_weight=2"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--variant", "typo anchor_wieght=2"])
    args = recipe.parse_args(["--variant", "slow lr=0.0001 frozen_parameters=[classifier]"])
    assert args.extra_variants == {"slow": {"lr": "0.0001", "frozen_parameters": "[classifier]"}}
    assert args.variants["stage2_contrastive"]["anchor_objective"] == "contrastive"


def test_default_systems_leave_out_the_plain_pull_which_stays_selectable(recipe):
    assert recipe.parse_args([]).systems == ["base", "stage2_contrastive", "stage2_lambda0", "joint",
                                             "joint_equal_updates"]
    args = recipe.parse_args(["--systems", "base", "stage2_pull"])
    assert args.variants == {"stage2_pull": {"anchor_objective": "pull"}}


def test_missing_shared_data_skips_or_fails_clearly(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recipe, "DEFAULT_SHARED_DATA", tmp_path / "absent")
    assert recipe.main([f"--output_folder={tmp_path / 'out'}"]) is None
    assert "no shared data" in capsys.readouterr().out and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="no shared data"):
        recipe.main([f"--shared_data={tmp_path / 'absent'}"])
