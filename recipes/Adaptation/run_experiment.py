#!/usr/bin/env python3
"""Adapting a pretrained speaker model to noise with a small corpus it never saw, without forgetting.

Data: ``../shared/data``. The base is stage 1 trained on the *broad* corpora
(LibriSpeech + ASC speakers), or any ``--base_model``; it never hears the
*adapted* corpus (the DSP speakers). Every corpus holds test speakers out of
everything (base, adaptation, replay); trials stay within a corpus. Stage 2
adapts the base on the adapted corpus' other speakers (all of them, and a
subsample of ``--small_size``), with noise, music, babble and rooms disjoint by
file from the evaluation ones (``anchor_reg.data.prepare``).

Systems (:data:`SYSTEMS`: each a dict of train.py overrides on its YAML)::

    base               the base model, unchanged
    ft_lambda0         labelled fine-tuning (AAM), no anchors
    anchors            + the contrastive anchor objective (λ = 1)
    anchors_replay     + replay: every batch also pulls rows of the broad corpora to their own fixed anchors
    labelfree          no labels: each clean and noisy crop pulled to its own anchor
    labelfree_replay   label-free + replay
    labelfree_replay_broaddev  label-free + replay, its dev criterion also on 200 held-out broad rows
    anchors_replay_broaddev    anchors_replay selected by that criterion: hparams/adapt.yaml's labelled default
    l2sp               fine-tuning with L2-SP toward the base's weights
    wiseft             ft_lambda0 exported as α·base + (1-α)·adapted, α chosen on the dev criterion
    joint_ft           fine-tuning with an online clean/noisy consistency term (no fixed anchors)
    anchors_replay_equal_rows  anchors_replay's checkpoint at the rows anchors had drawn at its best epoch

Each system trains on ``--seeds`` (the stage-2 draws; one base) and is scored on
every corpus' test speakers: clean EER and the corrupted mean (noise, music,
babble x 0-20 dB and reverb, evaluation noises only), per corpus and pooled.
Outputs in ``<output_folder>``::

    <run>/export/               the first seed's model (base: the base's), <run> = system[_<N>spk]
    <run>/seed<S>/results.json  pooled conditions + "corpora": per-corpus conditions
    summary.md                  mean ± sd over seeds, rows drawn, and the rule "adaptation without forgetting"
    per_corpus.md, paired.md    per-corpus columns; paired differences per seed (anchors' own share)
    frontier.png                clean EER vs corrupted mean, one point per system and data size
    data/, runs/, logs/         speaker lists and symlinked folders, training folders, train.py logs
    timing.json                 wall and CPU seconds per step

Usage (see recipes/Adaptation/README.md)::

    python recipes/Adaptation/run_experiment.py --jobs 2 --threads 1

Re-running a command skips every run whose ``results.json`` exists, and an
interrupted training resumes from its last checkpoint.
"""
import argparse
import json
import logging
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import soundfile
import torch
import yaml
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.atomic import write_text_atomic
from anchor_reg.checkpointer import best_checkpoint, end_of_epoch
from anchor_reg.config import keys_of, load_hparams, overrides_for
from anchor_reg.corruption import Corruptor, default_conditions
from anchor_reg.data.folder import scan_speaker_folder, verification_rows
from anchor_reg.data.prepare import prepare_data
from anchor_reg.data.trials import generate_trials, write_trials
from anchor_reg.evaluate import TrialSet, evaluate_condition, load_encoder, score_trials
from anchor_reg.export import export_model
from anchor_reg.metrics import MIN_DCF_NOTE, eer, mean_and_sd, min_dcf
from anchor_reg.plots import save_figure
from anchor_reg.results import write_results

logger = logging.getLogger("adaptation")

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_SHARED_DATA = pathlib.Path(os.environ.get("ANCHOR_REG_SHARED_DATA", REPO.parent / "shared" / "data"))
BROAD = ("librispeech-train", "asc")  # what the base learns (and what replay draws from)
ADAPTED = "dsp"  # the small corpus the base never hears
TEST_SPEAKERS = {"librispeech-train": 8, "asc": 6, "dsp": 6}  # held out of everything, per corpus
NOISE_TYPES = ("noise", "music", "babble")
SNRS = (0, 5, 10, 15, 20)

REPLAY_FOLDERS = "<replay_folders>"  # in SYSTEMS: filled in with the broad corpora's non-test speakers
# dataset: unlabelled runs on the adaptation speakers' audio as one flat folder (Runner.experiments)
LABEL_FREE = {"supervision": "none", "dataset": "unlabelled", "dev_criterion": "anchor_retrieval",
              "anchor_objective": "pull", "anchor_weight": 1.0}
REPLAY = {"replay_folders": REPLAY_FOLDERS, "replay_rows": 16, "replay_objective": "pull", "replay_weight": 1.0}
CONTRASTIVE = {"anchor_objective": "contrastive", "anchor_weight": 1.0}
NO_ANCHORS = {"anchor_objective": "pull", "anchor_weight": 0.0}
# System -> (YAML, train.py overrides). "base" trains nothing; "wiseft" exports ft_lambda0 with WISE_ALPHA;
# EQUAL_ROWS views a checkpoint of its replay system.
SYSTEMS = {
    "base": None,
    "ft_lambda0": ("stage2.yaml", {**NO_ANCHORS}),
    "anchors": ("stage2.yaml", {**CONTRASTIVE}),
    "anchors_replay": ("stage2.yaml", {**CONTRASTIVE, **REPLAY}),
    "labelfree": ("stage2.yaml", dict(LABEL_FREE)),
    "labelfree_replay": ("stage2.yaml", {**LABEL_FREE, **REPLAY}),
    "labelfree_replay_broaddev": ("stage2.yaml", {**LABEL_FREE, **REPLAY, "replay_dev_rows": 200}),
    "anchors_replay_broaddev": ("stage2.yaml", {**CONTRASTIVE, **REPLAY, "dev_criterion": "anchor_retrieval",
                                                "replay_dev_rows": 200}),
    "l2sp": ("stage2.yaml", {**NO_ANCHORS, "l2sp_weight": 0.01}),
    "wiseft": None,
    "joint_ft": ("stage2.yaml", {**NO_ANCHORS, "consistency_weight": 1.0}),
    "anchors_replay_equal_rows": None,
}
WISEFT_OF, WISE_ALPHA = "ft_lambda0", "auto"
EQUAL_ROWS = {"anchors_replay_equal_rows": ("anchors_replay", "anchors")}  # view -> (replay system, control)
# Paired differences (system - control, same seed, same base): the anchors' own share and what each control moved.
PAIRS = (
    ("anchors", "ft_lambda0"),
    ("anchors_replay", "anchors"),
    ("anchors_replay", "ft_lambda0"),
    ("anchors_replay_equal_rows", "anchors"),
    ("labelfree_replay", "labelfree"),
    ("labelfree_replay_broaddev", "labelfree_replay"),
    ("anchors_replay_broaddev", "anchors_replay"),
    ("l2sp", "ft_lambda0"),
    ("wiseft", "ft_lambda0"),
    ("joint_ft", "ft_lambda0"),
)
# The pre-registered rule "adaptation without forgetting", on the pooled test speakers, mean over seeds.
RULE_CLEAN_MARGIN, RULE_CORRUPTED_RATIO = 0.5, 0.75


def parse_args(argv=None):
    """Command-line options (the systems' keys are checked against their YAMLs here, before any work)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared_data", type=pathlib.Path, default=None,
                        help=f"the shared data folder (default: {DEFAULT_SHARED_DATA})")
    parser.add_argument("--output_folder", type=pathlib.Path, default=REPO / "results" / "adaptation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of the stage-2 draws")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--small_size", type=int, default=5,
                        help="speakers of the small adaptation set (0: only the full set)")
    parser.add_argument("--small_systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS),
                        help="systems also run on the small set (of those in --systems; default: all)")
    parser.add_argument("--base_model", default=None,
                        help="start every stage 2 from this SpeechBrain model (folder or hub id) instead of "
                             "training stage 1 on the broad corpora")
    parser.add_argument("--base_seed", type=int, default=1, help="seed of the base (stage 1)")
    parser.add_argument("--channels", type=int, default=128, help="ECAPA-TDNN width C of the base")
    parser.add_argument("--stage1_epochs", type=int, default=20, help="epoch limit of the base")
    parser.add_argument("--stage1_patience", type=int, default=4)
    parser.add_argument("--stage2_epochs", type=int, default=8, help="epoch limit of each stage 2")
    parser.add_argument("--patience", type=int, default=3,
                        help="stage 2 stops after this many epochs without a better dev criterion")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--test_speakers", nargs="+", default=[f"{c}={n}" for c, n in TEST_SPEAKERS.items()],
                        metavar="CORPUS=N", help="test speakers held out of every corpus")
    parser.add_argument("--max_speakers", type=int, default=None,
                        help="use only the first N speakers of each corpus (quick runs)")
    parser.add_argument("--max_utterances", type=int, default=None,
                        help="use only the first N utterances of each speaker (quick runs)")
    parser.add_argument("--data_seed", type=int, default=1234, help="seed of the speaker split")
    parser.add_argument("--test_seg_dur", type=float, default=4.0,
                        help="test utterances are cut into segments of this length (s)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every train.py run whose YAML has KEY (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of training and evaluation")
    parser.add_argument("--eval_batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    args.test_speakers = dict(parse_pairs(args.test_speakers, parser))
    try:
        args.test_speakers = {c: int(n) for c, n in args.test_speakers.items()}
    except ValueError:
        parser.error(f"--test_speakers: expected CORPUS=N with an integer N, got {args.test_speakers}")
    missing = sorted({*BROAD, ADAPTED} - set(args.test_speakers))
    if missing:
        parser.error(f"--test_speakers: no count for {missing}")
    args.overrides = {key: yaml.safe_load(value) for key, value in parse_pairs(args.override, parser)}
    args.systems = with_dependencies(args.systems)
    args.small_systems = [s for s in with_dependencies(args.small_systems) if s in args.systems]
    problems = missing_keys(args.systems)
    if problems:
        parser.error("; ".join(problems))
    return args


def parse_pairs(pairs, parser):
    """``["key=value", ...]`` -> ``[(key, value), ...]`` (values stay strings for train.py)."""
    result = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"expected KEY=VALUE, got {pair!r}")
        result.append((key, value))
    return result


def with_dependencies(systems):
    """``systems`` plus what they are made from (wiseft: its fine-tuning; equal-rows views: both systems)."""
    needed = list(systems)
    for system in systems:
        extra = (WISEFT_OF,) if system == "wiseft" else EQUAL_ROWS.get(system, ())
        needed += [s for s in extra if s not in needed]
    return [s for s in SYSTEMS if s in needed]  # in SYSTEMS' order


def missing_keys(systems):
    """One message per trained system whose overrides are keys its YAML lacks (empty when all exist)."""
    problems = []
    for system in systems:
        if SYSTEMS[system] is None:
            continue
        yaml_name, overrides = SYSTEMS[system]
        unknown = sorted(set(overrides) - keys_of(REPO / "hparams" / yaml_name))
        if unknown:
            problems.append(f"system {system}: {unknown} are not keys of hparams/{yaml_name}")
    return problems


# ---------------------------------------------------------------- data ----
def split_speakers(speakers, test_counts, small_size, seed):
    """The speaker split of the whole recipe.

    Arguments
    ---------
    speakers : dict
        Corpus name -> its speaker ids (the broad corpora and the adapted one).
    test_counts : dict
        Corpus -> speakers held out for testing.
    small_size : int
        Speakers of the small adaptation set (drawn from the adapted corpus' other speakers; 0: none).
    seed : int
        Seed of every draw.

    Returns
    -------
    dict
        ``test``: corpus -> test speakers; ``broad``: corpus -> the base's (and replay's) speakers, the
        broad corpora only; ``adapt``: {"full": the adapted corpus' other speakers, "small": a subset}.
    """
    test, rest = {}, {}
    for corpus, ids in speakers.items():
        ids = sorted(ids)
        if not 2 <= test_counts[corpus] < len(ids):
            raise ValueError(f"{corpus}: {len(ids)} speakers; {test_counts[corpus]} test speakers is not possible "
                             "(at least 2, and at least 1 left)")
        test[corpus] = sorted(random.Random(f"{seed}-test-{corpus}").sample(ids, test_counts[corpus]))
        rest[corpus] = [s for s in ids if s not in test[corpus]]
    full = rest[ADAPTED]
    if small_size >= len(full):
        raise ValueError(f"--small_size {small_size}: {ADAPTED} has {len(full)} adaptation speakers "
                         "(the small set is a strict subsample)")
    small = sorted(random.Random(f"{seed}-small").sample(full, small_size)) if small_size else []
    broad = {c: rest[c] for c in speakers if c != ADAPTED}
    return {"test": test, "broad": broad, "adapt": {"full": full, "small": small}}


def link_speakers(source, target, speakers, max_utterances=None, flat=False):
    """Symlinks the speakers' files of ``source/<spk>/<session>/`` under ``target``, and only those.

    ``flat``: ``target/<spk>_<session>_<file>`` (an unlabelled folder of audio), else the same tree.
    Links left by an earlier run with another split are removed, so no speaker lingers where it
    no longer belongs.
    """
    wanted = set()
    for speaker in speakers:
        for session in sorted(p for p in (source / speaker).iterdir() if p.is_dir()):
            files = sorted(p for p in session.iterdir() if p.suffix in (".wav", ".flac"))
            for audio in files[:max_utterances]:
                name = f"{speaker}_{session.name}_{audio.name}" if flat else f"{speaker}/{session.name}/{audio.name}"
                link = target / name
                wanted.add(link)
                if not link.is_symlink():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(audio.resolve())
    if target.is_dir():
        for path in sorted(target.rglob("*"), reverse=True):  # a folder's entries before the folder
            if path.is_symlink() and path not in wanted:
                path.unlink()
            elif path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
    return target


def speakers_of(folder, max_speakers=None):
    """Sorted speaker folder names of a corpus folder (the first ``max_speakers``)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir())[:max_speakers]


def test_trials(folders, test_speakers, seg_dur, seed, trials_per_speaker=50, min_dur=1.0):
    """Trials among the test speakers, corpus by corpus (as the preparation generates them).

    Test utterances are cut into ``seg_dur`` segments (``spk/session/utt@start-stop``), so speakers with
    one long utterance get target trials too.

    Arguments
    ---------
    folders : dict
        Corpus name -> its folder of speakers.
    test_speakers : dict
        Corpus name -> its test speakers.

    Returns
    -------
    dict
        Corpus name -> list of (label, enrol, test).
    """
    trials = {}
    for index, (corpus, folder) in enumerate(folders.items()):
        utterances = [(utt, soundfile.info(utt.path)) for utt in scan_speaker_folder(folder)
                      if utt.spk_id in test_speakers[corpus]]
        rows = [row for utt, info in utterances
                for row in verification_rows(utt, info.frames, seg_dur, min_dur, info.samplerate)]
        trials[corpus] = generate_trials(rows, trials_per_speaker, random.Random(f"{seed}-trials-{index}"))
    return trials


def cli_value(value):
    """A typed override as train.py's command line reads it (lists, dicts, booleans and null as JSON)."""
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


# ------------------------------------------------------------ evaluation ----
def speaker_of(utterance_id):
    """The speaker of a verification row ID (``spk/session/utt[@start-stop]``)."""
    return utterance_id.split("/", 1)[0]


def evaluate_by_corpus(encoder, prep, corpus_of, *, snrs=SNRS, batch_size=16, seed=1234, system_name="model"):
    """The verification grid on the pooled trials of every corpus, and per corpus.

    Each utterance is embedded once per condition (``anchor_reg.evaluate``);
    each corpus' trials are then scored from those embeddings.

    Arguments
    ---------
    encoder : object
        Has ``encode_batch`` (see :func:`anchor_reg.evaluate.load_encoder`).
    prep : pathlib.Path
        Prepared folder with enrol.csv, test.csv, trials.txt and eval_{noise,music,babble,rir}.csv.
    corpus_of : dict
        Speaker id -> corpus name.

    Returns
    -------
    dict
        A results dict (``anchor_reg.results``) whose ``conditions`` are the pooled trials', plus
        ``corpora``: corpus -> condition -> {EER, minDCF, n_trials, n_target}.
    """
    noise_csvs = {kind: prep / f"eval_{kind}.csv" for kind in NOISE_TYPES}
    corruptor = Corruptor(noise_csvs, prep / "eval_rir.csv", seed)
    if hasattr(encoder, "eval"):
        encoder.eval()
    trial_set = TrialSet(encoder, enrol_csv=prep / "enrol.csv", test_csv=prep / "test.csv",
                         trials=prep / "trials.txt", corrupt="test", batch_size=batch_size, seed=seed)
    index = trial_set.index
    corpora = [corpus_of[speaker_of(enrol)] for _, enrol, _ in trial_set.trials]
    masks = {c: torch.tensor([x == c for x in corpora]) for c in sorted(set(corpora))}
    pooled, by_corpus = {}, {corpus: {} for corpus in masks}
    for condition in default_conditions(NOISE_TYPES, snrs, reverb=True):
        row, _, side = evaluate_condition(encoder, trial_set, condition, corruptor)
        pooled[condition.name] = row
        embeddings = trial_set.clean.clone()
        embeddings[index.side] = side
        scores = score_trials(trial_set.clean[index.enrol_rows], embeddings[index.test_rows])
        for corpus, mask in masks.items():
            target, nontarget = scores[mask & index.labels], scores[mask & ~index.labels]
            by_corpus[corpus][condition.name] = {
                "EER": 100 * eer(target, nontarget)[0], "minDCF": min_dcf(target, nontarget)[0],
                "n_trials": int(mask.sum()), "n_target": int((mask & index.labels).sum()),
            }
        logger.info("%s %s: EER %.2f%% (%s)", system_name, condition.name, row["EER"],
                    ", ".join(f"{c} {by_corpus[c][condition.name]['EER']:.2f}" for c in by_corpus))
    return {
        "system": system_name,
        "settings": {"prep": str(prep), "snrs": list(snrs), "corrupt": "test", "norm": None, "seed": seed,
                     "batch_size": batch_size, "n_utterances": len(index.ids)},
        "min_dcf_definition": MIN_DCF_NOTE,
        "conditions": pooled,
        "corpora": by_corpus,
    }


# ------------------------------------------------------------- training ----
class Runner:
    """Prepares the data, runs train.py subprocesses, exports and evaluates, and records the time of each step."""

    def __init__(self, args, shared):
        self.args = args
        self.shared = shared
        self.out = args.output_folder
        self.runs = self.out / "runs"
        self.timing_file = self.out / "timing.json"
        self.lock = threading.Lock()

    # ---- data
    def layout(self):
        """Splits the speakers, links the folders every training reads and writes the test trial lists.

        Every labelled folder holds its corpora's test speakers too: the preparation holds out the
        speakers of its trial list (``data/trials_<data set>.txt``), so they train nothing. Returns the
        split (also written to ``data/speakers.json``).
        """
        speech, data, limit = self.shared / "speech", self.out / "data", self.args.max_utterances
        speakers = {c: speakers_of(speech / c, self.args.max_speakers) for c in (*BROAD, ADAPTED)}
        split = split_speakers(speakers, self.args.test_speakers, self.args.small_size, self.args.data_seed)
        self.split, self.corpus_of = split, {spk: c for c, ids in speakers.items() for spk in ids}
        full = {c: link_speakers(speech / c, data / "all" / c, speakers[c], limit) for c in speakers}
        self.folders = {
            "eval": list(full.values()),
            "broad": [full[c] for c in BROAD],
            "replay": [link_speakers(speech / c, data / "replay" / c, split["broad"][c], limit) for c in BROAD],
        }
        for size, adapt in self.sizes().items():
            self.folders[f"adapt_{size}"] = [link_speakers(
                speech / ADAPTED, data / f"adapt_{size}" / ADAPTED, adapt + split["test"][ADAPTED], limit)]
            self.folders[f"unlabelled_{size}"] = [
                link_speakers(speech / ADAPTED, data / f"unlabelled_{size}", adapt, limit, flat=True)]
        # a label-free run's own trials (train.py requires them): the adapted corpus' test speakers
        self.folders["test_adapted"] = [link_speakers(speech / ADAPTED, data / "test" / ADAPTED, split["test"][ADAPTED], limit)]
        trials = test_trials(full, split["test"], self.args.test_seg_dur, self.args.data_seed)
        self.trial_lists = {}
        for name, corpora in (("eval", list(speakers)), ("broad", BROAD), ("adapt", (ADAPTED,))):
            self.trial_lists[name] = data / f"trials_{name}.txt"  # the same content is prepared once
            write_trials([t for c in corpora for t in trials[c]], self.trial_lists[name])
        write_text_atomic(data / "speakers.json", json.dumps(split, indent=2) + "\n")
        return split

    def sizes(self):
        """Adaptation set name -> its speakers (e.g. '14': all the adapted corpus' others, '5': the subsample)."""
        adapt = self.split["adapt"]
        return {str(len(speakers)): speakers for speakers in (adapt["full"], adapt["small"]) if speakers}

    def data_overrides(self, experiment, folders, trial_list):
        """train.py overrides (typed) of one prepared data set, ``runs/<experiment>/prepared``."""
        return {
            "dataset": "folder",
            "data_folders": [str(f) for f in folders],
            "trial_list": str(trial_list),  # its speakers are held out of training
            "noise_folders": {"noise": str(self.shared / "noise"), "music": str(self.shared / "music")},
            "rir_folder": str(self.shared / "rir"),
            "data_seed": self.args.data_seed,  # the same seed splits noise, music and rooms alike everywhere
            "output_base": str(self.runs),
            "experiment_name": experiment,
            "batch_size": self.args.batch_size,
            "evaluate_after_training": False,
            **self.args.overrides,
        }

    def experiments(self):
        """Prepared data set name -> (YAML, its overrides): eval, broad, adapt_<N> (and unlabelled_<N>)."""
        experiments = {
            "eval": ("stage1.yaml", self.data_overrides("eval", self.folders["eval"], self.trial_lists["eval"])),
            "broad": ("stage1.yaml", self.data_overrides("broad", self.folders["broad"], self.trial_lists["broad"])),
        }
        for size in self.sizes():
            name = f"adapt_{size}"
            overrides = self.data_overrides(name, self.folders[name], self.trial_lists["adapt"])
            experiments[name] = ("stage2.yaml", overrides)
            if any(SYSTEMS[s] and SYSTEMS[s][1].get("dataset") == "unlabelled" for s in self.systems_of(size)):
                name = f"unlabelled_{size}"
                overrides = self.data_overrides(name, self.folders[name], self.trial_lists["adapt"])
                del overrides["trial_list"]  # no speakers in this folder: nothing to hold out
                overrides["verification_folders"] = [str(f) for f in self.folders["test_adapted"]]
                # what a label-free data set implies (checked when its YAML loads, before the base exists)
                experiments[name] = ("stage2.yaml", {**overrides, **LABEL_FREE, "base_model": self.base_model()})
        return experiments

    def prepare(self):
        """Prepares every data set once, before any training (train.py then reuses them)."""
        for name, (yaml_name, overrides) in self.experiments().items():
            logger.info("preparing %s", name)
            start, cpu = time.time(), time.thread_time()
            hparams_file = REPO / "hparams" / yaml_name
            prepare_data(load_hparams(hparams_file, overrides_for(hparams_file, overrides)))
            self.record(f"prepare/{name}", time.time() - start, time.thread_time() - cpu)

    def prep(self, experiment):
        """The prepared folder of a data set."""
        return self.runs / experiment / "prepared"

    # ---- steps
    def record(self, step, wall, cpu):
        """Adds wall and CPU seconds to a step of timing.json."""
        with self.lock:
            timing = json.loads(self.timing_file.read_text()) if self.timing_file.is_file() else {}
            entry = timing.setdefault(step, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] = round(entry["wall_s"] + wall, 1)
            entry["cpu_s"] = round(entry["cpu_s"] + cpu, 1)
            write_text_atomic(self.timing_file, json.dumps(timing, indent=2) + "\n")

    def subprocess(self, command, label):
        """Runs ``command`` in the repository root, logged to logs/<label>.log; records its time."""
        log = self.out / "logs" / f"{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.args.threads:
            env["OMP_NUM_THREADS"] = str(self.args.threads)
        start = time.time()
        with open(log, "a", encoding="utf-8") as stream:
            stream.write("$ " + " ".join(command) + "\n")
            stream.flush()
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time
        self.record(label, time.time() - start, usage.ru_utime + usage.ru_stime)
        if os.waitstatus_to_exitcode(status) != 0:
            tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-20:])
            raise RuntimeError(f"{label} failed; end of {log}:\n{tail}")

    def train(self, yaml_name, label, options):
        """``python train.py hparams/<yaml_name> --key=value ...`` (resumes from its checkpoints)."""
        command = [sys.executable, "train.py", f"hparams/{yaml_name}", "--device=cpu", "--noprogressbar",
                   *(f"--{key}={cli_value(value)}" for key, value in options.items())]
        logger.info("training %s", label)
        self.subprocess(command, f"train-{label}")

    def results_folder(self, run, seed):
        """``<output_folder>/<run>/seed<S>``."""
        return self.out / run / f"seed{seed}"

    def done(self, run, seed):
        """True when the run's results.json for this seed exists."""
        return (self.results_folder(run, seed) / "results.json").is_file()

    def evaluate(self, run, seed, model):
        """Scores a model folder and writes ``<run>/seed<S>/results.json`` (+ results.md)."""
        start, cpu = time.time(), time.thread_time()
        if isinstance(model, str):  # a hub id
            from speechbrain.inference.speaker import EncoderClassifier

            encoder = EncoderClassifier.from_hparams(source=model, savedir=str(self.out / "base" / "pretrained"))
        else:
            encoder = load_encoder(model)
        results = evaluate_by_corpus(encoder, self.prep("eval"), self.corpus_of, batch_size=self.args.eval_batch_size,
                                     system_name=run)
        write_results(results, self.results_folder(run, seed))
        self.record(f"{run}/seed{seed}/evaluate", time.time() - start, time.thread_time() - cpu)
        return results

    def export_and_evaluate(self, run, seed, stage_folder, checkpoint=None):
        """Exports a stage (its best checkpoint, or ``checkpoint``) and scores the export.

        The first seed's export stays in ``<run>/export``; the others are removed after scoring.
        """
        if seed == self.args.seeds[0]:
            export = export_model(stage_folder, self.out / run / "export", checkpoint=checkpoint)
            return self.evaluate(run, seed, export)
        with tempfile.TemporaryDirectory(dir=self.out) as tmp:
            export = export_model(stage_folder, pathlib.Path(tmp) / "export", checkpoint=checkpoint)
            return self.evaluate(run, seed, export)

    def base_model(self):
        """What every stage 2 starts from: ``--base_model``, else the broad stage 1's export."""
        return self.args.base_model or str(self.out / "base" / "export")

    def base_step(self):
        """Trains stage 1 on the broad corpora (unless --base_model), exports it and scores it."""
        seed = self.args.base_seed
        if self.args.base_model is None:
            folder = self.runs / "broad" / "stage1"
            if not (self.out / "base" / "export" / "embedding_model.ckpt").is_file():
                _, data = self.experiments()["broad"]
                self.train("stage1.yaml", "base", {
                    **overrides_for(REPO / "hparams" / "stage1.yaml", data), "seed": seed,
                    "channels": self.args.channels, "number_of_epochs": self.args.stage1_epochs,
                    "early_stop_patience": self.args.stage1_patience, "output_folder": str(folder),
                })
                export_model(folder, self.out / "base" / "export")
        if not self.done("base", seed):
            base = self.args.base_model
            model = base if base and not pathlib.Path(base).is_dir() else pathlib.Path(self.base_model())
            self.evaluate("base", seed, model)

    def run_name(self, system, size):
        """``system`` on the full adaptation set, ``system_<N>spk`` on the small one."""
        return system if size == self.full_size else f"{system}_{size}spk"

    @property
    def full_size(self):
        return str(len(self.split["adapt"]["full"]))

    def systems_of(self, size):
        """The systems run on an adaptation set."""
        return self.args.systems if size == self.full_size else self.args.small_systems

    def stage_folder(self, system, size, seed):
        """``runs/adapt_<N>/<system>/seed<S>``: where a stage 2 trains."""
        return self.runs / f"adapt_{size}" / system / f"seed{seed}"

    def stage2_options(self, system, size, seed):
        """train.py overrides of one stage 2 (its system's, the data set's, and where it writes)."""
        yaml_name, overrides = SYSTEMS[system]
        experiments = self.experiments()
        experiment = f"unlabelled_{size}" if overrides.get("dataset") == "unlabelled" else f"adapt_{size}"
        _, data = experiments[experiment]
        fill = {REPLAY_FOLDERS: [str(f) for f in self.folders["replay"]]}
        options = {
            **overrides_for(REPO / "hparams" / yaml_name, data),
            "seed": seed, "base_model": self.base_model(),
            "number_of_epochs": self.args.stage2_epochs, "early_stop_patience": self.args.patience,
            "output_folder": str(self.stage_folder(system, size, seed)),
            # anchors of the same rows from the same base are shared (replay systems' also hold the replay rows)
            "anchors": str(self.runs / experiment / ("anchors_replay" if "replay_folders" in overrides
                                                     else "anchors") / "anchors.pt"),
            **{key: fill.get(value, value) if isinstance(value, str) else value for key, value in overrides.items()},
        }
        if system in {replay for replay, _ in EQUAL_ROWS.values()}:
            options["keep_checkpoints"] = self.args.stage2_epochs  # every epoch, for the equal-rows view
        return yaml_name, options

    def stage2_step(self, system, size, seed):
        """Trains one stage 2 (resuming) and scores its best checkpoint's export."""
        yaml_name, options = self.stage2_options(system, size, seed)
        run = self.run_name(system, size)
        self.train(yaml_name, f"{run}-seed{seed}", options)
        if not self.done(run, seed):
            self.export_and_evaluate(run, seed, self.stage_folder(system, size, seed))

    def wiseft_step(self, size, seed):
        """Exports ``WISEFT_OF`` as α·base + (1-α)·adapted and scores it.

        ``python -m anchor_reg.export <stage> <out> --wise_alpha=auto`` chooses α on the dev criterion.
        """
        run = self.run_name("wiseft", size)
        stage = self.stage_folder(WISEFT_OF, size, seed)
        keep = seed == self.args.seeds[0]
        with tempfile.TemporaryDirectory(dir=self.out) as tmp:
            export = self.out / run / "export" if keep else pathlib.Path(tmp) / "export"
            self.subprocess([sys.executable, "-m", "anchor_reg.export", str(stage), str(export),
                             f"--wise_alpha={WISE_ALPHA}"], f"export-{run}-seed{seed}")
            self.evaluate(run, seed, export)

    def equal_rows_checkpoint(self, view, size, seed):
        """(epoch, checkpoint folder) of the replay system at about the rows its control drew up to its best
        epoch (the nearest epoch, at most the last one kept)."""
        replay, control = EQUAL_ROWS[view]
        budget = self.rows_drawn(control, size, seed)["best"]
        checkpoints = {c.meta["epoch"]: c.path for c in Checkpointer(self.stage_folder(replay, size, seed) / "save")
                       .list_checkpoints() if end_of_epoch(c) and "epoch" in c.meta}
        wanted = min(max(1, round(budget / self.rows_per_epoch(replay, size))), max(checkpoints))
        epoch = max(e for e in checkpoints if e <= wanted)
        return epoch, checkpoints[epoch]

    def equal_rows_step(self, view, size, seed):
        """Scores the replay system's checkpoint at the rows its control had drawn at its best epoch."""
        epoch, checkpoint = self.equal_rows_checkpoint(view, size, seed)
        replay, control = EQUAL_ROWS[view]
        logger.info("seed %s: %s at epoch %d (%d rows drawn; %s: %d)", seed, replay, epoch,
                    epoch * self.rows_per_epoch(replay, size), control, self.rows_drawn(control, size, seed)["best"])
        self.export_and_evaluate(self.run_name(view, size), seed, self.stage_folder(replay, size, seed),
                                 checkpoint=checkpoint)

    # ---- rows drawn (replay adds rows to every step)
    def rows_per_epoch(self, system, size):
        """Rows drawn per epoch: steps (train rows // batch, the last partial batch dropped) x (batch + replay)."""
        _, options = self.stage2_options(system, size, self.args.seeds[0])
        experiment = options["experiment_name"]
        with open(self.prep(experiment) / "train.csv", encoding="utf-8") as f:
            rows = sum(1 for _ in f) - 1
        batch = int(options.get("batch_size", self.args.batch_size))
        return (rows // batch) * (batch + int(options.get("replay_rows", 0)))

    def rows_drawn(self, system, size, seed):
        """{"best": rows drawn up to the epoch used, "total": rows drawn in all epochs trained}."""
        save = self.stage_folder(system, size, seed) / "save"
        epochs = [c.meta["epoch"] for c in Checkpointer(save).list_checkpoints()
                  if end_of_epoch(c) and "epoch" in c.meta]
        best = best_checkpoint(save)
        per_epoch = self.rows_per_epoch(system, size)
        return {"best": per_epoch * (best.meta["epoch"] if best else max(epochs, default=0)),
                "total": per_epoch * max(epochs, default=0)}

    # ---- plan
    def plan(self):
        """Ordered steps ``(name, callable, names it waits for)``: the base, then seed by seed, size by size.

        The first stage 2 of each anchors folder extracts the anchors; the others that read them wait for it.
        """
        steps, extracts = [], {}  # anchors file -> the step that writes it
        exported = (self.out / "base" / "export" / "embedding_model.ckpt").is_file()
        base_missing = self.args.base_model is None and not exported
        if base_missing or ("base" in self.args.systems and not self.done("base", self.args.base_seed)):
            steps.append(("base", self.base_step, ()))
        for seed in self.args.seeds:
            for size in self.sizes():
                for system in self.systems_of(size):
                    run = self.run_name(system, size)
                    if system == "base" or self.done(run, seed):
                        continue
                    name = f"{run}/seed{seed}"
                    if system == "wiseft":
                        after = (f"{self.run_name(WISEFT_OF, size)}/seed{seed}",)
                        steps.append((name, lambda s=size, d=seed: self.wiseft_step(s, d), after))
                    elif system in EQUAL_ROWS:
                        after = tuple(f"{self.run_name(s, size)}/seed{seed}" for s in EQUAL_ROWS[system])
                        steps.append((name, lambda v=system, s=size, d=seed: self.equal_rows_step(v, s, d), after))
                    else:
                        _, options = self.stage2_options(system, size, seed)
                        anchors = pathlib.Path(options["anchors"])
                        after = ("base",) if anchors.is_file() else ("base", extracts.setdefault(anchors, name))
                        steps.append((name, lambda y=system, s=size, d=seed: self.stage2_step(y, s, d),
                                      tuple(a for a in after if a != name)))
        return steps

    def run_steps(self, steps, on_finished=None):
        """Runs ``steps`` ``--jobs`` at a time, the earliest ready step first; a step waits for the steps it
        names that are in ``steps`` (the others are done)."""
        names = {name for name, _, _ in steps}
        pending = list(steps)
        finished, failed = set(), {}
        with ThreadPoolExecutor(max_workers=max(1, self.args.jobs)) as pool:
            running = {}
            while pending or running:
                for step in list(pending):
                    name, run, after = step
                    if any(a in failed for a in after):  # it needs a step that failed
                        pending.remove(step)
                        failed[name] = f"not run: it needs {', '.join(a for a in after if a in failed)}"
                    elif len(running) < max(1, self.args.jobs) and all(a in finished or a not in names for a in after):
                        pending.remove(step)
                        running[pool.submit(run)] = name
                if not running:
                    if pending:
                        raise RuntimeError(f"steps waiting for steps that cannot run: {[s[0] for s in pending]}")
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    try:
                        future.result()
                    except Exception as err:  # one failed run does not stop the runs that do not need it
                        logger.error("%s failed: %s", name, err)
                        failed[name] = str(err).splitlines()[0]
                        continue
                    finished.add(name)
                    if on_finished:
                        on_finished(name)
        if failed:
            listed = "; ".join(f"{name}: {why}" for name, why in failed.items())
            raise RuntimeError(f"{len(failed)} step(s) did not finish ({listed}); the others did and are kept: "
                               "fix the cause and run the same command to finish them")

    # ---- reports
    def collect(self):
        """Run -> {"system", "speakers", "seeds": {seed: stats}} for every run with results (see run_stats)."""
        collected = {}
        base_seed = self.args.base_seed
        if self.done("base", base_seed):
            results = json.loads((self.results_folder("base", base_seed) / "results.json").read_text())
            collected["base"] = {"system": "base", "speakers": 0, "seeds": {base_seed: run_stats(results)}}
        for size in self.sizes():
            for system in self.systems_of(size):
                run = self.run_name(system, size)
                seeds = {}
                for seed in self.args.seeds:
                    if system == "base" or not self.done(run, seed):
                        continue
                    seeds[seed] = run_stats(json.loads((self.results_folder(run, seed) / "results.json").read_text()))
                    if system in EQUAL_ROWS:
                        epoch, _ = self.equal_rows_checkpoint(system, size, seed)
                        seeds[seed]["rows"] = epoch * self.rows_per_epoch(EQUAL_ROWS[system][0], size)
                    else:
                        trained = WISEFT_OF if system == "wiseft" else system
                        seeds[seed]["rows"] = self.rows_drawn(trained, size, seed)["best"]
                if seeds:
                    collected[run] = {"system": system, "speakers": int(size), "seeds": seeds}
        return collected

    def write_reports(self):
        """summary.md, per_corpus.md, paired.md and frontier.png over the results so far."""
        collected = self.collect()
        if "base" not in collected:
            return None
        write_text_atomic(self.out / "summary.md", summary_table(collected))
        write_text_atomic(self.out / "per_corpus.md", per_corpus_table(collected))
        write_text_atomic(self.out / "paired.md", paired_table(collected, self.run_name, self.sizes()))
        plot_frontier(collected, self.out / "frontier.png")
        return collected


# -------------------------------------------------------------- reports ----
def corrupted_mean(conditions):
    """Mean EER (%) over every condition but ``clean`` (noise, music, babble x SNRs, reverb)."""
    values = [c["EER"] for name, c in conditions.items() if name != "clean"]
    return sum(values) / len(values)


def run_stats(results):
    """{"clean", "corrupted", "corpora": {corpus: {"clean", "corrupted"}}} of one results dict (EER, %)."""
    stats = {"clean": results["conditions"]["clean"]["EER"], "corrupted": corrupted_mean(results["conditions"])}
    stats["corpora"] = {corpus: {"clean": conditions["clean"]["EER"], "corrupted": corrupted_mean(conditions)}
                        for corpus, conditions in results.get("corpora", {}).items()}
    return stats


def across_seeds(seeds, value):
    """(mean, sd) of ``value(stats)`` over the seeds' stats."""
    return mean_and_sd([value(stats) for stats in seeds.values()])


def meets_rule(clean, corrupted, base_clean, base_corrupted):
    """The pre-registered rule: clean EER <= base + 0.5 and corrupted mean <= 0.75 x the base's."""
    return clean <= base_clean + RULE_CLEAN_MARGIN and corrupted <= RULE_CORRUPTED_RATIO * base_corrupted


def cell(mean, sd, n):
    """``mean ± sd`` (two decimals), just ``mean`` for one value, – when missing."""
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {sd:.2f}" if n > 1 else f"{mean:.2f}"


def summary_table(collected):
    """Markdown: pooled clean / corrupted EER (mean ± sd over seeds), rows drawn and the rule, per run."""
    base = collected["base"]["seeds"]
    base_clean, _ = across_seeds(base, lambda s: s["clean"])
    base_corrupted, _ = across_seeds(base, lambda s: s["corrupted"])
    lines = ["| Run | system | adaptation speakers | seeds | Clean EER (%) | Corrupted mean EER (%) | "
             "corrupted / base | rows drawn (k) | meets the rule |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for run, entry in collected.items():
        seeds = entry["seeds"]
        clean, clean_sd = across_seeds(seeds, lambda s: s["clean"])
        corrupted, corrupted_sd = across_seeds(seeds, lambda s: s["corrupted"])
        rows, _ = mean_and_sd([s.get("rows") for s in seeds.values()])
        meets = meets_rule(clean, corrupted, base_clean, base_corrupted)
        verdict = "–" if run == "base" else "yes" if meets else "no"
        lines.append(f"| {run} | {entry['system']} | {entry['speakers'] or '–'} | {len(seeds)} | "
                     f"{cell(clean, clean_sd, len(seeds))} | {cell(corrupted, corrupted_sd, len(seeds))} | "
                     f"{corrupted / base_corrupted:.2f} | {'–' if rows is None else f'{rows / 1000:.1f}'} | "
                     f"{verdict} |")
    return "\n".join(lines) + (
        f"\n\nPooled trials of every corpus' test speakers. Mean ± sample sd over the stage-2 seeds (one base). "
        f"Corrupted: noise, music and babble x 0-20 dB and reverb, evaluation noises and rooms only. "
        f"The rule \"adaptation without forgetting\": clean <= base + {RULE_CLEAN_MARGIN} "
        f"({base_clean + RULE_CLEAN_MARGIN:.2f}) and corrupted <= {RULE_CORRUPTED_RATIO} x base "
        f"({RULE_CORRUPTED_RATIO * base_corrupted:.2f}), on the means. Rows drawn: training rows drawn up to the "
        "epoch used (replay rows included; each appears clean and noisy), mean over seeds.\n"
    )


def per_corpus_table(collected):
    """Markdown: clean / corrupted EER per corpus and pooled, mean ± sd over seeds, per run."""
    corpora = sorted({c for entry in collected.values() for s in entry["seeds"].values() for c in s["corpora"]})
    header = " | ".join(f"{c} clean | {c} corrupted" for c in corpora)
    lines = [f"| Run | seeds | {header} | pooled clean | pooled corrupted |",
             "|---|---:|" + "---:|" * (2 * len(corpora) + 2)]
    for run, entry in collected.items():
        seeds, n = entry["seeds"], len(entry["seeds"])
        cells = []
        for corpus in corpora:
            for key in ("clean", "corrupted"):
                cells.append(cell(*mean_and_sd([s["corpora"].get(corpus, {}).get(key) for s in seeds.values()]), n))
        for key in ("clean", "corrupted"):
            cells.append(cell(*across_seeds(seeds, lambda s, k=key: s[k]), n))
        lines.append(f"| {run} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nEER (%) on each corpus' test speakers (trials within the corpus), "
                               "mean ± sd over seeds.\n")


def paired_differences(collected, system, control, key):
    """Per-seed differences ``system - control`` of a pooled stat, over the seeds both have (dict seed -> diff)."""
    a, b = collected[system]["seeds"], collected[control]["seeds"]
    return {seed: a[seed][key] - b[seed][key] for seed in sorted(set(a) & set(b))}


def paired_table(collected, run_name, sizes):
    """Markdown: each anchored system or control vs its counterpart, paired per seed (same base, same seed)."""
    lines = ["| Comparison | adaptation speakers | seeds | Δ clean EER | Δ corrupted mean EER | "
             "per seed (clean / corrupted) |",
             "|---|---:|---:|---:|---:|---|"]
    for size in sizes:
        for system, control in PAIRS:
            a, b = run_name(system, size), run_name(control, size)
            if a not in collected or b not in collected:
                continue
            clean = paired_differences(collected, a, b, "clean")
            corrupted = paired_differences(collected, a, b, "corrupted")
            if not clean:
                continue
            per_seed = ", ".join(f"{seed}: {clean[seed]:+.2f} / {corrupted[seed]:+.2f}" for seed in clean)
            lines.append(f"| {system} − {control} | {size} | {len(clean)} | "
                         f"{cell(*mean_and_sd(list(clean.values())), len(clean))} | "
                         f"{cell(*mean_and_sd(list(corrupted.values())), len(clean))} | {per_seed} |")
    return "\n".join(lines) + ("\n\nPooled EER (%) differences, system − control on the same seed from the same "
                               "base; negative is better. Mean ± sample sd over seeds.\n")


def plot_frontier(collected, path):
    """frontier.png: clean EER (x) vs corrupted mean EER (y), one panel per adaptation size, one point per system
    with seed sd bars; the base marked, and the rule's limits (clean <= base + 0.5, corrupted <= 0.75 x base)
    drawn, the corner that meets the rule shaded."""
    import matplotlib.pyplot as plt

    sizes = sorted({entry["speakers"] for entry in collected.values() if entry["speakers"]}, reverse=True)
    figure, axes = plt.subplots(1, max(len(sizes), 1), figsize=(6 * max(len(sizes), 1), 5.5), sharey=True,
                                squeeze=False)
    systems = list(dict.fromkeys(entry["system"] for entry in collected.values() if entry["system"] != "base"))
    colours = {system: plt.cm.tab20(k % 20) for k, system in enumerate(systems)}
    base = collected.get("base")
    seeds = [stats for entry in collected.values() for stats in entry["seeds"].values()]
    cleans, corrupted = [s["clean"] for s in seeds], [s["corrupted"] for s in seeds]
    if base:  # the rule's corrupted limit stays in view
        corrupted.append(RULE_CORRUPTED_RATIO * across_seeds(base["seeds"], lambda s: s["corrupted"])[0])
    for axis, size in zip(axes[0], sizes):
        if base:
            (x, _), (y, _) = (across_seeds(base["seeds"], lambda s, k=k: s[k]) for k in ("clean", "corrupted"))
            axis.plot(x, y, marker="*", markersize=16, color="black", linestyle="none", label="base")
            axis.axvline(x + RULE_CLEAN_MARGIN, color="grey", linestyle=":", linewidth=1)
            axis.axhline(RULE_CORRUPTED_RATIO * y, color="grey", linestyle=":", linewidth=1)
            axis.fill_between([0, x + RULE_CLEAN_MARGIN], 0, RULE_CORRUPTED_RATIO * y, color="green", alpha=0.08,
                              label="meets the rule")
        for entry in (e for e in collected.values() if e["speakers"] == size):
            (x, x_sd), (y, y_sd) = (across_seeds(entry["seeds"], lambda s, k=k: s[k]) for k in ("clean", "corrupted"))
            axis.errorbar(x, y, xerr=x_sd, yerr=y_sd, marker="o", color=colours[entry["system"]], capsize=3,
                          linestyle="none", label=f"{entry['system']} (n={len(entry['seeds'])})")
        axis.set_title(f"{size} adaptation speakers")
        axis.set_xlabel("clean EER (%)")
        axis.grid(alpha=0.3)
        if cleans:
            axis.set_xlim(0.9 * min(cleans), 1.1 * max(cleans))
            axis.set_ylim(0.95 * min(corrupted), 1.12 * max(corrupted))
    axes[0][0].set_ylabel("corrupted mean EER (%)")
    legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(legend.values(), legend.keys(), loc="center right", fontsize="small")
    figure.suptitle("Adaptation without forgetting: the trade-off (mean ± sd over seeds)")
    figure.tight_layout(rect=(0, 0, 0.8, 1))
    return save_figure(figure, path)


def main(argv=None):
    """Runs the recipe; returns the Runner (None when the default shared data is absent)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    shared = args.shared_data or DEFAULT_SHARED_DATA
    if not (shared / "speech").is_dir():
        message = f"adaptation recipe: no shared data at {shared} (expected {shared}/speech/)"
        if args.shared_data is not None:
            sys.exit(f"error: {message}")
        print(f"{message}; skipping. Pass --shared_data=PATH to run it.")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    args.output_folder = args.output_folder.resolve()
    args.output_folder.mkdir(parents=True, exist_ok=True)
    runner = Runner(args, shared.resolve())
    start, cpu = time.time(), time.process_time()
    try:
        runner.layout()
    except ValueError as err:
        sys.exit(f"error: {err}")
    runner.prepare()
    runner.run_steps(runner.plan(), on_finished=lambda name: runner.write_reports())
    if runner.write_reports() is not None:
        print((args.output_folder / "summary.md").read_text(encoding="utf-8"))
        print((args.output_folder / "paired.md").read_text(encoding="utf-8"))
    runner.record("total", time.time() - start, time.process_time() - cpu)
    return runner


if __name__ == "__main__":
    main()
