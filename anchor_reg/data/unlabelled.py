"""Unlabelled audio (``dataset: unlabelled``) and replay rows (``replay_folders``): folders of audio at any depth.

Each file is cut into ``seg_dur`` rows whose ``spk_id`` is the source file (``<folder name>/<path without
extension>``), so label-free negatives never come from the same file and the anchors' "speakers" are files.
Trials come from verification folders laid out as ``dataset: folder``'s (``<speaker>/<session>/<utt>``).
"""
import logging
import os
import random
from pathlib import Path

from anchor_reg.data.audio import validate_audio_files
from anchor_reg.data.cache import input_fingerprint, reuse_outputs, save_options, write_csv
from anchor_reg.data.folder import (
    Utterance, generated_trials, prepared_outputs, scan_speaker_folder, training_rows, write_prepared,
)
from anchor_reg.data.noise import BABBLE_TALKERS, find_audio_files

logger = logging.getLogger(__name__)

REPLAY_OPTS_FILE = "replay_opts.json"
TRIALS_PER_SPEAKER = 50


def scan_unlabelled_folders(folders):
    """Every audio file under ``folders`` as an :class:`Utterance` whose speaker (and ``id``) is the file."""
    utterances, owner = [], {}
    for folder in folders:
        folder = os.path.abspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"data folder not found: {folder}")
        paths = find_audio_files(folder)
        if not paths:
            raise FileNotFoundError(f"no .wav/.flac files under {folder}")
        for path in paths:
            relpath = f"{os.path.basename(folder)}/{os.path.relpath(path, folder)}"
            source = os.path.splitext(relpath)[0]
            if source in owner:
                raise ValueError(f"{path} and {owner[source]} have the same name {source}: rename a folder")
            owner[source] = path
            utterances.append(Utterance(relpath, path, source, ""))
    return utterances


def file_rows(utterances, durations, seg_dur, min_dur, sample_rate):
    """The ``seg_dur`` rows of each file readable in ``durations`` (path -> seconds)."""
    return [row for utt in utterances if utt.path in durations
            for row in training_rows(utt, round(durations[utt.path] * sample_rate), seg_dur, min_dur, sample_rate)]


def split_dev_by_file(rows, dev_ratio, seed):
    """(train rows, dev rows): about ``dev_ratio`` of the source files (at least one, never all) go to dev."""
    files = sorted({row["spk_id"] for row in rows})
    if len(files) < 2:
        raise ValueError(f"unlabelled data: {len(files)} usable audio file(s); the dev split needs at least 2")
    random.Random(f"{seed}-dev").shuffle(files)
    dev_files = set(files[:min(len(files) - 1, max(1, round(dev_ratio * len(files))))])
    return [r for r in rows if r["spk_id"] not in dev_files], [r for r in rows if r["spk_id"] in dev_files]


def prepare_unlabelled(data_folders, verification_folders, save_folder, *, seg_dur=3.0, dev_ratio=0.1,
                       seed=1234, sample_rate=16000, skip_bad_files=False, min_utt_dur=1.0, test_seg_dur=None):
    """:func:`~anchor_reg.data.folder.prepare_folder_of_speakers` for unlabelled audio (``dev_ratio``: of the
    files); trials among every speaker of ``verification_folders``."""
    utterances = scan_unlabelled_folders(data_folders)
    corpora = [scan_speaker_folder(folder) for folder in verification_folders]
    verification = [u for corpus in corpora for u in corpus]
    options = {
        "dataset": "unlabelled",
        "data_folders": [os.path.abspath(f) for f in data_folders],
        "verification_folders": [os.path.abspath(f) for f in verification_folders],
        "seg_dur": seg_dur, "dev_ratio": dev_ratio, "seed": seed, "sample_rate": sample_rate,
        "skip_bad_files": skip_bad_files, "min_utt_dur": min_utt_dur, "test_seg_dur": test_seg_dur,
        "fingerprint": input_fingerprint(u.path for u in utterances + verification),
    }
    outputs = prepared_outputs(save_folder, skip_bad_files)
    if reuse_outputs(outputs["opts"], options, outputs.values()):
        return outputs
    speakers = [sorted({u.spk_id for u in corpus}) for corpus in corpora]
    for folder, corpus_speakers in zip(verification_folders, speakers):
        if len(corpus_speakers) < 2:
            raise ValueError(f"verification_folders: {folder} has {len(corpus_speakers)} speaker(s), trials need 2")
    if sum(map(len, speakers)) < BABBLE_TALKERS[0]:
        raise ValueError(f"verification_folders: the evaluation babble mixes at least {BABBLE_TALKERS[0]} "
                         f"of their speakers, they have {sum(map(len, speakers))}")
    durations = validate_audio_files([u.path for u in utterances + verification], sample_rate, skip_bad_files,
                                     outputs.get("bad_files"))
    train_rows, dev_rows = split_dev_by_file(file_rows(utterances, durations, seg_dur, min_utt_dur, sample_rate),
                                             dev_ratio, seed)
    n_samples = {path: round(d * sample_rate) for path, d in durations.items()}
    held_out = {spk for corpus_speakers in speakers for spk in corpus_speakers}
    trials, enrol_rows, test_rows = generated_trials(corpora, held_out, n_samples, test_seg_dur, min_utt_dur,
                                                     TRIALS_PER_SPEAKER, seed, sample_rate)
    write_prepared(outputs, options, train_rows, dev_rows, enrol_rows, test_rows, trials)
    return outputs


def prepare_replay(replay_folders, save_folder, *, seg_dur=3.0, sample_rate=16000, skip_bad_files=False,
                   min_utt_dur=1.0):
    """Writes ``<save_folder>/replay.csv`` (every segment of the replay folders) and returns its path."""
    save_folder = Path(save_folder)
    out, opts_path = save_folder / "replay.csv", save_folder / REPLAY_OPTS_FILE
    utterances = scan_unlabelled_folders(replay_folders)
    options = {
        "replay_folders": [os.path.abspath(f) for f in replay_folders], "seg_dur": seg_dur,
        "sample_rate": sample_rate, "skip_bad_files": skip_bad_files, "min_utt_dur": min_utt_dur,
        "fingerprint": input_fingerprint(u.path for u in utterances),
    }
    if reuse_outputs(opts_path, options, [out]):
        return str(out)
    report = save_folder / "bad_replay_files.txt" if skip_bad_files else None
    durations = validate_audio_files([u.path for u in utterances], sample_rate, skip_bad_files, report)
    rows = file_rows(utterances, durations, seg_dur, min_utt_dur, sample_rate)
    if not rows:
        raise ValueError(f"replay_folders: no segment of at least {min_utt_dur} s in {', '.join(replay_folders)}")
    write_csv(rows, out)
    save_options(opts_path, options)
    logger.info("Prepared %s: %d replay rows from %d files", out, len(rows), len({r["spk_id"] for r in rows}))
    return str(out)
