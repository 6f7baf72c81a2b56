"""The chain as numbered steps that hand over files (``python -m anchor_reg.pipeline hparams/stage2.yaml``):
1 prepare, 2 stage 1 (when ``base_model`` is its folder), 3 anchors, 4 stage 2, 5 verify; a stage without a base
runs 1, itself and 5. A step's ``step.json`` records its inputs' digests: it is skipped when the record matches,
and a finished stage asked to train otherwise stops the run. Table of the files: docs/REFERENCE.md.
"""
import contextlib
import dataclasses
import importlib.util
import json
import logging
import pathlib
import sys

import speechbrain as sb
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import if_main_process

from anchor_reg.anchors import AnchorStore, checkpoint_fingerprint
from anchor_reg.atomic import write_text_atomic
from anchor_reg.base import check_trained_on, load_base
from anchor_reg.model_folder import savedir_of
from anchor_reg.stage_data import anchor_stores
from anchor_reg.checkpointer import best_checkpoint, end_of_epoch
from anchor_reg.config import ConfigError, check_writable, keys_of, parse_overrides, plain_values, resolve
from anchor_reg.epoch_counter import stops_under
from anchor_reg.lock import waiting_lock
from anchor_reg.provenance import ProvenanceError, rows_digest
from anchor_reg.report import verification_report

logger = logging.getLogger(__name__)

# Keys that name places or how a run is carried out, not what a stage learns: a finished stage is the same
# stage whatever they are (what the data folders hold is its train.csv digest; the base, its fingerprint).
NOT_SETTINGS = {
    "data_folder", "data_folders", "noise_folders", "musan_folder", "rir_folder", "trial_list", "output_base",
    "experiment_name", "prep_folder", "output_root", "output_folder", "save_folder", "train_log", "skip_report",
    "train_noise_csv", "train_babble_csv", "train_rir_csv", "base_model", "pretrained_folder", "anchors",
    "evaluate_after_training", "eval_snrs", "eval_noise_types", "eval_batch_size", "num_workers",
    "skip_bad_files", "anchor_batch_size", "reextract_anchors", "num_train_speakers",
}


@dataclasses.dataclass
class Step:
    """One step: ``inputs`` (name -> digest or value), the ``outputs`` that mark it done, how it ``run``s;
    a training step's ``finished()`` and training ``speakers`` (to name a change of data)."""

    number: int
    name: str
    folder: pathlib.Path
    inputs: dict
    outputs: list
    run: callable
    finished: callable = None
    speakers: list = None

    @property
    def record(self):
        """``<folder>/step.json``: the inputs of the last completed run."""
        return self.folder / "step.json"

    def done(self):
        """Whether the outputs exist and were made from these inputs."""
        if not all(pathlib.Path(path).exists() for path in self.outputs) or not self.record.is_file():
            return False
        recorded = json.loads(self.record.read_text(encoding="utf-8"))["inputs"]
        return recorded == json.loads(json.dumps(self.inputs))  # as recorded: tuples read back as lists

    def __call__(self):
        """Skips the step when done; refuses a finished stage made otherwise; else runs it and records its inputs."""
        if self.done():
            logger.info("step %d %s: done (%s)", self.number, self.name, self.folder)
            return
        if self.finished is not None and self.finished() and self.record.is_file():
            refuse_changed(self, json.loads(self.record.read_text(encoding="utf-8"))["inputs"])
        logger.info("step %d %s: running (%s)", self.number, self.name, self.folder)
        self.run()
        write_text_atomic(self.record, json.dumps({"step": self.name, "inputs": self.inputs}, indent=1) + "\n")


def refuse_changed(step, recorded):
    """Stops a finished stage asked to train otherwise, naming what differs; a larger patience is the same stage."""
    then, now = recorded.get("settings", {}), dict(step.inputs.get("settings", {}))
    if isinstance(then.get("early_stop_patience"), int) and now.get("early_stop_patience", 0) > then["early_stop_patience"]:
        now["early_stop_patience"] = then["early_stop_patience"]  # finished under the larger patience too
    differ = {key: (then.get(key), now.get(key)) for key in sorted(set(then) | set(now)) if then.get(key) != now.get(key)}
    if differ:
        listed = "; ".join(f"{key}: {a!r} then, {b!r} now" for key, (a, b) in list(differ.items())[:4])
        raise ConfigError(
            f"{step.inputs['stage']} in {step.folder} finished training with other settings ({listed}): "
            "it is kept as it was; to train with these settings, use another experiment folder "
            "(--experiment_name=NEW) or another --output_folder"
        )
    if recorded.get("train.csv") != step.inputs.get("train.csv"):
        check_trained_on(step.folder, step.inputs["stage"], step.speakers, step.inputs["train.csv"])
    for key in ("base", "anchors"):
        if recorded.get(key) != step.inputs.get(key):
            raise ProvenanceError(f"{step.inputs['stage']} in {step.folder} was trained from other {key} "
                                  f"({key} {str(recorded.get(key))[:12]}, now {str(step.inputs.get(key))[:12]}): "
                                  "move it away, or train into another experiment folder (--experiment_name=NEW)")


def is_finished(values):
    """Whether the stage's last end-of-epoch checkpoint reached ``number_of_epochs``, or early stopping ended
    it and would under this ``early_stop_patience`` too (a larger one continues it)."""
    ckpt = Checkpointer(values["save_folder"]).find_checkpoint(ckpt_predicate=end_of_epoch)
    if ckpt is None:
        return False
    if ckpt.meta.get("epoch", 0) >= values["number_of_epochs"]:
        return True
    counter = ckpt.paramfiles.get("counter")
    return bool(ckpt.meta.get("stopped_early")) and (counter is None or stops_under(counter, values["early_stop_patience"]))


def settings(values):
    """The values that decide what a stage learns: every key given a number, string or list of them
    (what the nodes built from them are follows), but :data:`NOT_SETTINGS`."""
    return {key: value for key, value in values.items() if key not in NOT_SETTINGS and not isinstance(value, dict)}


def recipe_script(hparams_file):
    """The recipe's ``train.py`` (beside the YAML's folder), loaded as a module."""
    script = pathlib.Path(hparams_file).resolve().parent.parent / "train.py"
    if not script.is_file():
        raise ConfigError(f"{hparams_file}: no train.py beside its folder ({script})")
    spec = importlib.util.spec_from_file_location("train", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_step(folder, key):
    """Holds ``<folder>/.step.lock`` (an exclusive ``flock``, waited for) on the main process: a step whose
    outputs several runs read is made by one of them; the others wait, then reuse it."""
    if not if_main_process():  # the other ranks are the same run
        return contextlib.nullcontext()
    check_writable(folder, key=key)
    return waiting_lock(pathlib.Path(folder) / ".step.lock")


def run(hparams_file, overrides, run_opts, script=None):
    """Runs the steps that lead to the stage ``hparams_file`` names; returns the verification table and figure
    (None, None without ``evaluate_after_training``)."""
    hparams_file = pathlib.Path(hparams_file)
    keys = keys_of(hparams_file)
    stage1_file = hparams_file.with_name("stage1.yaml") if "base_model" in keys else None  # a stage with a base
    own = {key: value for key, value in overrides.items() if key in keys}
    stage1_own = {key: value for key, value in overrides.items() if stage1_file and key in keys_of(stage1_file)}
    unknown = sorted(set(overrides) - set(own) - set(stage1_own))
    if unknown:
        raise ConfigError(f"{hparams_file}: unknown key(s) {unknown} in the overrides (keys of none of the steps)")
    values = plain_values(resolve(hparams_file, own))  # every key of every step checked before any work
    stage1 = plain_values(resolve(stage1_file, stage1_own)) if stage1_file else None
    script = script or recipe_script(hparams_file)

    logger.info("step 1 prepare: %s (reuses what it wrote when the data and its options are unchanged)",
                values["prep_folder"])
    with shared_step(values["prep_folder"], "prep_folder"):
        script.prepare(values)
    ids, speakers = script.training_rows(values)
    digest = rows_digest(ids, speakers)

    def train(number, yaml_file, stage, stage_overrides, inputs=None, base=None):
        folder = pathlib.Path(stage["output_folder"])
        Step(number, stage["stage"], folder,
             {"stage": stage["stage"], "settings": settings(stage), "train.csv": digest, **(inputs or {})},
             [folder / "hyperparams.yaml"], lambda: script.train(yaml_file, stage_overrides, run_opts, base=base),
             finished=lambda: is_finished(stage), speakers=speakers)()

    folder = pathlib.Path(values["output_folder"])
    systems, fingerprints = {}, {}
    if stage1_file is None:
        train(2, hparams_file, values, own)
    else:
        if pathlib.Path(values["base_model"]).resolve() == pathlib.Path(stage1["output_folder"]).resolve():
            train(2, stage1_file, stage1, stage1_own)
        base = load_base(values["base_model"], values["pretrained_folder"])
        anchors = pathlib.Path(values["anchors"])

        def extract():
            with shared_step(anchors.parent, "anchors"):  # a store another run made meanwhile is reused
                train_data, _, _ = script.dataio_prep(values, base.label_file if base.covers_exactly(speakers) else None)
                anchor_stores(values, base, train_data, ids, run_opts)

        stores = [anchors, anchors.parent / "dev_anchors.pt"]  # training rows, dev rows (stage_data.anchor_stores)
        if values.get("replay_rows", 0) > 0:
            stores.append(anchors.parent / "replay_anchors.pt")
        Step(3, "anchors", anchors.parent, {"base": base.fingerprint, "train.csv": digest}, stores, extract)()
        train(4, hparams_file, values, own, base=base,
              inputs={"base": base.fingerprint, "anchors": AnchorStore.from_file(anchors).digest()})
        systems[script.base_name(values)] = savedir_of(values["base_model"], values["pretrained_folder"])
        fingerprints["base"] = base.fingerprint
    if not values["evaluate_after_training"]:
        return None, None
    out = folder / "verification"
    systems[values["stage"]] = folder
    fingerprints[values["stage"]] = checkpoint_fingerprint(best_checkpoint(values["save_folder"]).path)
    Step(5, "verify", out, {**fingerprints, "evaluation": {key: values[key] for key in
                                                          ("eval_snrs", "eval_noise_types", "data_seed")}},
         [out / "table.md", out / "eer_vs_snr.png"],
         lambda: verification_report(values, systems, run_opts.get("device", "cpu")))()
    return (out / "table.md").read_text(encoding="utf-8"), out / "eer_vs_snr.png"


def main(argv=None, script=None):
    """``python -m anchor_reg.pipeline hparams/<stage>.yaml [--key=value ...]``: prints the table and the figure's path."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    table, figure = run(hparams_file, parse_overrides(overrides), run_opts, script)
    if table is not None:
        print(f"{table}\nEER vs SNR: {figure}")


def cli(argv=None):
    """``main`` with train.py's one ``error:`` line for an expected error."""
    argv = sys.argv[1:] if argv is None else argv
    script = recipe_script(argv[0] if argv and not argv[0].startswith("-") else "hparams/stage2.yaml")
    script.cli(argv, run=lambda args: main(args, script))


if __name__ == "__main__":
    cli()
