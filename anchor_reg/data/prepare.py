"""One call that prepares everything a training YAML needs, whatever the dataset.

``prepare_data(hparams)`` (run by ``train.py`` through ``run_on_main``) writes
into ``prep_folder``:

- ``train.csv``, ``dev.csv``, ``enrol.csv``, ``test.csv``, ``trials.txt`` (speech);
- ``noise_train.csv`` (noise + music), ``babble_train.csv`` (babble of training
  speakers) and ``rir_train.csv`` for the training augmentations;
- ``eval_noise.csv``, ``eval_music.csv``, ``eval_babble.csv``, ``eval_rir.csv``
  for evaluation, from noise files and RIRs disjoint from the training ones and
  babble of speakers never trained on.

``dataset`` selects the sources: ``synthetic`` (the embedded corpus, generated
into ``data_folder``), ``folder`` (folders of speakers + ``noise_folders`` +
``rir_folder``) or ``voxceleb`` (VoxCeleb + ``musan_folder`` + ``rir_folder``
pointing at RIRS_NOISES).
"""

import csv
import logging
import pathlib
import random
import re

from anchor_reg.data.cache import write_csv
from anchor_reg.data.folder import prepare_folder_of_speakers
from anchor_reg.data.noise import (
    NOISE_FIELDS,
    find_audio_files,
    merge_noise_csvs,
    prepare_babble,
    prepare_musan,
    prepare_noise_files,
    prepare_rirs_noises,
)
from anchor_reg.data.synthetic import generate_corpus
from anchor_reg.data.voxceleb import prepare_voxceleb

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "folder", "voxceleb")
EVAL_NOISE_TYPES = ("noise", "music", "babble")
_SEGMENT_SUFFIX = re.compile(r"_\d+_\d+$")


def prepare_data(hparams):
    """Prepares speech, noise and RIR CSVs in ``hparams["prep_folder"]``.

    Arguments
    ---------
    hparams : dict
        Keys: ``dataset``, ``data_folder``, ``data_folders``, ``prep_folder``,
        ``seg_dur``, ``dev_ratio``, ``verification_speakers``, ``trial_list``,
        ``test_seg_dur``, ``data_seed``, ``sample_rate``, ``skip_bad_files``,
        ``noise_folders``, ``musan_folder``, ``rir_folder``, ``babble_mixtures``,
        and for ``synthetic`` ``synthetic_speakers``, ``synthetic_utts_per_speaker``
        and ``synthetic_noises``.

    Returns
    -------
    dict
        Output name → path.
    """
    dataset = hparams["dataset"]
    if dataset not in DATASETS:
        raise ValueError(
            f"key 'dataset' must be one of {DATASETS}, got '{dataset}'"
        )
    prep = pathlib.Path(hparams["prep_folder"])
    prep.mkdir(parents=True, exist_ok=True)
    common = dict(
        seg_dur=hparams["seg_dur"],
        dev_ratio=hparams["dev_ratio"],
        seed=hparams["data_seed"],
        sample_rate=hparams["sample_rate"],
        skip_bad_files=hparams["skip_bad_files"],
    )
    sources = noise_sources(hparams)
    if dataset == "voxceleb":
        prepare_voxceleb(
            hparams["data_folders"],
            prep,
            trial_list=hparams["trial_list"] or "veri_test2.txt",
            **common,
        )
    else:
        prepare_folder_of_speakers(
            sources.pop("speech"),
            prep,
            verification_speakers=hparams["verification_speakers"],
            trial_list=hparams["trial_list"],
            test_seg_dur=hparams["test_seg_dur"],
            **common,
        )
    return prepare_noise(hparams, sources)


def noise_sources(hparams):
    """Where speech, noise and RIRs come from for this dataset (folders or CSVs)."""
    dataset = hparams["dataset"]
    if dataset == "synthetic":
        root = pathlib.Path(hparams["data_folder"])
        generate_corpus(
            root,
            num_speakers=hparams["synthetic_speakers"],
            utts_per_speaker=hparams["synthetic_utts_per_speaker"],
            num_noises=hparams["synthetic_noises"],
            seed=hparams["data_seed"],
            sample_rate=hparams["sample_rate"],
        )
        return {
            "speech": [str(root / "speech")],
            "noise": {
                "noise": root / "noise" / "noise",
                "music": root / "noise" / "music",
            },
            "eval_babble": root
            / "noise"
            / "babble",  # talkers outside the corpus
            "rir": root / "rir",
        }
    missing = [
        str(f) for f in hparams["data_folders"] if not pathlib.Path(f).is_dir()
    ]
    if missing:
        raise FileNotFoundError(
            f"data_folders: {', '.join(missing)} not found (set --data_folder=...)"
        )
    sources = {
        "speech": list(hparams["data_folders"]),
        "rir": hparams["rir_folder"],
    }
    if dataset == "voxceleb":
        sources["musan"] = hparams["musan_folder"]
    else:
        sources["noise"] = dict(hparams["noise_folders"])
    return sources


def prepare_noise(hparams, sources):
    """Training and evaluation noise/babble/RIR CSVs, split by source file."""
    prep = pathlib.Path(hparams["prep_folder"])
    seed, sample_rate, skip = (
        hparams["data_seed"],
        hparams["sample_rate"],
        hparams["skip_bad_files"],
    )
    outputs = {}
    per_type = {}
    if sources.get("musan"):
        musan = prepare_musan(
            sources["musan"],
            prep / "musan",
            seed=seed,
            sample_rate=sample_rate,
            skip_bad_files=skip,
        )
        per_type = {kind: musan[kind] for kind in ("noise", "music")}
        split_noise_csv(
            musan["babble"],
            prep / "musan_babble_train.csv",
            prep / "eval_babble.csv",
            seed,
        )
    for kind, folder in (sources.get("noise") or {}).items():
        files = find_audio_files(folder)
        if not files:
            raise FileNotFoundError(
                f"noise_folders[{kind}]: no .wav/.flac files under {folder}"
            )
        per_type[kind] = prepare_noise_files(
            folder,
            files,
            prep / f"all_{kind}.csv",
            kind,
            sample_rate=sample_rate,
            skip_bad_files=skip,
        )
    if not per_type:
        raise ValueError(
            "no noise given: set noise_folders (folder dataset) or musan_folder (voxceleb)"
        )
    train_parts = []
    for kind, csv_file in per_type.items():
        train_parts.append(prep / f"train_{kind}.csv")
        split_noise_csv(
            csv_file, train_parts[-1], prep / f"eval_{kind}.csv", seed
        )
    outputs["noise_train"] = merge_noise_csvs(
        train_parts, prep / "noise_train.csv"
    )

    babble = prepare_babble(
        prep / "train.csv",
        prep / "babble_train",
        hparams["babble_mixtures"],
        seed=seed,
        sample_rate=sample_rate,
    )
    if sources.get("musan"):
        babble = merge_noise_csvs(
            [babble, prep / "musan_babble_train.csv"],
            prep / "babble_all_train.csv",
        )
    copy_csv(babble, prep / "babble_train.csv")
    if "eval_babble" in sources:  # synthetic: talkers outside the corpus
        prepare_noise_files(
            sources["eval_babble"],
            find_audio_files(sources["eval_babble"]),
            prep / "eval_babble.csv",
            "babble",
            sample_rate=sample_rate,
            skip_bad_files=skip,
        )
    elif not sources.get(
        "musan"
    ):  # held-out (verification) speakers, never trained on
        eval_babble = prepare_babble(
            prep / "test.csv",
            prep / "babble_eval",
            hparams["babble_mixtures"],
            seed=seed + 1,
            sample_rate=sample_rate,
        )
        copy_csv(eval_babble, prep / "eval_babble.csv")

    rir_folder = sources.get("rir")
    if not rir_folder:
        raise ValueError(
            "rir_folder: no RIR folder given (a folder of RIR audio or the RIRS_NOISES root)"
        )
    rir_folder = pathlib.Path(rir_folder)
    if (rir_folder / "simulated_rirs").is_dir() or (
        rir_folder / "real_rirs_isotropic_noises"
    ).is_dir():
        rir_csv = prepare_rirs_noises(
            rir_folder, prep, sample_rate=sample_rate, skip_bad_files=skip
        )
    else:
        rir_csv = prepare_noise_files(
            rir_folder,
            find_audio_files(rir_folder),
            prep / "rir.csv",
            "rir",
            seg_dur=None,
            min_dur=0,
            sample_rate=sample_rate,
            skip_bad_files=skip,
        )
    split_noise_csv(
        rir_csv, prep / "rir_train.csv", prep / "eval_rir.csv", seed
    )
    outputs.update(
        {
            name: str(prep / f"{name}.csv")
            for name in (
                "babble_train",
                "rir_train",
                "eval_noise",
                "eval_music",
                "eval_babble",
                "eval_rir",
            )
        }
    )
    return outputs


def split_noise_csv(csv_file, train_csv, eval_csv, seed, eval_fraction=0.5):
    """Splits noise rows into training and evaluation CSVs by source file.

    Segments cut from one file (IDs ``<name>_<start>_<stop>``) stay together, so
    no evaluation noise was heard in training. Both sides get at least one file.
    """
    with open(csv_file, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    sources = sorted({_SEGMENT_SUFFIX.sub("", row["ID"]) for row in rows})
    if len(sources) < 2:
        raise ValueError(
            f"{csv_file}: needs at least 2 source files to keep training and evaluation disjoint"
        )
    random.Random(seed).shuffle(sources)
    n_eval = min(len(sources) - 1, max(1, round(eval_fraction * len(sources))))
    eval_sources = set(sources[:n_eval])
    write_csv(
        [
            r
            for r in rows
            if _SEGMENT_SUFFIX.sub("", r["ID"]) not in eval_sources
        ],
        train_csv,
        NOISE_FIELDS,
    )
    write_csv(
        [r for r in rows if _SEGMENT_SUFFIX.sub("", r["ID"]) in eval_sources],
        eval_csv,
        NOISE_FIELDS,
    )


def copy_csv(src, dst):
    """Copies a noise CSV (atomically) unless it is already ``dst``."""
    if pathlib.Path(src).resolve() == pathlib.Path(dst).resolve():
        return
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    write_csv(rows, dst, NOISE_FIELDS)
