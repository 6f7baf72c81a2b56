#!/usr/bin/env python3
"""The real-speech experiment: stage-wise training with fixed anchors vs. joint training, at convergence.

Data: ``../shared/data`` (LibriSpeech, DSP and ASC speakers; real noise, music
and RIRs). Every corpus holds speakers out of training for verification (trials
stay within a corpus); evaluation noises, music, RIRs and babble talkers are
disjoint from the training ones (see ``anchor_reg.data.prepare``).

Every system is trained until its development criterion stops improving
(``early_stop_patience`` epochs without a lower dev ErrorRate, up to an epoch
limit) and is used at its best epoch. The criterion is the classification error
on the dev rows (training speakers' held-out rows; no test speaker) scored clean
and with one fixed noisy copy each (training noises; ``anchor_reg.data.dev_copies``).
For each seed::

    base                 stage 1 (multi-condition: clean + noise, babble, reverb), to convergence
    stage2_contrastive   base -> fixed anchors -> noisy fine-tuning, AAM (margin 0.5) + the contrastive
                         anchor objective (InfoNCE vs other speakers' anchors): stage2.yaml's default
    stage2_lambda0       the same fine-tuning with λ = 0 (the control that isolates the anchors)
    stage2_pull          the plain pull, AAM + λ·(1 - cos(emb, anchor)); only with --systems ... stage2_pull
    joint                from scratch, clean + noisy copies + consistency term, to convergence
    joint_equal_updates  joint's checkpoint after as many updates as base + stage2_contrastive made

Each training is a ``python -m anchor_reg.pipeline hparams/<stage>.yaml ...`` subprocess (the steps
that lead to that stage: preparation, anchors, the stage; log in ``<output_folder>/logs/``); each
system is exported and evaluated on the full grid (clean; noise, music and babble at 0-20 dB; reverb),
as one more :class:`anchor_reg.pipeline.Step`. Outputs in ``<output_folder>``::

    <system>/export/           the first seed's model (SpeechBrain inference folder)
    <system>/seed<S>/          results.json, results.md and plots of seed S; step.json
    comparison.md, eer_by_condition.md, summary.md, eer_vs_snr.png, dev_curves.png
    variants/seeds_<S..>/      the same for --variant runs on those seeds
    logs/, runs/               pipeline logs and training folders
    timing.json                wall and CPU seconds per step

Usage, from the repository root after ``pip install -e .`` (see recipes/RealSpeech/README.md for the
measured results)::

    python recipes/RealSpeech/run_experiment.py --threads 1 --jobs 2

Every skip and reuse is the pipeline's: re-running a command skips every step
whose ``step.json`` matches its inputs, an interrupted training resumes from its
last checkpoint, and a finished training asked for other settings stops the run
with one ``error:`` line.
"""
import argparse
import collections
import fcntl
import functools
import heapq
import itertools
import json
import logging
import os
import pathlib
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from speechbrain.utils.checkpoints import Checkpointer  # noqa: E402

from anchor_reg.anchors import checkpoint_fingerprint  # noqa: E402
from anchor_reg.atomic import write_text_atomic as write_text  # noqa: E402
from anchor_reg.config import keys_of, overrides_for  # noqa: E402
from anchor_reg.corruption import default_conditions  # noqa: E402
from anchor_reg.checkpointer import best_checkpoint, end_of_epoch  # noqa: E402
from anchor_reg.compare import compare_systems  # noqa: E402
from anchor_reg.evaluate import evaluate_model, load_encoder  # noqa: E402
from anchor_reg.export import export_model  # noqa: E402
from anchor_reg.metrics import mean_and_sd  # noqa: E402
from anchor_reg.pipeline import Step  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]

logger = logging.getLogger("realspeech")

DEFAULT_SHARED_DATA = pathlib.Path(os.environ.get("ANCHOR_REG_SHARED_DATA", REPO.parent / "shared" / "data"))
CORPORA = ("librispeech-train", "dsp", "asc")
NOISE_TYPES = ("noise", "music", "babble")
SNRS = (0, 5, 10, 15, 20)
EXPERIMENT = "realspeech"
YAMLS = ("stage1.yaml", "stage2.yaml", "joint.yaml")
MAIN_SYSTEMS = ("base", "stage2_pull", "stage2_contrastive", "stage2_lambda0", "joint", "joint_equal_updates")
DEFAULT_SYSTEMS = tuple(name for name in MAIN_SYSTEMS if name != "stage2_pull")  # the pull lost on 3 seeds
# Stage-2 variants: name -> stage2.yaml overrides. The contrastive settings are the lead from a rough
# one-seed check outside the project (InfoNCE vs batch + 512 other-speaker anchors, s=20, m=0.1, λ=1).
CONTRASTIVE = {"anchor_objective": "contrastive", "contrastive_scale": 20.0, "contrastive_margin": 0.1,
               "contrastive_negatives": 512}
STAGE2_VARIANTS = {
    "stage2_pull": {"anchor_objective": "pull"},
    "stage2_contrastive": CONTRASTIVE,
    "stage2_lambda0": {"anchor_objective": "pull", "anchor_weight": 0.0},
}
EQUAL_UPDATES_OF = "stage2_contrastive"  # joint_equal_updates matches base + this system's updates
# A variant's ``base.KEY=VALUE`` pairs train its own base (stage1.yaml with KEY=VALUE) and anchors, in
# ``<seed>/stage1_<pairs>`` and ``<seed>/anchors_<pairs>``, e.g. base.stage1_noise=True.
BASE_PREFIX = "base."
OWN_BASE_SYSTEM = "base_"  # a variant's own base is evaluated as the system base_<pairs>


def parse_args(argv=None):
    """Command-line options; ``extra_variants`` collects --variant (name -> overrides)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared_data", type=pathlib.Path, default=None,
                        help=f"the shared data folder (default: {DEFAULT_SHARED_DATA})")
    parser.add_argument("--output_folder", type=pathlib.Path, default=REPO / "results" / "realspeech")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--systems", nargs="+", choices=MAIN_SYSTEMS, default=list(DEFAULT_SYSTEMS))
    parser.add_argument("--channels", type=int, default=128, help="ECAPA-TDNN width C")
    parser.add_argument("--stage1_epochs", type=int, default=20, help="epoch limit of the base")
    parser.add_argument("--stage2_epochs", type=int, default=8, help="epoch limit of each stage 2")
    parser.add_argument("--joint_epochs", type=int, default=28, help="epoch limit of joint training")
    parser.add_argument("--patience", type=int, default=4,
                        help="early_stop_patience: epochs without a lower dev ErrorRate before a run stops")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings run at once (each seed's base chain and joint are independent)")
    parser.add_argument("--verification_speakers", type=float, default=0.2,
                        help="fraction of each corpus' speakers held out for verification")
    parser.add_argument("--test_seg_dur", type=float, default=4.0,
                        help="verification utterances are cut into segments of this length (s)")
    parser.add_argument("--max_speakers", type=int, default=None,
                        help="use only the first N speakers of each corpus (quick runs)")
    parser.add_argument("--max_utterances", type=int, default=None,
                        help="use only the first N utterances of each speaker (quick runs)")
    parser.add_argument("--variant", action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                        help="also run a stage-2 variant with these stage2.yaml overrides (repeatable); "
                             "base.KEY=VALUE pairs give it its own base (stage1.yaml overrides)")
    parser.add_argument("--variant_seeds", type=int, nargs="+", default=None,
                        help="seeds of the --variant runs (default: the first seed)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every training, e.g. batch_size=16 (repeatable)")
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of training and evaluation (default: torch's; 1 is faster "
                             "on a machine whose cores are busy with other work)")
    args = parser.parse_args(argv)
    args.variants = {name: overrides for name, overrides in STAGE2_VARIANTS.items() if name in args.systems}
    extra = {}
    stage2_keys = keys_of(REPO / "hparams" / "stage2.yaml")
    stage1_keys = {BASE_PREFIX + key for key in keys_of(REPO / "hparams" / "stage1.yaml")}
    for spec in args.variant:
        name, *pairs = spec.split()
        extra[name] = parse_pairs(pairs, parser)
        unknown = sorted(set(extra[name]) - stage2_keys - stage1_keys)
        if unknown:
            parser.error(f"--variant {name}: {unknown} are not keys of hparams/stage2.yaml "
                         f"(or {BASE_PREFIX}KEY of hparams/stage1.yaml)")
    clash = set(extra) & set(MAIN_SYSTEMS)
    if clash:
        parser.error(f"--variant names {sorted(clash)} are taken by the main systems")
    args.extra_variants = extra
    args.variant_seeds = args.variant_seeds or args.seeds[:1]
    args.overrides = parse_pairs(args.override, parser)
    known = set().union(*(keys_of(REPO / "hparams" / name) for name in YAMLS))
    unknown = sorted(set(args.overrides) - known)
    if unknown:
        parser.error(f"--override: {unknown} are keys of none of {', '.join(YAMLS)}")
    return args


def parse_pairs(pairs, parser):
    """``["key=value", ...]`` -> ``{key: value}`` (values stay strings for the command line)."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"expected KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


# ---------------------------------------------------------------- data ----
def corpus_folders(shared, out, max_speakers, max_utterances):
    """The three corpus folders, or a symlinked subset of them under ``out/subset``."""
    folders = [shared / "speech" / name for name in CORPORA]
    if max_speakers is None and max_utterances is None:
        return folders
    subset = []
    for folder in folders:
        target = out / "subset" / folder.name
        speakers = sorted(p for p in folder.iterdir() if p.is_dir())[:max_speakers]
        for speaker in speakers:
            for session in sorted(p for p in speaker.iterdir() if p.is_dir()):
                utterances = sorted(p for p in session.iterdir() if p.suffix in (".wav", ".flac"))
                for utt in utterances[:max_utterances]:
                    link = target / speaker.name / session.name / utt.name
                    if not link.is_symlink():
                        link.parent.mkdir(parents=True, exist_ok=True)
                        link.symlink_to(utt)
        subset.append(target)
    return subset


def common_overrides(args, shared, folders):
    """Overrides for every training (each gets those its YAML defines)."""
    overrides = {
        "dataset": "folder",
        "data_folders": json.dumps([str(f) for f in folders]),
        "noise_folders": json.dumps({"noise": str(shared / "noise"), "music": str(shared / "music")}),
        "rir_folder": str(shared / "rir"),
        "verification_speakers": args.verification_speakers,
        "test_seg_dur": args.test_seg_dur,
        "output_base": str(args.output_folder / "runs"),
        "experiment_name": EXPERIMENT,
        "channels": args.channels,
        "evaluate_after_training": False,
        "early_stop_patience": args.patience,
    }
    overrides.update(args.overrides)
    return overrides


# ------------------------------------------------------------- training ----
class Runner:
    """Runs pipeline subprocesses and evaluation steps, recording wall and CPU times."""

    def __init__(self, args, overrides):
        self.args = args
        self.out = args.output_folder
        self.overrides = overrides
        self.runs = self.out / "runs" / EXPERIMENT
        self.prep = self.runs / "prepared"
        self.timing_file = self.out / "timing.json"
        self.timing = json.loads(self.timing_file.read_text()) if self.timing_file.is_file() else {}
        self.timing_lock = threading.Lock()
        self.eval_lock = threading.Lock()  # evaluations (matplotlib is not thread-safe) run one at a time

    def record(self, step, wall, cpu):
        """Adds wall and CPU seconds (CPU: all processes, summed over cores) to a step of timing.json."""
        with self.timing_lock, open(self.timing_file.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run_experiment.py on this folder may record too
            if self.timing_file.is_file():
                self.timing = json.loads(self.timing_file.read_text())
            entry = self.timing.setdefault(step, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] = round(entry["wall_s"] + wall, 1)
            entry["cpu_s"] = round(entry["cpu_s"] + cpu, 1)
            write_text(self.timing_file, json.dumps(self.timing, indent=2) + "\n")

    def train(self, yaml_name, seed, label, **overrides):
        """``python -m anchor_reg.pipeline hparams/<yaml_name> --seed=S ...``, logged to logs/<seed>-<label>.log.

        The pipeline skips each step already done with these inputs; a finished training asked for other
        settings stops the run with the pipeline's ``error:`` line.
        """
        options = {**overrides_for(REPO / "hparams" / yaml_name, self.overrides), "seed": seed, **overrides}
        command = [sys.executable, "-m", "anchor_reg.pipeline", f"hparams/{yaml_name}", "--device=cpu",
                   "--noprogressbar", *(f"--{key}={value}" for key, value in options.items())]
        log = self.out / "logs" / f"{seed}-{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        logger.info("seed %s: training %s (log: %s)", seed, label, log)
        start = time.time()
        env = dict(os.environ)
        if self.args.threads:
            env["OMP_NUM_THREADS"] = str(self.args.threads)
        with open(log, "a", encoding="utf-8") as stream:
            stream.write("$ " + " ".join(command) + "\n")
            stream.flush()
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time (threads run others)
            process.returncode = os.waitstatus_to_exitcode(status)
        self.record(f"{seed}/train/{label}", time.time() - start, usage.ru_utime + usage.ru_stime)
        if process.returncode != 0:
            lines = log.read_text(encoding="utf-8").splitlines()
            lines = lines[max(n for n, line in enumerate(lines) if line.startswith("$ ")):]  # this run's
            error = next((line for line in reversed(lines) if line.startswith("error: ")), None)
            if error:
                raise SystemExit(f"{error} [{label}, seed {seed}; log: {log}]")
            tail = "\n".join(lines[-20:])
            raise RuntimeError(f"training {label} (seed {seed}) failed; end of {log}:\n{tail}")

    def results_folder(self, system, seed):
        """``<output_folder>/<system>/seed<S>``."""
        return self.out / system / f"seed{seed}"

    def evaluate(self, system, seed, stage_folder, checkpoint=None):
        """Exports a stage (its best checkpoint, or ``checkpoint``) and evaluates the export on the full grid:
        a pipeline step, skipped while that checkpoint's results are there.

        The first seed's export stays in ``<system>/export`` (its model card shows the grid).
        """
        checkpoint = pathlib.Path(checkpoint or best_checkpoint(pathlib.Path(stage_folder) / "save").path)
        first = seed == self.args.seeds[0]

        def grid(export):
            return evaluate_model(
                load_encoder(export),
                enrol_csv=self.prep / "enrol.csv",
                test_csv=self.prep / "test.csv",
                trials=self.prep / "trials.txt",
                noise_csvs={kind: self.prep / f"eval_{kind}.csv" for kind in NOISE_TYPES},
                rir_csv=self.prep / "eval_rir.csv",
                snrs=SNRS,
                batch_size=self.args.eval_batch_size,
                output_folder=self.results_folder(system, seed),
                system_name=system,
            )

        def export_and_grid():
            start, cpu = time.time(), time.process_time()
            if first:
                export_model(stage_folder, self.out / system / "export", checkpoint=checkpoint, evaluate=grid,
                             allow_unfinished=True)  # an equal-updates view stops mid-training; its card says so
            else:
                with tempfile.TemporaryDirectory(dir=self.out) as tmp:
                    grid(export_model(stage_folder, pathlib.Path(tmp) / "export", checkpoint=checkpoint,
                                      allow_unfinished=True))
            self.record(f"{seed}/evaluate/{system}", time.time() - start, time.process_time() - cpu)

        folder = self.results_folder(system, seed)
        outputs = [folder / "results.json", *([self.out / system / "export" / "hyperparams.yaml"] if first else [])]
        with self.eval_lock:
            Step(5, f"evaluate {system}", folder, {"checkpoint": checkpoint_fingerprint(checkpoint),
                                                  "grid": {"noise_types": NOISE_TYPES, "snrs": SNRS}},
                 outputs, export_and_grid)()

    def results_file(self, system, seed):
        """``<output_folder>/<system>/seed<S>/results.json``."""
        return self.results_folder(system, seed) / "results.json"

    def stage1_options(self, root, overrides):
        """stage1.yaml overrides of a variant's base: the seed's, or its own in ``<seed>/stage1_<slug>``."""
        stage1 = {"number_of_epochs": self.args.stage1_epochs, "early_stop_patience": self.args.patience}
        base = own_base_overrides(overrides)
        if base:
            stage1.update(base, output_folder=str(root / f"stage1_{own_base_slug(base)}"))
        return stage1

    def stage2_options(self, root, name, overrides):
        """stage2.yaml overrides of a variant: its base and anchors by path (the seed's, or its own)."""
        stage1 = self.stage1_options(root, overrides)
        options = {"number_of_epochs": self.args.stage2_epochs, "output_folder": str(stage2_folder(root, name)),
                   "base_model": str(root / "stage1")}
        if "output_folder" in stage1:
            slug = own_base_slug(own_base_overrides(overrides))
            options.update(base_model=stage1["output_folder"], anchors=str(root / f"anchors_{slug}" / "anchors.pt"))
        options.update({key: value for key, value in overrides.items() if not key.startswith(BASE_PREFIX)})
        return options  # a variant may change number_of_epochs

    def base(self, seed, with_base):
        """The seed's base (stage 1), trained and, with ``with_base``, evaluated."""
        self.train("stage1.yaml", seed, "base", number_of_epochs=self.args.stage1_epochs)
        if with_base:
            self.evaluate("base", seed, self.runs / str(seed) / "stage1")

    def own_base(self, seed, overrides):
        """A variant's own base (stage1.yaml with its ``base.KEY=VALUE`` pairs), trained and evaluated; the
        variants that share it start once it has finished."""
        stage1 = self.stage1_options(self.runs / str(seed), overrides)
        system = own_base_system(overrides)
        self.train("stage1.yaml", seed, system, **stage1)
        self.evaluate(system, seed, pathlib.Path(stage1["output_folder"]))

    def stage2(self, seed, name, overrides):
        """One stage-2 variant of a seed whose base (the seed's or the variant's own) has finished."""
        root = self.runs / str(seed)
        self.train("stage2.yaml", seed, name, **self.stage2_options(root, name, overrides))
        self.evaluate(name, seed, stage2_folder(root, name))

    def joint_chain(self, seed):
        """The seed's joint model from scratch (every epoch's checkpoint kept for the equal-updates view)."""
        self.train("joint.yaml", seed, "joint", number_of_epochs=self.args.joint_epochs,
                   keep_checkpoints=self.args.joint_epochs)
        self.evaluate("joint", seed, self.runs / str(seed) / "joint")

    def equal_updates(self, seed):
        """Evaluates joint after as many epochs (= updates) as base + ``EQUAL_UPDATES_OF`` ran."""
        root = self.runs / str(seed)
        budget = len(dev_curve(root / "stage1")) + len(dev_curve(stage2_folder(root, EQUAL_UPDATES_OF)))
        joint = root / "joint"
        checkpoints = {c.meta["epoch"]: c.path for c in Checkpointer(joint / "save").list_checkpoints()
                       if "epoch" in c.meta and end_of_epoch(c)}
        epoch = min(budget, max(checkpoints))
        logger.info("seed %s: joint at %d epochs = base + %s (%d epochs)", seed, epoch, EQUAL_UPDATES_OF, budget)
        self.evaluate("joint_equal_updates", seed, joint, checkpoint=checkpoints[epoch])

    def run_seed_chains(self, plan, systems):
        """Runs ``plan`` (seed -> {stage-2 variant: overrides}), ``--jobs`` steps at a time. Of the steps ready
        to start, the lowest seed's goes first (within a seed: its bases, its joint, each stage 2 once its base
        is done, then its equal-updates view), so seeds finish one after the other; as each seed of the main
        run finishes, the tables are written over the finished seeds, so an interrupted run leaves whole
        seeds and their tables. Every step is started; each skips what it finds done."""
        with_base = "base" in systems
        ready, order = [], itertools.count()  # heap of (seed, rank, order, step, stage-2 variants it starts)
        outstanding = collections.Counter()  # seed -> its steps ready or running
        finished_seeds, equal_queued = [], set()

        def push(seed, rank, step, followers=None):
            outstanding[seed] += 1
            heapq.heappush(ready, (seed, rank, next(order), step, followers or {}))

        def after_last_step(seed):
            """The equal-updates view once the seed's trainings are done; then the tables."""
            if "joint_equal_updates" in systems and EQUAL_UPDATES_OF in plan[seed] and seed not in equal_queued:
                equal_queued.add(seed)
                push(seed, 3, functools.partial(self.equal_updates, seed))
                return
            finished_seeds.append(seed)
            main_seeds = [s for s in self.args.seeds if s in finished_seeds]
            if seed in self.args.seeds:
                with self.eval_lock:
                    self.compare(systems, main_seeds, self.out)
                logger.info("tables of seeds %s written to %s", main_seeds, self.out)

        for seed, variants in plan.items():
            by_base = collections.defaultdict(dict)  # own base system (None: the seed's base) -> variants
            for name, o in variants.items():
                by_base[own_base_system(o)][name] = o
            if by_base.get(None) or with_base:
                push(seed, 0, functools.partial(self.base, seed, with_base), by_base.pop(None, {}))
            for variants_of_own in by_base.values():  # own bases train beside the seed's base
                push(seed, 0, functools.partial(self.own_base, seed, next(iter(variants_of_own.values()))),
                     variants_of_own)
            if seed in self.args.seeds and ("joint" in systems or "joint_equal_updates" in systems):
                push(seed, 1, functools.partial(self.joint_chain, seed))
        for seed in plan:
            if not outstanding[seed]:
                after_last_step(seed)
        with ThreadPoolExecutor(max_workers=max(1, self.args.jobs)) as pool:
            running = {}  # future -> (seed, stage-2 variants that start when it is done)
            while ready or running:
                while ready and len(running) < max(1, self.args.jobs):
                    seed, _, _, step, followers = heapq.heappop(ready)
                    running[pool.submit(step)] = (seed, followers)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    seed, followers = running.pop(future)
                    for name, o in followers.items():
                        push(seed, 2, functools.partial(self.stage2, seed, name, o))
                    outstanding[seed] -= 1
                    if not outstanding[seed]:
                        after_last_step(seed)

    def compare(self, systems, seeds, folder):
        """comparison.md, eer_vs_snr.png, eer_by_condition.md, summary.md and dev_curves.png."""
        available = {name: [self.results_file(name, s) for s in seeds if self.results_file(name, s).is_file()]
                     for name in systems}
        available = {name: paths for name, paths in available.items() if paths}
        compare_systems({name: [str(p) for p in paths] for name, paths in available.items()}, folder)
        write_text(folder / "eer_by_condition.md", condition_table(available))
        write_text(folder / "summary.md", summary_table(available))
        curves = {name: {s: dev_curve(self.stage_folder(name, s)) for s in seeds}
                  for name in available if name != "joint_equal_updates"}
        plot_dev_curves(curves, folder / "dev_curves.png")
        return folder / "comparison.md"

    def stage_folder(self, system, seed):
        """The training folder of a system."""
        root = self.runs / str(seed)
        if system == "base":
            return root / "stage1"
        if system in ("joint", "joint_equal_updates"):
            return root / "joint"
        if system.startswith(OWN_BASE_SYSTEM):
            return root / f"stage1_{system[len(OWN_BASE_SYSTEM):]}"
        return stage2_folder(root, system)


def own_base_overrides(overrides):
    """A variant's ``base.KEY=VALUE`` pairs as typed stage1.yaml overrides, sorted by key ({} without)."""
    return {key[len(BASE_PREFIX):]: yaml.safe_load(value)
            for key, value in sorted(overrides.items()) if key.startswith(BASE_PREFIX)}


def own_base_slug(base):
    """``stage1_noise-True`` for the own-base overrides ``{"stage1_noise": True}``; None for {}."""
    return "_".join(f"{key}-{value}" for key, value in base.items()) or None


def own_base_system(overrides):
    """The system name of a variant's own base (``base_<slug>``), evaluated beside it; None without one."""
    slug = own_base_slug(own_base_overrides(overrides))
    return OWN_BASE_SYSTEM + slug if slug else None


def children_cpu():
    """CPU seconds (user + system) of the finished subprocesses and their own children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage2_folder(root, name):
    """Where a stage-2 variant trains: ``<seed>/stage2`` for the main one, else ``<seed>/variants/<name>``.

    Every variant reads the seed's ``stage1`` and ``anchors`` (or its own base's) by path.
    """
    return root / "stage2" if name == "stage2" else root / "variants" / name


# -------------------------------------------------------------- reports ----
def condition_table(results_by_system):
    """Markdown: EER (%) per condition, mean ± sd over seeds, one row per system."""
    runs = {name: [json.loads(pathlib.Path(p).read_text()) for p in paths] for name, paths in results_by_system.items()}
    columns = [c.name for c in default_conditions(NOISE_TYPES, SNRS, reverb=True)]
    lines = ["| System | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for name, seeds in runs.items():
        cells = []
        for column in columns:
            mean, sd = mean_and_sd([run["conditions"].get(column, {}).get("EER") for run in seeds])
            cells.append("–" if mean is None else f"{mean:.2f} ± {sd:.2f}" if len(seeds) > 1 else f"{mean:.2f}")
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nEER (%) per condition (test side corrupted), mean ± sample sd over seeds.\n"


def dev_curve(stage_folder):
    """Dev ErrorRate per epoch (a list, epoch 1 first) from a stage's train_log.txt."""
    log = pathlib.Path(stage_folder) / "train_log.txt"
    if not log.is_file():
        return []
    curve = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        epoch, error = re.search(r"^epoch: (\d+)", line), re.search(r"valid ErrorRate: ([0-9.e+-]+)", line)
        if epoch and error:
            curve[int(epoch.group(1))] = float(error.group(1))  # a resumed epoch's last line wins
    return [curve[e] for e in sorted(curve)]


def plot_dev_curves(curves, path):
    """dev_curves.png: dev ErrorRate (clean + noisy dev copies) vs epochs, one colour per system.

    Stage-2 curves start after their base's epochs, so the x axis counts every
    epoch of updates a system has consumed.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (name, seeds) in enumerate(curves.items()):
        for n, (seed, curve) in enumerate(sorted(seeds.items())):
            if not curve:
                continue
            offset = len(curves.get("base", {}).get(seed, [])) if name.startswith("stage2") else 0
            ax.plot(range(offset + 1, offset + len(curve) + 1), [100 * e for e in curve], color=f"C{k}",
                    marker=".", alpha=0.8, label=name if n == 0 else None)
            best = min(range(len(curve)), key=curve.__getitem__)
            ax.plot(offset + best + 1, 100 * curve[best], color=f"C{k}", marker="*", markersize=10)
    ax.set_xlabel("epochs of updates (stage 2 after its base)")
    ax.set_ylabel("dev error, clean + noisy copies (%)")
    ax.set_title("Development criterion per epoch (star: best epoch, the one evaluated)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(results_by_system):
    """Markdown: the pre-registered metric (corrupted mean EER) with clean EER, minDCF and geometry."""
    runs = {name: [json.loads(pathlib.Path(p).read_text()) for p in paths] for name, paths in results_by_system.items()}

    def corrupted(run, value):
        values = [value(c) for name, c in run["conditions"].items() if name != "clean"]
        return sum(values) / len(values)

    columns = {
        "Clean EER (%)": lambda run: run["conditions"]["clean"]["EER"],
        "Corrupted mean EER (%)": lambda run: corrupted(run, lambda c: c["EER"]),
        "Clean minDCF": lambda run: run["conditions"]["clean"]["minDCF"],
        "Corrupted minDCF": lambda run: corrupted(run, lambda c: c["minDCF"]),
        "Compactness clean": lambda run: run["conditions"]["clean"]["geometry"]["compactness"],
        "Compactness corrupted": lambda run: corrupted(run, lambda c: c["geometry"]["compactness"]),
        "Separation clean": lambda run: run["conditions"]["clean"]["geometry"]["separation"],
        "Drift": lambda run: corrupted(run, lambda c: c["geometry"]["drift"]),
    }
    lines = ["| System | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for name, seeds in runs.items():
        text = []
        for value in columns.values():
            mean, sd = mean_and_sd([value(run) for run in seeds])
            digits = 2 if abs(mean) > 1.5 else 4
            text.append(f"{mean:.{digits}f} ± {sd:.{digits}f}" if len(seeds) > 1 else f"{mean:.{digits}f}")
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(text) + " |")
    return "\n".join(lines) + (
        "\n\nMean ± sample sd over seeds. Corrupted: the 16 conditions noise / music / babble x 0-20 dB + reverb"
        " (test side). Compactness: mean cosine of an utterance to its speaker centroid; separation: mean"
        " 1 - cos between speaker centroids; drift: mean 1 - cos(clean, corrupted) embedding.\n"
    )


def main(argv=None):
    """Runs the experiment; returns the Runner (None when the default shared data is absent)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    shared = args.shared_data or DEFAULT_SHARED_DATA
    if not (shared / "speech").is_dir():
        message = f"real-speech experiment: no shared data at {shared} (expected {shared}/speech/)"
        if args.shared_data is not None:
            sys.exit(f"error: {message}")
        print(f"{message}; skipping. Pass --shared_data=PATH to run it.")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    args.output_folder = args.output_folder.resolve()
    args.output_folder.mkdir(parents=True, exist_ok=True)
    folders = corpus_folders(shared.resolve(), args.output_folder, args.max_speakers, args.max_utterances)
    runner = Runner(args, common_overrides(args, shared.resolve(), folders))
    start, cpu = time.time(), time.process_time() + children_cpu()
    plan = {seed: dict(args.variants) for seed in args.seeds}
    for seed in args.variant_seeds:
        plan.setdefault(seed, {}).update(args.extra_variants)
    runner.run_seed_chains(plan, args.systems)  # writes the main tables as each seed finishes
    print((args.output_folder / "comparison.md").read_text(encoding="utf-8"))
    print((args.output_folder / "summary.md").read_text(encoding="utf-8"))
    if args.extra_variants:
        own_bases = {own_base_system(o) for o in args.extra_variants.values()} - {None}
        systems = [*args.systems, *sorted(own_bases), *args.extra_variants]
        folder = args.output_folder / "variants" / ("seeds_" + "_".join(map(str, args.variant_seeds)))
        table = runner.compare(systems, args.variant_seeds, folder)
        print(table.read_text(encoding="utf-8"))
    runner.record("total", time.time() - start, time.process_time() + children_cpu() - cpu)
    return runner


if __name__ == "__main__":
    main()
