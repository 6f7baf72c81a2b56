#!/usr/bin/env python3
"""anchor-reg: stage-wise training with fixed anchors for noise-robust speaker verification.

One entry point for every stage (arXiv 2510.18530)::

    python train.py hparams/stage1.yaml   # base ECAPA-TDNN, AAM-softmax, clean speech
    python train.py hparams/stage2.yaml   # stage 1 if missing -> anchors if missing -> stage 2
    python train.py hparams/joint.yaml    # the conventional joint-optimisation baseline

Overrides work as in every SpeechBrain recipe (``--data_folder=... --seed=2``),
so does multi-GPU: ``torchrun --nproc_per_node=2 train.py hparams/stage2.yaml``.
An interrupted run resumes from its last checkpoint with the same command;
finished stages and existing anchors are reused, never redone.

Authors: the anchor-reg developers, following SpeechBrain's VoxCeleb recipe.
"""
import csv
import dataclasses
import logging
import pathlib
import sys
import traceback

import speechbrain as sb
import torch
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.distributed import if_main_process, run_on_main

from anchor_reg.anchors import AnchorStoreError, checkpoint_fingerprint, extract_anchors
from anchor_reg.brains import AnchorRegBrain, JointBrain, SpeakerBrain
from anchor_reg.checkpointer import CheckpointError
from anchor_reg.config import ConfigError, check_writable, load_hparams, overrides_for, parse_overrides
from anchor_reg.data.audio import AudioError, read_audio_checked
from anchor_reg.data.prepare import check_prepared, prepare_data
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
    sample_rate = hparams["sample_rate"]
    datasets = {
        name: sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(prep / f"{name}.csv"))
        for name in ("train", "dev")
    }

    skip_report = pathlib.Path(hparams["skip_report"])

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        try:
            return read_audio_checked(wav, sample_rate, int(start), int(stop))
        except AudioError as err:
            if not hparams["skip_bad_files"]:
                raise
            logger.warning("skipping bad audio: %s (listed in %s)", err, skip_report)
            skip_report.parent.mkdir(parents=True, exist_ok=True)
            with open(skip_report, "a", encoding="utf-8") as report:
                report.write(f"{err}\n")
            return None

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id", "spk_id_encoded")
    def label_pipeline(spk_id):
        yield spk_id
        yield label_encoder.encode_sequence_torch([spk_id])

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), label_pipeline)
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
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "spk_id", "spk_id_encoded"])
    return datasets["train"], datasets["dev"], label_encoder


def collate_skipping_bad_audio(examples):
    """PaddedBatch of the examples whose audio could be read (``sig`` not None)."""
    good = [ex for ex in examples if ex["sig"] is not None]
    if not good:
        raise AudioError("every file of a batch is bad: see skipped_audio.txt in the output folder")
    return sb.dataio.batch.PaddedBatch(good)


def read_column(csv_file, column):
    """One column of a CSV, as a list of strings."""
    with open(csv_file, newline="", encoding="utf-8") as f:
        return [row[column] for row in csv.DictReader(f)]


# ------------------------------------------------------------- stages ----
def finished_checkpoint(hparams):
    """The stage's last end-of-epoch checkpoint if training reached its last epoch, else None."""
    checkpointer = sb.utils.checkpoints.Checkpointer(hparams["save_folder"])
    ckpt = checkpointer.find_checkpoint(ckpt_predicate=lambda c: INTRA_EPOCH_CKPT_FLAG not in c.meta)
    if ckpt is not None and ckpt.meta.get("epoch", 0) >= hparams["number_of_epochs"]:
        return ckpt
    return None


def load_stage(hparams_file, overrides):
    """Prepares the data, then loads the YAML with the number of training speakers."""
    hparams = load_hparams(hparams_file, overrides)
    check_writable(hparams["output_folder"])
    check_writable(hparams["prep_folder"], key="prep_folder")
    run_on_main(prepare_data, kwargs={"hparams": hparams})
    check_prepared(hparams)
    speakers = set(read_column(pathlib.Path(hparams["prep_folder"]) / "train.csv", "spk_id"))
    overrides = dict(overrides, num_train_speakers=len(speakers))
    return load_hparams(hparams_file, overrides), overrides


def train_stage(hparams_file, overrides, run_opts):
    """Trains the stage a YAML names (resuming if checkpoints exist); returns its hparams."""
    hparams, overrides = load_stage(hparams_file, overrides)
    stage = hparams["stage"]
    if stage not in BRAINS:
        raise ConfigError(f"{hparams_file}: key 'stage' must be one of {sorted(BRAINS)}, got '{stage}'")
    base = ensure_base_and_anchors(hparams, overrides, run_opts) if stage == "stage2" else None
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=str(hparams_file), overrides=overrides
    )
    train_data, valid_data, _ = dataio_prep(hparams, label_encoder_source=base["label_encoder"] if base else None)
    brain = BRAINS[stage](
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    if base is not None:
        start_from_base(hparams, base)
        brain.checkpoint_meta = {"base_fingerprint": base["fingerprint"], "anchors_digest": base["anchors_digest"]}
    if finished_checkpoint(hparams) is not None:
        logger.info("%s: reusing the finished training in %s", stage, hparams["output_folder"])
    else:
        logger.info("%s: training in %s", stage, hparams["output_folder"])
    loader_options = dict(hparams["dataloader_options"])
    if hparams["skip_bad_files"]:
        loader_options["collate_fn"] = collate_skipping_bad_audio
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=loader_options,
        valid_loader_kwargs=dict(loader_options, shuffle=False, drop_last=False),
    )
    return hparams


def ensure_base_and_anchors(hparams, overrides, run_opts):
    """Stage 2's prerequisites: a finished stage 1 and anchors extracted from it.

    Returns
    -------
    dict
        ``checkpoint`` (stage 1's final checkpoint), ``fingerprint``,
        ``label_encoder`` (stage 1's label file), ``anchors_file`` and
        ``anchors_digest`` (:meth:`AnchorStore.digest` of the loaded anchors).
    """
    stage1_file = hparams["stage1_hparams"]
    stage1_overrides = {
        key: value for key, value in overrides_for(stage1_file, overrides).items()
        if key not in hparams["not_passed_to_stage1"]
    }
    stage1_overrides.update(hparams["stage1_overrides"])
    stage1 = load_hparams(stage1_file, stage1_overrides)
    if pathlib.Path(stage1["output_folder"]).resolve() != pathlib.Path(hparams["stage1_folder"]).resolve():
        raise ConfigError(
            f"stage1_folder is {hparams['stage1_folder']} but {stage1_file} writes to "
            f"{stage1['output_folder']}: make them agree (same experiment_name and seed)"
        )
    ckpt = finished_checkpoint(stage1)
    if ckpt is None:
        logger.info("stage 1: no finished checkpoint in %s, training it first", stage1["output_folder"])
        stage1 = train_stage(stage1_file, stage1_overrides, run_opts)
        ckpt = finished_checkpoint(stage1)
    else:
        logger.info("stage 1: reusing %s (epoch %s)", ckpt.path, ckpt.meta.get("epoch"))
    base = {
        "checkpoint": ckpt,
        "fingerprint": checkpoint_fingerprint(ckpt.path),
        "label_encoder": str(pathlib.Path(stage1["save_folder"]) / "label_encoder.txt"),
        "anchors_file": pathlib.Path(hparams["anchors_folder"]) / "anchors.pt",
    }
    ensure_anchors(hparams, stage1, base, run_opts)
    base["anchors_digest"] = hparams["anchors"].digest()
    check_own_checkpoints(hparams, base)
    return base


def check_own_checkpoints(hparams, base):
    """Refuses to resume stage-2 checkpoints trained from another base model or with other anchors."""
    for ckpt in sb.utils.checkpoints.Checkpointer(hparams["save_folder"]).list_checkpoints():
        for key, name, now in (("base_fingerprint", "from another base model", base["fingerprint"]),
                               ("anchors_digest", "with other anchors", base["anchors_digest"])):
            made_with = ckpt.meta.get(key)
            if made_with not in (None, now):
                raise AnchorStoreError(
                    f"stage-2 checkpoints in {hparams['save_folder']} were trained {name} "
                    f"({key} {made_with[:12]}, now {now[:12]}): move them away, "
                    "or set another output_folder for this stage 2"
                )


def ensure_anchors(hparams, stage1, base, run_opts):
    """Loads a valid anchor store into ``hparams["anchors"]``, extracting it first if needed."""
    anchors_file = base["anchors_file"]
    row_ids = read_column(pathlib.Path(hparams["prep_folder"]) / "train.csv", "ID")
    if anchors_file.is_file() and not hparams["reextract_anchors"]:
        store = hparams["anchors"].load(anchors_file)
        store.check_compatible(
            base_fingerprint=base["fingerprint"], row_ids=None if hparams["skip_bad_files"] else row_ids,
            emb_dim=hparams["emb_dim"], source=str(anchors_file),
        )
        logger.info("anchors: reusing %s (%d rows, %d speakers)", anchors_file, len(store), len(store.speakers))
        return
    logger.info("anchors: extracting with the frozen base model %s", base["checkpoint"].path)
    base_brain = SpeakerBrain(modules=stage1["modules"], hparams=stage1, run_opts=run_opts)
    reader = sb.utils.checkpoints.Checkpointer(
        stage1["save_folder"],
        recoverables={k: stage1["modules"][k] for k in ("embedding_model", "classifier")}
        | {"normalizer": stage1["mean_var_norm"]},
    )
    reader.load_checkpoint(base["checkpoint"])
    base_brain.modules.eval()
    train_data, _, _ = dataio_prep(dict(stage1, skip_report=hparams["anchors_skip_report"]),
                                   label_encoder_source=base["label_encoder"])
    sampler = None
    if base_brain.distributed_launch:
        sampler = torch.utils.data.distributed.DistributedSampler(train_data, shuffle=False)
    loader = sb.dataio.dataloader.make_dataloader(
        train_data, batch_size=hparams["anchor_batch_size"], shuffle=False, sampler=sampler,
        num_workers=hparams["num_workers"],
        **({"collate_fn": collate_skipping_bad_audio} if hparams["skip_bad_files"] else {}),
    )

    def embed(wavs, lens):
        return base_brain.compute_embeddings(wavs.to(base_brain.device), lens.to(base_brain.device))

    store = extract_anchors(
        embed,
        loader,
        provenance={
            "base_fingerprint": base["fingerprint"],
            "base_checkpoint": str(base["checkpoint"].path),
            "train_csv": str(pathlib.Path(hparams["prep_folder"]) / "train.csv"),
            "batch_size": hparams["anchor_batch_size"],
            "normalised": True,
        },
        progressbar=not getattr(base_brain, "noprogressbar", False),
    )
    store.check_compatible(row_ids=None if hparams["skip_bad_files"] else row_ids, emb_dim=hparams["emb_dim"])
    if if_main_process():
        anchors_file.parent.mkdir(parents=True, exist_ok=True)
        store.save(anchors_file)
        logger.info("anchors: wrote %s (%d rows, %d speakers)", anchors_file, len(store), len(store.speakers))
    sb.utils.distributed.ddp_barrier()
    hparams["anchors"].load(anchors_file)  # every rank reads the same store


def start_from_base(hparams, base):
    """Stage 2 starts from a copy of the base model.

    On a fresh start the base weights are copied in (the stage-1 files are only
    read); on a resume, ``fit`` restores the stage-2 checkpoint, which
    :func:`check_own_checkpoints` has matched to this base and these anchors.
    """
    own = hparams["checkpointer"].find_checkpoint()
    if own is not None:
        logger.info("stage 2: resuming from %s", own.path)
        return
    reader = sb.utils.checkpoints.Checkpointer(
        pathlib.Path(base["checkpoint"].path).parent,
        recoverables={
            "embedding_model": hparams["embedding_model"],
            "classifier": hparams["classifier"],
            "normalizer": hparams["mean_var_norm"],
        },
    )
    reader.load_checkpoint(base["checkpoint"])
    logger.info("stage 2: starting from a copy of %s", base["checkpoint"].path)


# ---------------------------------------------------------------- main ----
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
    hparams = train_stage(hparams_file, overrides, run_opts)
    if hparams["evaluate_after_training"] and if_main_process():
        systems = {"base (stage 1)": hparams.get("stage1_folder"), hparams["stage"]: hparams["output_folder"]}
        systems = {name: folder for name, folder in systems.items() if folder}
        if hparams["stage"] == "stage1":
            systems = {"base (stage 1)": hparams["output_folder"]}
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
