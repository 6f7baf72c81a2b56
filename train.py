#!/usr/bin/env python3
"""anchor-reg: stage-wise training with fixed anchors for noise-robust speaker verification.

One entry point for every stage (arXiv 2510.18530)::

    python train.py hparams/stage1.yaml   # base ECAPA-TDNN, AAM-softmax, multi-condition
    python train.py hparams/stage2.yaml   # stage 1 if missing -> anchors if missing -> stage 2
    python train.py hparams/stage2.yaml --base_model=speechbrain/spkrec-ecapa-voxceleb  # any SpeechBrain base
    python train.py hparams/joint.yaml    # the conventional joint-optimisation baseline

Stage 2 reads top to bottom (:func:`train_stage2`): base model (``load_base``)
-> anchors (``load_or_extract``) -> a copy of the base fine-tuned towards them.

Overrides work as in every SpeechBrain recipe (``--data_folder=... --seed=2``),
so does multi-GPU: ``torchrun --nproc_per_node=2 train.py hparams/stage2.yaml``.
An interrupted run resumes from its last checkpoint with the same command;
finished stages and existing anchors are reused, never redone, and a finished
stage asked to train with other settings says so and stops.

Authors: the anchor-reg developers, following SpeechBrain's VoxCeleb recipe.
"""
import csv
import dataclasses
import datetime
import functools
import logging
import pathlib
import sys
import traceback

import speechbrain as sb
import torch
from hyperpyyaml import resolve_references
from speechbrain.utils.distributed import if_main_process, run_on_main

from anchor_reg.anchors import AnchorStoreError, load_or_extract
from anchor_reg.atomic import write_text_atomic
from anchor_reg.base import architecture_overrides, base_folder, check_trained_on, load_base, start_from_base
from anchor_reg.brains import AnchorRegBrain, JointBrain, SpeakerBrain
from anchor_reg.checkpointer import CheckpointError, end_of_epoch
from anchor_reg.config import (
    ConfigError, check_writable, load_hparams, overrides_for, parse_overrides, yaml_stream,
)
from anchor_reg.data.audio import AudioError, read_audio_checked
from anchor_reg.data.batching import collate_rows
from anchor_reg.data.dev_copies import NoisyDevCopies
from anchor_reg.data.prepare import check_prepared, prepare_data
from anchor_reg.epoch_counter import stops_under
from anchor_reg.provenance import load_record, record_differences, rows_digest
from anchor_reg.replay import ReplaySet
from anchor_reg.report import verification_report

logger = logging.getLogger(__name__)

BRAINS = {"stage1": SpeakerBrain, "stage2": AnchorRegBrain, "joint": JointBrain}


# ----------------------------------------------------------------- data ----
def dataio_prep(hparams, label_encoder_source=None):
    """Train/valid datasets and the speaker label encoder.

    Arguments
    ---------
    hparams : dict
        Needs ``prep_folder``, ``save_folder``, ``sample_rate``.
    label_encoder_source : str
        Copy this label encoder (stage 2 keeps stage 1's class order); None
        builds one from the training CSV.
    """
    prep = pathlib.Path(hparams["prep_folder"])
    datasets = {
        name: sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(prep / f"{name}.csv"))
        for name in ("train", "dev")
    }

    audio_pipeline = audio_item(hparams)
    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id", "spk_id_encoded")
    def label_pipeline(spk_id):
        yield spk_id
        yield label_encoder.encode_sequence_torch([spk_id])

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), label_pipeline)
    dev_keys = []
    if hparams.get("dev_noisy_copies"):
        noisy_copy = NoisyDevCopies(
            prep, hparams["snr_low"], hparams["snr_high"], hparams.get("reverb", True), hparams["data_seed"]
        )

        @sb.utils.data_pipeline.takes("id", "sig")
        @sb.utils.data_pipeline.provides("sig_noisy")
        def noisy_pipeline(row_id, sig):
            return None if sig is None else noisy_copy(sig, row_id)

        sb.dataio.dataset.add_dynamic_item([datasets["dev"]], noisy_pipeline)
        dev_keys = ["sig_noisy"]
    encoder_file = pathlib.Path(hparams["save_folder"]) / "label_encoder.txt"
    if label_encoder_source is not None:
        label_encoder.load(label_encoder_source)
        if if_main_process():
            encoder_file.parent.mkdir(parents=True, exist_ok=True)
            label_encoder.save(encoder_file)
    else:
        label_encoder.load_or_create(
            path=str(encoder_file), from_didatasets=[datasets["train"]], output_key="spk_id"
        )
    label_encoder.expect_len(hparams["num_train_speakers"])
    keys = ["id", "sig", "spk_id"]
    if hparams.get("supervision", "labelled") == "labelled":  # label-free dev rows are files the encoder never saw
        keys.append("spk_id_encoded")
    sb.dataio.dataset.set_output_keys([datasets["train"]], keys)
    sb.dataio.dataset.set_output_keys([datasets["dev"]], keys + dev_keys)
    return datasets["train"], datasets["dev"], label_encoder


def audio_item(hparams):
    """The dynamic item ``sig`` of a prepared row (``wav``, ``start``, ``stop``); None for bad audio
    skipped under ``skip_bad_files`` (listed in ``skip_report``)."""
    skip_report = pathlib.Path(hparams["skip_report"])

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        try:
            return read_audio_checked(wav, hparams["sample_rate"], int(start), int(stop))
        except AudioError as err:
            if not hparams["skip_bad_files"]:
                raise
            logger.warning("skipping bad audio: %s (listed in %s)", err, skip_report)
            skip_report.parent.mkdir(parents=True, exist_ok=True)
            with open(skip_report, "a", encoding="utf-8") as report:
                report.write(f"{err}\n")
            return None

    return audio_pipeline


def read_column(csv_file, column):
    """One column of a CSV, as a list of strings."""
    with open(csv_file, newline="", encoding="utf-8") as f:
        return [row[column] for row in csv.DictReader(f)]


# ------------------------------------------------------------- stages ----
def finished_checkpoint(hparams):
    """The stage's last end-of-epoch checkpoint if training finished, else None.

    Finished: the checkpoint's epoch reached ``number_of_epochs``, or early
    stopping ended the training (meta ``stopped_early``) and would end it
    under this run's ``early_stop_patience`` too (a larger patience continues it).
    """
    checkpointer = sb.utils.checkpoints.Checkpointer(hparams["save_folder"])
    ckpt = checkpointer.find_checkpoint(ckpt_predicate=end_of_epoch)
    if ckpt is None:
        return None
    if ckpt.meta.get("epoch", 0) >= hparams["number_of_epochs"]:
        return ckpt
    if ckpt.meta.get("stopped_early"):
        counter = ckpt.paramfiles.get(recoverable_name(hparams["checkpointer"], hparams["epoch_counter"]))
        if counter is None or stops_under(counter, hparams["early_stop_patience"]):  # None: not checkpointed
            return ckpt
    return None


def recoverable_name(checkpointer, obj):
    """The name under which ``checkpointer`` saves ``obj`` (None if it does not save it)."""
    return next((name for name, recoverable in checkpointer.recoverables.items() if recoverable is obj), None)


def load_stage(hparams_file, overrides, model_file=None):
    """Loads the YAML with the number of training speakers (the data must be prepared)."""
    hparams = load_hparams(hparams_file, overrides, model_file)
    speakers = set(read_column(pathlib.Path(hparams["prep_folder"]) / "train.csv", "spk_id"))
    overrides = dict(overrides, num_train_speakers=len(speakers))
    return load_hparams(hparams_file, overrides, model_file), overrides


def check_startup(hparams):
    """Checks what later steps need before any training starts (the evaluation noise lists).

    Key values (``stage``, ``anchor_type`` ...) were checked when the YAML loaded (:mod:`anchor_reg.checks`).
    """
    if hparams["evaluate_after_training"]:
        prep = pathlib.Path(hparams["prep_folder"])
        prepared = sorted(p.stem[len("eval_"):] for p in prep.glob("eval_*.csv") if p.stem != "eval_rir")
        for kind in hparams["eval_noise_types"]:
            if not (prep / f"eval_{kind}.csv").is_file():
                raise ConfigError(
                    f"eval_noise_types: no prepared noise list for '{kind}' ({prep / f'eval_{kind}.csv'}); "
                    f"prepared: {', '.join(prepared)}"
                )


def training_rows(hparams):
    """(row IDs, speakers, rows digest) of the prepared training CSV."""
    train_csv = pathlib.Path(hparams["prep_folder"]) / "train.csv"
    ids, speakers = read_column(train_csv, "ID"), read_column(train_csv, "spk_id")
    return ids, speakers, rows_digest(ids, speakers)


def is_location(value):
    """True for a path (a string holding '/') or a non-empty list of paths."""
    if isinstance(value, list):
        return bool(value) and all(is_location(item) for item in value)
    return isinstance(value, str) and "/" in value


BOOKKEEPING_KEYS = ("rerun_may_change", "not_passed_to_stage1")  # lists of key names, not training settings


def reuse_if_finished(hparams_file, hparams, overrides, model_file=None):
    """True if the stage finished training with these settings; refuses a finished stage trained otherwise.

    A finished stage's ``hyperparams.yaml`` is the record of what it was
    trained with: it is never rewritten, and a rerun whose training keys
    differ (those not in ``rerun_may_change``) stops here, naming them.
    """
    ckpt = finished_checkpoint(hparams)
    if ckpt is None:
        return False
    folder = pathlib.Path(hparams["output_folder"])
    recorded = load_record((folder / "hyperparams.yaml").read_text(encoding="utf-8"))
    # num_train_speakers follows the data, whose changes the training-rows digest names (load_base)
    # (the lists of keys are bookkeeping: a record made before a key joined them lists it or lacks them)
    ignored = [*hparams["rerun_may_change"], *BOOKKEEPING_KEYS, "num_train_speakers"]
    kept = {key: recorded[key] for key in ignored if key in recorded}
    resolved = load_record(resolve_references(yaml_stream(hparams_file, model_file), dict(overrides, **kept)))
    # locations (folders, files) are not training settings: a moved experiment is still the same stage,
    # and a record older than a location key lacks it; what the data folders hold is checked by the
    # training-rows digest
    differ = {key: (then, now) for key, (then, now) in record_differences(recorded, resolved, ignored).items()
              if not (is_location(now) and (is_location(then) or key not in recorded))}
    # a larger patience trains the same epochs up to where the smaller one stopped, and finished_checkpoint
    # has found that it stops there too (or the stage ran to its epoch limit)
    then, now = differ.get("early_stop_patience", (None, None))
    if isinstance(then, int) and isinstance(now, int) and now > then:
        del differ["early_stop_patience"]
    if differ:
        listed = "; ".join(f"{key}: {then!r} then, {now!r} now" for key, (then, now) in list(differ.items())[:4])
        raise ConfigError(
            f"{hparams['stage']} in {folder} finished training with other settings ({listed}): "
            "it is kept as it was; to train with these settings, use another experiment folder "
            "(--experiment_name=NEW) or another --output_folder"
        )
    logger.info("%s: reusing the finished training in %s (epoch %s)", hparams["stage"], folder, ckpt.meta.get("epoch"))
    return True


def write_record(hparams_file, hparams, overrides, model_file=None):
    """Writes ``<output_folder>/hyperparams.yaml`` (the resolved YAML) and starts the log, as SpeechBrain does."""
    folder = pathlib.Path(hparams["output_folder"])
    if if_main_process():
        resolved = resolve_references(yaml_stream(hparams_file, model_file), overrides).getvalue()
        header = f"# Generated {datetime.date.today()} from:\n# {pathlib.Path(hparams_file).resolve()}\n# yamllint disable\n"
        write_text_atomic(folder / "hyperparams.yaml", header + resolved)
    sb.create_experiment_directory(experiment_directory=str(folder), overrides=overrides)


def expect_provenance(hparams, **provenance):
    """Says what this run trains from; refuses now, before anything is written, checkpoints made otherwise.

    The stage's ``provenance`` recoverable refuses them again when ``fit`` recovers.
    """
    hparams["provenance"].expect(folder=hparams["save_folder"], **provenance)
    latest = hparams["checkpointer"].find_checkpoint()
    if latest is not None and "provenance" in latest.paramfiles:
        hparams["provenance"].load(latest.paramfiles["provenance"])


def fit(hparams, data, run_opts, brain_options=None):
    """Trains the stage, resuming from its checkpoints."""
    train_data, valid_data, _ = data
    brain = BRAINS[hparams["stage"]](
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        **(brain_options or {}),
    )
    logger.info("%s: training in %s", hparams["stage"], hparams["output_folder"])
    loader_options = dict(hparams["dataloader_options"])
    loader_options["collate_fn"] = functools.partial(collate_rows, skip_bad=hparams["skip_bad_files"])
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=loader_options,
        valid_loader_kwargs=dict(loader_options, shuffle=False, drop_last=False),
    )


def train_stage(hparams_file, hparams, overrides, run_opts):
    """Stage 1 or the joint baseline: reused when finished (on this data, with these settings), else trained."""
    _, speakers, digest = training_rows(hparams)
    if finished_checkpoint(hparams) is not None:
        check_trained_on(hparams, speakers, digest)
    if reuse_if_finished(hparams_file, hparams, overrides):
        return
    expect_provenance(hparams, train_rows_digest=digest)
    write_record(hparams_file, hparams, overrides)
    fit(hparams, dataio_prep(hparams), run_opts)


def stage1_of(hparams, overrides):
    """Stage 1's YAML, overrides and hparams, as stage 2 asks for them."""
    stage1_file = hparams["stage1_hparams"]
    stage1_overrides = {
        key: value for key, value in overrides_for(stage1_file, overrides).items()
        if key not in hparams["not_passed_to_stage1"]
    }
    stage1_overrides.update(hparams["stage1_overrides"])
    stage1, stage1_overrides = load_stage(stage1_file, stage1_overrides)
    if pathlib.Path(stage1["output_folder"]).resolve() != pathlib.Path(hparams["stage1_folder"]).resolve():
        raise ConfigError(
            f"stage1_folder is {hparams['stage1_folder']} but {stage1_file} writes to "
            f"{stage1['output_folder']}: make them agree (same experiment_name and seed)"
        )
    return stage1_file, stage1, stage1_overrides


def train_stage2(hparams_file, hparams, overrides, run_opts):
    """Base model -> anchors -> stage 2, in that order."""
    ids, speakers, digest = training_rows(hparams)
    stage1 = None
    if hparams["base_model"] is None:
        stage1_file, stage1, stage1_overrides = stage1_of(hparams, overrides)
        train_stage(stage1_file, stage1, stage1_overrides, run_opts)
    base = load_base(hparams, stage1, train_speakers=speakers, train_rows_digest=digest)

    overrides = architecture_overrides(base, overrides)
    hparams, overrides = load_stage(hparams_file, overrides, base.model_file)
    reuse_labels = base.covers_exactly(speakers)
    data = dataio_prep(hparams, label_encoder_source=base.label_file if reuse_labels else None)
    store = load_or_extract(
        base, data[0], pathlib.Path(hparams["anchors_folder"]) / "anchors.pt",
        row_ids=None if hparams["skip_bad_files"] else ids, batch_size=hparams["anchor_batch_size"],
        num_workers=hparams["num_workers"], collate_fn=functools.partial(collate_rows, skip_bad=hparams["skip_bad_files"]),
        reextract=hparams["reextract_anchors"], device=run_opts.get("device", "cpu"),
        progressbar=not run_opts.get("noprogressbar", False),
        extra_provenance={"train_csv": str(pathlib.Path(hparams["prep_folder"]) / "train.csv")},
    )
    adaptation, adaptation_provenance = adaptation_inputs(hparams, base, run_opts)
    expect_provenance(hparams, base_fingerprint=base.fingerprint, anchors_digest=store.digest(),
                      train_rows_digest=digest, **adaptation_provenance)  # another base or other anchors: refused
    if reuse_if_finished(hparams_file, hparams, overrides, base.model_file):
        return hparams
    write_record(hparams_file, hparams, overrides, base.model_file)
    own = hparams["checkpointer"].find_checkpoint()
    if own is not None:
        logger.info("stage 2: resuming from %s", own.path)
    else:
        head = start_from_base(hparams, base, store, data[2])
        logger.info("stage 2: starting from a copy of %s; classifier: %s", base.source,
                    "the base's own (same speakers)" if head == "reused"
                    else "a new head whose rows are the anchors' speaker centroids")
    fit(hparams, data, run_opts, brain_options={"anchors": store, **adaptation})
    return hparams


# --------------------------------------------------- adaptation inputs ----
def rows_dataset(hparams, csv_file):
    """``id``, ``sig``, ``spk_id`` of a prepared CSV's rows (dev anchors, replay rows)."""
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(csv_file))
    sb.dataio.dataset.add_dynamic_item([dataset], audio_item(hparams))
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig", "spk_id"])
    return dataset


def adaptation_inputs(hparams, base, run_opts):
    """Stage 2's inputs beyond the training anchors: (AnchorRegBrain options, provenance to expect).

    ``dev_criterion: anchor_retrieval``: the dev rows' anchors (``dev_anchors.pt``); replay
    (``replay_rows`` > 0): the replay rows and their anchors (``replay_anchors.pt``), both extracted once by
    the same frozen base as the training anchors; ``l2sp_weight`` > 0: the base's embedding model.
    """
    options, provenance = {}, {}
    prep, anchors_folder = pathlib.Path(hparams["prep_folder"]), pathlib.Path(hparams["anchors_folder"])
    skip_bad = hparams["skip_bad_files"]

    def anchors_of(csv_file, anchors_file):
        return load_or_extract(
            base, rows_dataset(hparams, csv_file), anchors_file,
            row_ids=None if skip_bad else read_column(csv_file, "ID"), batch_size=hparams["anchor_batch_size"],
            num_workers=hparams["num_workers"], collate_fn=functools.partial(collate_rows, skip_bad=skip_bad),
            reextract=hparams["reextract_anchors"], device=run_opts.get("device", "cpu"),
            progressbar=not run_opts.get("noprogressbar", False), extra_provenance={"rows_csv": str(csv_file)},
        )

    if hparams.get("dev_criterion") == "anchor_retrieval":
        options["dev_anchors"] = anchors_of(prep / "dev.csv", anchors_folder / "dev_anchors.pt")
        provenance["dev_anchors_digest"] = options["dev_anchors"].digest()
    if hparams.get("replay_rows", 0) > 0:
        store = anchors_of(prep / "replay.csv", anchors_folder / "replay_anchors.pt")
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        options["replay"] = ReplaySet(rows_dataset(hparams, prep / "replay.csv"), store, hparams["replay_rows"],
                                      hparams["seed"], rank)
        provenance["replay_anchors_digest"] = store.digest()
    if hparams.get("l2sp_weight", 0) > 0:
        options["base_embedding"] = base.modules["embedding_model"]
    return options, provenance


# ---------------------------------------------------------------- main ----
def prepare(hparams_file, overrides):
    """Prepares the data and checks it; returns the stage's hparams and overrides (with the speaker count)."""
    hparams = load_hparams(hparams_file, overrides)
    check_writable(hparams["output_folder"])
    check_writable(hparams["prep_folder"], key="prep_folder")
    run_on_main(prepare_data, kwargs={"hparams": hparams})
    hparams, overrides = load_stage(hparams_file, overrides)
    check_prepared(hparams)
    return hparams, overrides


def run(hparams_file, overrides, run_opts):
    """Prepares the data, checks what later steps need, trains the stage; returns its hparams."""
    hparams, overrides = prepare(hparams_file, overrides)
    check_startup(hparams)
    if hparams["stage"] == "stage2":
        return train_stage2(hparams_file, hparams, overrides, run_opts)
    train_stage(hparams_file, hparams, overrides, run_opts)
    return hparams


def main(argv=None):
    """Runs the stage the YAML names, then prints the verification table."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:  # until create_experiment_directory sets up SpeechBrain's logging
        logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    overrides = parse_overrides(overrides)
    if not str(run_opts.get("device", "cpu")).startswith("cuda") and run_opts.get("precision", "fp32") != "fp32":
        logger.warning("--precision=%s has no effect on CPU: training in fp32", run_opts["precision"])
        run_opts = dataclasses.replace(run_opts, precision="fp32")
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams = run(hparams_file, overrides, run_opts)
    if hparams["evaluate_after_training"] and if_main_process():
        systems = {hparams["stage"]: hparams["output_folder"]}
        if hparams["stage"] == "stage1":
            systems = {"base (stage 1)": hparams["output_folder"]}
        elif hparams["stage"] == "stage2":
            base_name = "base (stage 1)" if hparams["base_model"] is None else f"base ({hparams['base_model']})"
            systems = {base_name: base_folder(hparams), **systems}
        print(verification_report(hparams, systems, run_opts.get("device", "cpu")))


EXPECTED_ERRORS = (ConfigError, AnchorStoreError, AudioError, CheckpointError, FileNotFoundError, FileExistsError)


def error_message(err):
    """One clear line for an expected error (DataLoader workers wrap theirs in a traceback)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].split(":", 1)[0].split(".")[-1] == type(err).__name__:
        return lines[-1].split(":", 1)[1].strip()
    return str(err).strip()


def cli(argv=None):
    """``main`` for the command line: an expected error exits with status 1 and one ``error:`` line."""
    try:
        main(argv)
    except EXPECTED_ERRORS as err:
        logger.debug("".join(traceback.format_exception(err)))
        sys.exit(f"error: {error_message(err)}\n(checkpoints and results already written are kept; "
                 "fix the problem and run the same command to resume)")


if __name__ == "__main__":
    cli()
