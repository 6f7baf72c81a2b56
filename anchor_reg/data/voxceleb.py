"""VoxCeleb preparation from local wav files (m4a converted first: recipes/VoxCeleb/README.md); every speaker
of the trial list is left out of train/dev."""

import os
from pathlib import Path

from anchor_reg.data.folder import folder_list, prepare_folder_of_speakers


def prepare_voxceleb(data_folders, save_folder, *, trial_list="veri_test2.txt", seg_dur=3.0, dev_ratio=0.01,
                     seed=1234, sample_rate=16000, skip_bad_files=False, min_utt_dur=1.0):
    """:func:`~anchor_reg.data.folder.prepare_folder_of_speakers` for VoxCeleb; ``trial_list``: a path, or a
    file name looked up in each data folder and its ``meta/``."""
    folders = folder_list(data_folders)
    wav_folders = [voxceleb_wav_folder(folder) for folder in folders]
    return prepare_folder_of_speakers(
        wav_folders, save_folder, trial_list=find_trial_list(trial_list, folders), seg_dur=seg_dur,
        dev_ratio=dev_ratio, seed=seed, sample_rate=sample_rate, skip_bad_files=skip_bad_files,
        min_utt_dur=min_utt_dur,
    )


def voxceleb_wav_folder(data_folder):
    """The ``wav/`` folder of a VoxCeleb data folder (raises if absent)."""
    wav_folder = Path(data_folder) / "wav"
    if not wav_folder.is_dir():
        raise FileNotFoundError(
            f"{wav_folder} not found: expected {data_folder}/wav/idXXXXX/<video>/<nnnnn>.wav (VoxCeleb2 m4a "
            "files must first be converted to 16 kHz mono wav, see anchor_reg.data.voxceleb)"
        )
    return wav_folder


def find_trial_list(trial_list, data_folders):
    """Locates a local trial list: a path, or a name in a data folder or its ``meta/`` sub-folder."""
    if os.path.isfile(trial_list):
        return Path(trial_list)
    candidates = [Path(folder) / sub / trial_list for folder in data_folders for sub in (".", "meta")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = "\n".join(f"  {c}" for c in candidates)
    raise FileNotFoundError(
        f"Trial list {trial_list} not found (looked for {trial_list} and in:\n{looked}\n). Nothing is "
        "downloaded: get it from the VoxCeleb website and put it in <data_folder>/meta/, or pass its path."
    )
