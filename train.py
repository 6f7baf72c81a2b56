#!/usr/bin/env python3
"""anchor-reg: trains ONE stage of noise-robust speaker verification with fixed anchors (arXiv 2510.18530).

    python train.py hparams/stage1.yaml   # the base: ECAPA-TDNN, AAM-softmax, multi-condition
    python train.py hparams/stage2.yaml   # a copy of base_model fine-tuned towards its fixed anchors
    python train.py hparams/stage2.yaml --base_model=speechbrain/spkrec-ecapa-voxceleb
    python train.py hparams/joint.yaml    # the conventional joint-optimisation baseline

Shaped like SpeechBrain's VoxCeleb recipe: prepare the data -> dataio_prep -> Brain -> fit
(-> the verification table). Stage 2 reads its base model and anchors by path (``base_model``,
``anchors``) and extracts ``anchors.pt`` with the frozen base when the file is absent. The whole
chain (stage 1 -> anchors -> stage 2 -> verification) is ``python -m anchor_reg.pipeline``.

Overrides work as in every SpeechBrain recipe (``--data_folder=... --seed=2``), so does
multi-GPU: ``torchrun --nproc_per_node=2 train.py hparams/stage2.yaml``. An interrupted run
resumes from its last checkpoint with the same command.
"""
import dataclasses
import functools
import logging
import pathlib
import sys
import traceback

import speechbrain as sb
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.utils.distributed import if_main_process, run_on_main

from anchor_reg.atomic import write_text_atomic
from anchor_reg.base import architecture_overrides, load_base, start_from_base
from anchor_reg.brains import AnchorRegBrain, JointBrain, SpeakerBrain
from anchor_reg.config import build, check_writable, dump, parse_overrides, plain_values, resolve
from anchor_reg.data.batching import collate_rows
from anchor_reg.data.dev_copies import NoisyDevCopies
from anchor_reg.data.prepare import check_prepared, prepare_data
from anchor_reg.errors import AnchorStoreError, AudioError, CheckpointError, ConfigError, ProvenanceError
from anchor_reg.lock import stage_lock
from anchor_reg.model_folder import savedir_of
from anchor_reg.provenance import rows_digest
from anchor_reg.report import verification_report
from anchor_reg.stage_data import anchor_stores, read_column, rows_dataset

logger = logging.getLogger(__name__)

BRAINS = {"stage1": SpeakerBrain, "stage2": AnchorRegBrain, "joint": JointBrain}


def dataio_prep(hparams, label_encoder_source=None):
    """Train/dev datasets and the speaker label encoder (``label_encoder_source``: copy this one, e.g. the base's)."""
    prep = pathlib.Path(hparams["prep_folder"])
    datasets = {name: rows_dataset(hparams, prep / f"{name}.csv") for name in ("train", "dev")}
    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id", "spk_id_encoded")
    def label_pipeline(spk_id):
        yield spk_id
        yield label_encoder.encode_sequence_torch([spk_id])

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), label_pipeline)
    dev_keys = []
    if hparams["dev_noisy_copies"]:
        noisy_copy = NoisyDevCopies.of_stage(hparams)

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
        label_encoder.load_or_create(path=str(encoder_file), from_didatasets=[datasets["train"]], output_key="spk_id")
    label_encoder.ignore_len()  # the classifier is sized from it (size_classifier), not the other way round
    keys = ["id", "sig", "spk_id"]
    if hparams.get("supervision", "labelled") == "labelled":  # label-free dev rows are files the encoder never saw
        keys.append("spk_id_encoded")
    sb.dataio.dataset.set_output_keys([datasets["train"]], keys)
    sb.dataio.dataset.set_output_keys([datasets["dev"]], keys + dev_keys)
    return datasets["train"], datasets["dev"], label_encoder


def size_classifier(hparams, num_speakers):
    """One classifier output per training speaker: the YAML is built before the data is read."""
    old = hparams["classifier"]
    if old.weight.shape[0] == num_speakers:
        return
    new = Classifier(input_size=old.weight.shape[1], out_neurons=num_speakers)
    hparams["classifier"] = hparams["modules"]["classifier"] = new
    recoverables = hparams["checkpointer"].recoverables
    for name in [name for name, obj in recoverables.items() if obj is old]:
        recoverables[name] = new


def training_rows(hparams):
    """(row IDs, speakers) of the prepared training CSV."""
    train_csv = pathlib.Path(hparams["prep_folder"]) / "train.csv"
    return read_column(train_csv, "ID"), read_column(train_csv, "spk_id")


def prepare(values):
    """Prepares the data (once, on the main process) and checks it and the evaluation noise lists."""
    check_writable(values["output_folder"])
    check_writable(values["prep_folder"], key="prep_folder")
    run_on_main(prepare_data, kwargs={"hparams": values})
    check_prepared(values)
    prep = pathlib.Path(values["prep_folder"])
    for kind in values["eval_noise_types"] if values["evaluate_after_training"] else ():
        if not (prep / f"eval_{kind}.csv").is_file():
            prepared = sorted(p.stem[len("eval_"):] for p in prep.glob("eval_*.csv") if p.stem != "eval_rir")
            raise ConfigError(f"eval_noise_types: no prepared noise list for '{kind}' "
                              f"({prep / f'eval_{kind}.csv'}); prepared: {', '.join(prepared)}")


def train(hparams_file, overrides, run_opts, base=None):
    """Trains the stage ``hparams_file`` names, resuming from its checkpoints; returns its hparams.

    ``base``: stage 2's base model when the caller has loaded it already (:func:`anchor_reg.base.load_base`).
    """
    resolved = resolve(hparams_file, overrides)  # every key checked before any work
    values = plain_values(resolved)
    prepare(values)
    if values["stage"] == "stage2":  # the base decides the architecture
        base = base or load_base(values["base_model"], values["pretrained_folder"])
        overrides = architecture_overrides(base, hparams_file, overrides)
        resolved = resolve(hparams_file, overrides)
    hparams = build(resolved, hparams_file)
    with stage_lock(hparams["output_folder"]):  # one run per stage folder
        return train_locked(hparams_file, hparams, overrides, run_opts, base)


def train_locked(hparams_file, hparams, overrides, run_opts, base):
    """:func:`train` once the stage folder is this process's."""
    ids, speakers = training_rows(hparams)
    reuse_labels = base is not None and base.covers_exactly(speakers)
    train_data, valid_data, labels = dataio_prep(hparams, base.label_file if reuse_labels else None)
    size_classifier(hparams, len(labels))
    provenance, brain_options = {"train_rows_digest": rows_digest(ids, speakers)}, {}
    if base is not None:
        store, brain_options, stores_provenance = anchor_stores(hparams, base, train_data, ids, run_opts)
        provenance.update(stores_provenance)
    # a stage made from another base, other anchors or other data is refused: now, and when fit recovers
    hparams["provenance"].expect(folder=hparams["save_folder"], **provenance)
    latest = hparams["checkpointer"].find_checkpoint()
    if latest is not None and "provenance" in latest.paramfiles:
        hparams["provenance"].load(latest.paramfiles["provenance"])
    folder = pathlib.Path(hparams["output_folder"])
    if if_main_process():  # the record of what the stage trains with, as SpeechBrain writes it
        resolved = resolve(hparams_file, dict(overrides, num_train_speakers=len(labels)))
        write_text_atomic(folder / "hyperparams.yaml", f"# from {pathlib.Path(hparams_file).resolve()}\n"
                          + dump(resolved))
    sb.create_experiment_directory(experiment_directory=str(folder))
    if base is not None and latest is None:
        head = start_from_base(hparams, base, store, labels)
        logger.info("stage 2: starting from a copy of %s; classifier: %s", base.source,
                    "the base's own (same speakers)" if head == "reused"
                    else "a new head whose rows are the anchors' speaker centroids")
    elif latest is not None:
        logger.info("%s: resuming from %s", hparams["stage"], latest.path)
    brain = BRAINS[hparams["stage"]](modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                                     run_opts=run_opts, checkpointer=hparams["checkpointer"], **brain_options)
    loader_options = dict(hparams["dataloader_options"], collate_fn=functools.partial(
        collate_rows, skip_bad=hparams["skip_bad_files"]))
    brain.fit(brain.hparams.epoch_counter, train_data, valid_data, train_loader_kwargs=loader_options,
              valid_loader_kwargs=dict(loader_options, shuffle=False, drop_last=False))
    return hparams


def main(argv=None):
    """Trains the stage the YAML names, then prints the verification table (``evaluate_after_training``)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:  # until create_experiment_directory sets up SpeechBrain's logging
        logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    if not str(run_opts.get("device", "cpu")).startswith("cuda") and run_opts.get("precision", "fp32") != "fp32":
        logger.warning("--precision=%s has no effect on CPU: training in fp32", run_opts["precision"])
        run_opts = dataclasses.replace(run_opts, precision="fp32")
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams = train(hparams_file, parse_overrides(overrides), run_opts)
    if hparams["evaluate_after_training"] and if_main_process():
        systems = {hparams["stage"]: hparams["output_folder"]}
        if hparams["stage"] == "stage2":
            systems = {base_name(hparams): savedir_of(hparams["base_model"], hparams["pretrained_folder"]), **systems}
        table, figure = verification_report(hparams, systems, run_opts.get("device", "cpu"))
        print(f"{table}\nEER vs SNR: {figure}")


def base_name(hparams):
    """``base (stage 1)`` for the experiment's own stage 1, else ``base (<base_model>)``."""
    own = pathlib.Path(hparams["output_root"]) / "stage1" == pathlib.Path(hparams["base_model"])
    return "base (stage 1)" if own else f"base ({hparams['base_model']})"


EXPECTED_ERRORS = (ConfigError, AnchorStoreError, ProvenanceError, AudioError, CheckpointError, FileNotFoundError,
                   FileExistsError)


def error_message(err):
    """One clear line for an expected error (DataLoader workers wrap theirs in a traceback)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].split(":", 1)[0].split(".")[-1] == type(err).__name__:
        return lines[-1].split(":", 1)[1].strip()
    return str(err).strip()


def cli(argv=None, run=None):
    """``main`` (or ``run``) for the command line: an expected error exits with status 1 and one ``error:`` line."""
    try:
        (run or main)(argv)
    except EXPECTED_ERRORS as err:
        logger.debug("".join(traceback.format_exception(err)))
        sys.exit(f"error: {error_message(err)}\n(checkpoints and results already written are kept; "
                 "fix the problem and run the same command to resume)")


if __name__ == "__main__":
    cli()
