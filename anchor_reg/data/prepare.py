"""One call that prepares everything a training YAML needs in ``prep_folder``, whatever the ``dataset``:
speech CSVs and trials, training noises (``*_train.csv``) and evaluation noises (``eval_*.csv``) from files
disjoint from the training ones."""

import logging
import os
import pathlib
import random
import re

from anchor_reg.data.cache import read_csv, write_csv
from anchor_reg.data.folder import prepare_folder_of_speakers
from anchor_reg.data.noise import (
    BABBLE_TALKERS, NOISE_FIELDS, find_audio_files, merge_noise_csvs, prepare_babble, prepare_musan,
    prepare_noise_files, prepare_rirs_noises,
)
from anchor_reg.data.synthetic import generate_corpus
from anchor_reg.data.unlabelled import prepare_replay, prepare_unlabelled
from anchor_reg.data.voxceleb import prepare_voxceleb
from anchor_reg.errors import AudioError, ConfigError

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "folder", "voxceleb", "unlabelled")  # the values of the key `dataset`
SHORT_VERIFICATION_FRACTION = 0.5  # warn of verification utterances shorter than this x the shortest crop
_SEGMENT_SUFFIX = re.compile(r"_\d+_\d+$")


def prepare_data(hparams):
    """Prepares speech, noise and RIR CSVs in ``hparams["prep_folder"]``; returns output name -> path.
    Raises ConfigError or AudioError naming the key or file."""
    dataset = hparams["dataset"]
    if dataset not in DATASETS:
        raise ConfigError(f"key 'dataset' must be one of {', '.join(DATASETS)}, got '{dataset}'")
    prep = pathlib.Path(hparams["prep_folder"])
    prep.mkdir(parents=True, exist_ok=True)
    common = dict(seg_dur=hparams["seg_dur"], dev_ratio=hparams["dev_ratio"], seed=hparams["data_seed"],
                  sample_rate=hparams["sample_rate"], skip_bad_files=hparams["skip_bad_files"])
    try:
        if dataset == "synthetic":
            generate_synthetic(hparams)
        sources = noise_sources(hparams)
        if dataset == "folder":
            check_babble_talkers(hparams)
        if dataset == "voxceleb":
            prepare_voxceleb(hparams["data_folders"], prep, trial_list=hparams["trial_list"] or "veri_test2.txt",
                             **common)
        elif dataset == "unlabelled":
            prepare_unlabelled(sources.pop("speech"), hparams["verification_folders"], prep,
                               test_seg_dur=hparams["test_seg_dur"], **common)
        else:
            prepare_folder_of_speakers(
                sources.pop("speech"), prep, verification_speakers=hparams["verification_speakers"],
                trial_list=hparams["trial_list"], test_seg_dur=hparams["test_seg_dur"], **common,
            )
        if hparams.get("replay_rows"):
            prepare_replay(hparams["replay_folders"], prep, seg_dur=hparams["seg_dur"],
                           sample_rate=hparams["sample_rate"], skip_bad_files=hparams["skip_bad_files"])
        return prepare_noise(hparams, sources)
    except (ConfigError, AudioError):
        raise
    except (ValueError, TypeError) as err:  # the preparation's own checks: the message names the cause
        raise ConfigError(f"data preparation ({dataset} data): {err}".replace("\n", " ")) from err


def check_babble_talkers(hparams):
    """Refuses too few verification speakers for the folder dataset's evaluation babble (mixed from them)."""
    held_out, fewest = hparams["verification_speakers"], BABBLE_TALKERS[0]
    if not hparams["trial_list"] and isinstance(held_out, int) and held_out * len(hparams["data_folders"]) < fewest:
        raise ConfigError(
            f"verification_speakers: the evaluation babble mixes {fewest} to {BABBLE_TALKERS[1]} "
            f"verification speakers, so at least {fewest} are needed in all, got {held_out}"
        )


def check_prepared(hparams):
    """Refuses a ``train.csv`` with fewer rows per process than one ``batch_size`` (the incomplete last batch
    is dropped, so an epoch would train nothing); warns of short verification utterances."""
    prep = pathlib.Path(hparams["prep_folder"])
    train_rows = read_csv(prep / "train.csv")
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if len(train_rows) // world_size < hparams["batch_size"]:
        raise ConfigError(
            f"batch_size: {hparams['batch_size']} is more than the {len(train_rows)} rows of "
            f"{prep / 'train.csv'}{f' shared by {world_size} processes' if world_size > 1 else ''}, "
            "so an epoch has no training step: lower --batch_size or give more data"
        )
    shortest_crop = min(float(row["duration"]) for row in train_rows)
    verification = {row["ID"]: row for name in ("enrol", "test") for row in read_csv(prep / f"{name}.csv")}
    shortest = SHORT_VERIFICATION_FRACTION * shortest_crop
    short = [row for row in verification.values() if float(row["duration"]) < shortest]
    if short:
        logger.warning(
            "%d verification utterance(s) are shorter than %g x the shortest training crop (%.2f s), "
            "e.g. %s (%.2f s): their embeddings will be poor; drop them or use longer ones",
            len(short), SHORT_VERIFICATION_FRACTION, shortest_crop, short[0]["wav"], float(short[0]["duration"]),
        )


def generate_synthetic(hparams):
    """Generates (or reuses) the synthetic corpus in ``data_folder`` (never into a folder holding anything else)."""
    generate_corpus(hparams["data_folder"], num_speakers=hparams["synthetic_speakers"],
                    utts_per_speaker=hparams["synthetic_utts_per_speaker"], num_noises=hparams["synthetic_noises"],
                    seed=hparams["data_seed"], sample_rate=hparams["sample_rate"])


def noise_sources(hparams):
    """Where speech, noise and RIRs come from (folders or CSVs); reads and writes nothing."""
    if hparams["dataset"] == "synthetic":
        root = pathlib.Path(hparams["data_folder"])
        return {"speech": [str(root / "speech")],
                "noise": {"noise": root / "noise" / "noise", "music": root / "noise" / "music"},
                "eval_babble": root / "noise" / "babble",  # talkers outside the corpus
                "rir": root / "rir"}
    missing = [str(f) for f in hparams["data_folders"] if not pathlib.Path(f).is_dir()]
    if missing:
        raise FileNotFoundError(f"data_folders: {', '.join(missing)} not found (set --data_folder=...)")
    for key in ("verification_folders", "replay_folders"):
        missing = [str(f) for f in hparams.get(key) or () if not pathlib.Path(f).is_dir()]
        if missing:
            raise FileNotFoundError(f"{key}: {', '.join(missing)} not found")
    if not hparams["rir_folder"]:
        raise ConfigError(
            "rir_folder: no RIR folder given (set --rir_folder= to a folder of RIR audio or the RIRS_NOISES root)"
        )
    sources = {"speech": list(hparams["data_folders"]), "rir": hparams["rir_folder"]}
    if hparams["dataset"] == "voxceleb":
        if not hparams["musan_folder"]:
            raise ConfigError("musan_folder: no MUSAN folder given (set --musan_folder= to the MUSAN root)")
        sources["musan"] = hparams["musan_folder"]
    elif not hparams["noise_folders"]:
        raise ConfigError(
            "noise_folders: no noise folders given (set --noise_folders=\"{noise: <folder>, music: <folder>}\")"
        )
    else:
        sources["noise"] = dict(hparams["noise_folders"])
    return sources


def prepare_noise(hparams, sources):
    """Training and evaluation noise, babble and RIR CSVs, split by source file; returns name -> path."""
    prep = pathlib.Path(hparams["prep_folder"])
    seed, sample_rate, skip = hparams["data_seed"], hparams["sample_rate"], hparams["skip_bad_files"]
    musan = sources.get("musan")
    per_type, origins = {}, {}
    if musan:
        csvs = prepare_musan(musan, prep / "musan", seed=seed, sample_rate=sample_rate, skip_bad_files=skip)
        per_type = {kind: csvs[kind] for kind in ("noise", "music")}
        origins = {kind: ("musan_folder", pathlib.Path(musan) / kind) for kind in ("noise", "music")}
        split_noise_csv(csvs["babble"], prep / "musan_babble_train.csv", prep / "eval_babble.csv", seed,
                        ("musan_folder", pathlib.Path(musan) / "speech"))
    for kind, folder in (sources.get("noise") or {}).items():
        files = find_audio_files(folder)
        if not files:
            raise FileNotFoundError(f"noise_folders[{kind}]: no .wav/.flac files under {folder}")
        per_type[kind] = prepare_noise_files(folder, files, prep / f"all_{kind}.csv", kind, sample_rate=sample_rate,
                                             skip_bad_files=skip)
        origins[kind] = (f"noise_folders[{kind}]", folder)
    for kind, csv_file in per_type.items():
        split_noise_csv(csv_file, prep / f"train_{kind}.csv", prep / f"eval_{kind}.csv", seed, origins[kind])
    merge_noise_csvs([prep / f"train_{kind}.csv" for kind in per_type], prep / "noise_train.csv")

    babble = prepare_babble(prep / "train.csv", prep / "babble_train", hparams["babble_mixtures"], seed=seed,
                            sample_rate=sample_rate)
    if musan:
        babble = merge_noise_csvs([babble, prep / "musan_babble_train.csv"], prep / "babble_all_train.csv")
    copy_csv(babble, prep / "babble_train.csv")
    if "eval_babble" in sources:  # synthetic: talkers outside the corpus
        prepare_noise_files(sources["eval_babble"], find_audio_files(sources["eval_babble"]), prep / "eval_babble.csv",
                            "babble", sample_rate=sample_rate, skip_bad_files=skip)
    elif not musan:  # held-out (verification) speakers, never trained on
        eval_babble = prepare_babble(prep / "test.csv", prep / "babble_eval", hparams["babble_mixtures"],
                                     seed=seed + 1, sample_rate=sample_rate)
        copy_csv(eval_babble, prep / "eval_babble.csv")

    rir_folder = pathlib.Path(sources["rir"])
    if (rir_folder / "simulated_rirs").is_dir() or (rir_folder / "real_rirs_isotropic_noises").is_dir():
        rir_csv = prepare_rirs_noises(rir_folder, prep, sample_rate=sample_rate, skip_bad_files=skip)
    else:
        rir_csv = prepare_noise_files(rir_folder, find_audio_files(rir_folder), prep / "rir.csv", "rir", seg_dur=None,
                                      min_dur=0, sample_rate=sample_rate, skip_bad_files=skip)
    split_noise_csv(rir_csv, prep / "rir_train.csv", prep / "eval_rir.csv", seed, ("rir_folder", rir_folder))
    names = ("noise_train", "babble_train", "rir_train", "eval_noise", "eval_music", "eval_babble", "eval_rir")
    return {name: str(prep / f"{name}.csv") for name in names}


def split_noise_csv(csv_file, train_csv, eval_csv, seed, source, eval_fraction=0.5):
    """Splits noise rows into training and evaluation CSVs by source file (segments ``<name>_<start>_<stop>``
    of one file stay together), at least one file each; fewer than 2 files is a :class:`ConfigError` naming
    ``source``, the (key, folder) they came from."""
    rows = read_csv(csv_file)
    sources = sorted({_SEGMENT_SUFFIX.sub("", row["ID"]) for row in rows})
    if len(sources) < 2:
        key, folder = source
        raise ConfigError(
            f"{key}: {folder} holds {len(sources)} usable audio file(s); at least 2 are needed, one for training "
            "and one for evaluation (so that no evaluation condition was heard in training): add audio files to it"
        )
    random.Random(seed).shuffle(sources)
    eval_sources = set(sources[:min(len(sources) - 1, max(1, round(eval_fraction * len(sources))))])
    held_out = [_SEGMENT_SUFFIX.sub("", row["ID"]) in eval_sources for row in rows]
    write_csv([row for row, out in zip(rows, held_out) if not out], train_csv, NOISE_FIELDS)
    write_csv([row for row, out in zip(rows, held_out) if out], eval_csv, NOISE_FIELDS)


def copy_csv(src, dst):
    """Copies a noise CSV (atomically) unless it is already ``dst``."""
    if pathlib.Path(src).resolve() != pathlib.Path(dst).resolve():
        write_csv(read_csv(src), dst, NOISE_FIELDS)
