"""What a stage reads besides its YAML: prepared rows as datasets, and stage 2's fixed anchor stores
(``anchors.pt``, ``dev_anchors.pt``, ``replay_anchors.pt`` beside the ``anchors`` file, each embedded once by the
frozen base; extraction leaves the global random state as it found it)."""
import functools
import logging
import pathlib

import speechbrain as sb
import torch

from anchor_reg.anchors import load_or_extract
from anchor_reg.data.audio import read_audio_checked
from anchor_reg.data.batching import collate_rows
from anchor_reg.data.cache import read_csv
from anchor_reg.data.dev_copies import NoisyDevCopies
from anchor_reg.errors import AudioError
from anchor_reg.replay import ReplaySet, broad_dev_ids

logger = logging.getLogger(__name__)


def audio_item(hparams):
    """The dynamic item ``sig`` (T,) of a prepared row (``wav``, ``start``, ``stop``); None for bad audio
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


def rows_dataset(hparams, csv_file):
    """``id``, ``sig``, ``spk_id`` of a prepared CSV's rows."""
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(csv_file))
    sb.dataio.dataset.add_dynamic_item([dataset], audio_item(hparams))
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig", "spk_id"])
    return dataset


def read_column(csv_file, column):
    """One column of a CSV, as a list of strings."""
    return [row[column] for row in read_csv(csv_file)]


def anchor_stores(hparams, base, train_data, train_ids, run_opts):
    """Stage 2's fixed references: (training store, AnchorRegBrain options, provenance to expect).

    ``train_data``: the training rows' dataset (``id``, ``sig``, ``spk_id``), ``train_ids`` their IDs as
    read from ``train.csv``; the dev (and replay) stores come from ``dev.csv`` (``replay.csv``).
    """
    prep, folder = pathlib.Path(hparams["prep_folder"]), pathlib.Path(hparams["anchors"]).parent
    skip_bad = hparams["skip_bad_files"]

    def extract(dataset, row_ids, csv_file, anchors_file):
        return load_or_extract(
            base, dataset, anchors_file, row_ids=None if skip_bad else row_ids,
            batch_size=hparams["anchor_batch_size"], num_workers=hparams["num_workers"],
            collate_fn=functools.partial(collate_rows, skip_bad=skip_bad), reextract=hparams["reextract_anchors"],
            device=run_opts.get("device", "cpu"), progressbar=not run_opts.get("noprogressbar", False),
            extra_provenance={"rows_csv": str(csv_file)},
        )

    store = extract(train_data, train_ids, prep / "train.csv", hparams["anchors"])
    options, provenance = {"anchors": store}, {"base_fingerprint": base.fingerprint, "anchors_digest": store.digest()}
    dev_csv, replay_csv = prep / "dev.csv", prep / "replay.csv"
    dev_anchors = extract(rows_dataset(hparams, dev_csv), read_column(dev_csv, "ID"), dev_csv, folder / "dev_anchors.pt")
    if hparams.get("dev_criterion") == "anchor_retrieval":
        options["dev_anchors"] = dev_anchors
        provenance["dev_anchors_digest"] = dev_anchors.digest()
    if hparams.get("replay_rows", 0) > 0:
        replay_data = rows_dataset(hparams, replay_csv)
        replay_store = extract(replay_data, read_column(replay_csv, "ID"), replay_csv, folder / "replay_anchors.pt")
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        dev_ids = broad_dev_ids(hparams)  # held-out broad dev rows: their anchors are in the replay store
        options["replay"] = ReplaySet(replay_data, replay_store, hparams["replay_rows"], hparams["seed"], rank,
                                      set(dev_ids), NoisyDevCopies.of_stage(hparams) if dev_ids else None)
        provenance["replay_anchors_digest"] = replay_store.digest()
    if hparams.get("l2sp_weight", 0) > 0:
        options["base_embedding"] = base.modules["embedding_model"]
    return store, options, provenance
