"""VoxCeleb preparation from local files (nothing is downloaded).

Expected layout, for VoxCeleb1 and/or VoxCeleb2 dev (one data folder each)::

    <data_folder>/wav/idXXXXX/<video>/<nnnnn>.wav      16 kHz mono
    <data_folder>/meta/veri_test2.txt                  (or <data_folder>/veri_test2.txt)

VoxCeleb2 is distributed as m4a (``dev/aac/idXXXXX/<video>/<nnnnn>.m4a``);
convert it once to 16 kHz mono wav, e.g.::

    cd /data/voxceleb2/dev/aac
    find . -name '*.m4a' -print0 | while IFS= read -r -d '' f; do
        out="/data/voxceleb2/wav/${f%.m4a}.wav"
        mkdir -p "$(dirname "$out")"
        ffmpeg -nostdin -loglevel error -y -i "$f" -ac 1 -ar 16000 "$out"
    done

The trial list (``veri_test2.txt`` = VoxCeleb1-O cleaned, ``veri_test.txt``,
``list_test_all2.txt``, ``list_test_hard2.txt``) is a local file: a path, or a
name looked up in each data folder and its ``meta/``. Every speaker of the
trial list is excluded from train/dev (for VoxCeleb1-E/H this means all of
VoxCeleb1). The outputs are those of
:func:`anchor_reg.data.folder.prepare_folder_of_speakers`; enrol/test rows are
whole trial files with IDs ``idXXXXX/<video>/<nnnnn>``.
"""

import os
from pathlib import Path

from anchor_reg.data.folder import (
    folder_list,
    prepare_speaker_corpora,
    scan_speaker_folder,
)


def prepare_voxceleb(
    data_folders,
    save_folder,
    *,
    trial_list="veri_test2.txt",
    seg_dur=3.0,
    dev_ratio=0.01,
    seed=1234,
    sample_rate=16000,
    skip_bad_files=False,
    min_utt_dur=1.0,
):
    """Prepares train/dev/enrol/test CSVs and trials.txt for VoxCeleb.

    Arguments
    ---------
    data_folders : str, Path or list
        VoxCeleb1 and/or VoxCeleb2 folders, each holding ``wav/``.
    save_folder : str or Path
        Where the outputs are written.
    trial_list : str or Path
        Path of the trial list, or its file name inside a data folder or its
        ``meta/`` sub-folder.
    seg_dur : float
        Training segment length in seconds (see prepare_folder_of_speakers).
    dev_ratio : float
        Fraction of training rows held out as dev.csv.
    seed : int
        Seed of the dev split.
    sample_rate : int
        Sample rate every file must have.
    skip_bad_files : bool
        Leave bad audio files out (listed in bad_files.txt) instead of failing.
    min_utt_dur : float
        Shortest training row in seconds.

    Returns
    -------
    dict
        Output paths: train, dev, enrol, test, trials, opts (and bad_files).
    """
    folders = folder_list(data_folders)
    wav_folders = [voxceleb_wav_folder(folder) for folder in folders]
    trial_path = find_trial_list(trial_list, folders)
    corpora = [scan_speaker_folder(folder) for folder in wav_folders]
    return prepare_speaker_corpora(
        wav_folders,
        corpora,
        save_folder,
        seg_dur=seg_dur,
        dev_ratio=dev_ratio,
        verification_speakers=None,
        trial_list=trial_path,
        trials_per_speaker=None,
        seed=seed,
        sample_rate=sample_rate,
        skip_bad_files=skip_bad_files,
        min_utt_dur=min_utt_dur,
        test_seg_dur=None,
    )


def voxceleb_wav_folder(data_folder):
    """The ``wav/`` folder of a VoxCeleb data folder (raises if absent)."""
    wav_folder = Path(data_folder) / "wav"
    if not wav_folder.is_dir():
        raise FileNotFoundError(
            f"{wav_folder} not found: expected "
            f"{data_folder}/wav/idXXXXX/<video>/<nnnnn>.wav (VoxCeleb2 m4a "
            "files must first be converted to 16 kHz mono wav, see "
            "anchor_reg.data.voxceleb)"
        )
    return wav_folder


def find_trial_list(trial_list, data_folders):
    """Locates a local trial list: a path, or a name in a data folder or its
    ``meta/`` sub-folder."""
    if os.path.isfile(trial_list):
        return Path(trial_list)
    candidates = [
        Path(folder) / sub / trial_list
        for folder in data_folders
        for sub in (".", "meta")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = "\n".join(f"  {c}" for c in candidates)
    raise FileNotFoundError(
        f"Trial list {trial_list} not found (looked for {trial_list} and in:\n"
        f"{looked}\n). Nothing is downloaded: get it from the VoxCeleb website "
        "and put it in <data_folder>/meta/, or pass its path."
    )
