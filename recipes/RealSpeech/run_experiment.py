#!/usr/bin/env python3
"""The real-speech experiment: stage-wise training with fixed anchors vs. joint training.

Data: ``../shared/data`` (LibriSpeech, DSP and ASC speakers; real noise and
RIRs). Every corpus holds speakers out of training for verification (trials
stay within a corpus); evaluation noises, RIRs and babble talkers are disjoint
from the training ones (see ``anchor_reg.data.prepare``).

For each seed, four systems under the same update budget::

    base            stage 1 (clean), E1 epochs
    stage2          base -> fixed anchors -> E2 noisy epochs, loss AAM + λ·d(emb, anchor)
    stage2_lambda0  the same with λ = 0 (noisy fine-tuning without anchors)
    joint           from scratch, E1 + E2 epochs of clean + noisy copies + consistency term

Each one is trained by a ``python train.py ...`` subprocess (resumable; log in
``<output_folder>/logs/``), exported and evaluated on the full grid (clean;
noise and babble at 0-20 dB; reverb). Outputs in ``<output_folder>``::

    <system>/export/           the first seed's model (SpeechBrain inference folder)
    <system>/seed<S>/          results.json, results.md and plots of seed S
    comparison.md, eer_vs_snr.png, eer_by_condition.md   mean ± sd over seeds
    variants/seeds_<S..>/      the same for --sweep / --variant runs on those seeds
    logs/, runs/               train.py logs and training folders
    timing.json                wall and CPU seconds per step

Usage (see recipes/RealSpeech/README.md for the measured results)::

    python recipes/RealSpeech/run_experiment.py --threads 1          # main comparison, 3 seeds
    python recipes/RealSpeech/run_experiment.py --threads 1 --sweep  # + λ x anchor type sweep
    python recipes/RealSpeech/run_experiment.py --variant "lr1e-4 lr=0.0001"

Re-running a command skips every system whose ``results.json`` exists.
"""
import argparse
import json
import logging
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from anchor_reg.config import keys_of, overrides_for  # noqa: E402
from anchor_reg.corruption import default_conditions  # noqa: E402
from anchor_reg.compare import compare_systems  # noqa: E402
from anchor_reg.evaluate import evaluate_model, load_encoder  # noqa: E402
from anchor_reg.export import export_model  # noqa: E402
from anchor_reg.metrics import mean_and_sd  # noqa: E402

logger = logging.getLogger("realspeech")

DEFAULT_SHARED_DATA = pathlib.Path(os.environ.get("ANCHOR_REG_SHARED_DATA", REPO.parent / "shared" / "data"))
CORPORA = ("librispeech-train", "dsp", "asc")
NOISE_TYPES = ("noise", "babble")  # the shared noise has no music
SNRS = (0, 5, 10, 15, 20)
EXPERIMENT = "realspeech"
YAMLS = ("stage1.yaml", "stage2.yaml", "joint.yaml")
MAIN_SYSTEMS = ("base", "stage2", "stage2_lambda0", "joint")
# Stage-2 variants: name -> stage2.yaml overrides ("stage2" is the main one).
STAGE2_VARIANTS = {"stage2": {}, "stage2_lambda0": {"anchor_weight": 0.0}}
SWEEP = {
    f"{kind}_lambda{weight:g}": {"anchor_type": kind, "anchor_weight": weight}
    for kind in ("utterance", "speaker")
    for weight in (0.3, 1.0, 3.0)
}
SWEEP.pop("utterance_lambda1")  # = stage2


def parse_args(argv=None):
    """Command-line options; ``extra_variants`` collects --sweep and --variant (name -> overrides)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared_data", type=pathlib.Path, default=None,
                        help=f"the shared data folder (default: {DEFAULT_SHARED_DATA})")
    parser.add_argument("--output_folder", type=pathlib.Path, default=REPO / "results" / "realspeech")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--systems", nargs="+", choices=MAIN_SYSTEMS, default=list(MAIN_SYSTEMS))
    parser.add_argument("--channels", type=int, default=64, help="ECAPA-TDNN width C")
    parser.add_argument("--stage1_epochs", type=int, default=4)
    parser.add_argument("--stage2_epochs", type=int, default=2)
    parser.add_argument("--verification_speakers", type=float, default=0.2,
                        help="fraction of each corpus' speakers held out for verification")
    parser.add_argument("--test_seg_dur", type=float, default=4.0,
                        help="verification utterances are cut into segments of this length (s)")
    parser.add_argument("--max_speakers", type=int, default=None,
                        help="use only the first N speakers of each corpus (quick runs)")
    parser.add_argument("--max_utterances", type=int, default=None,
                        help="use only the first N utterances of each speaker (quick runs)")
    parser.add_argument("--sweep", action="store_true",
                        help="also run the λ (0.3, 1, 3) x anchor type (utterance, speaker) sweep")
    parser.add_argument("--variant", action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                        help="also run a stage-2 variant with these stage2.yaml overrides (repeatable)")
    parser.add_argument("--variant_seeds", type=int, nargs="+", default=None,
                        help="seeds of the --sweep / --variant runs (default: the first seed)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every train.py run, e.g. batch_size=16 (repeatable)")
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of training and evaluation (default: torch's; 1 is faster "
                             "on a machine whose cores are busy with other work)")
    args = parser.parse_args(argv)
    args.variants = {name: overrides for name, overrides in STAGE2_VARIANTS.items() if name in args.systems}
    extra = dict(SWEEP) if args.sweep else {}
    stage2_keys = keys_of(REPO / "hparams" / "stage2.yaml")
    for spec in args.variant:
        name, *pairs = spec.split()
        extra[name] = parse_pairs(pairs, parser)
        unknown = sorted(set(extra[name]) - stage2_keys)
        if unknown:
            parser.error(f"--variant {name}: {unknown} are not keys of hparams/stage2.yaml")
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
    """``["key=value", ...]`` -> ``{key: value}`` (values stay strings for train.py)."""
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
    """Overrides for every train.py run (each run gets those its YAML defines)."""
    overrides = {
        "dataset": "folder",
        "data_folders": json.dumps([str(f) for f in folders]),
        "noise_folders": json.dumps({"noise": str(shared / "noise")}),
        "rir_folder": str(shared / "rir"),
        "verification_speakers": args.verification_speakers,
        "test_seg_dur": args.test_seg_dur,
        "output_base": str(args.output_folder / "runs"),
        "experiment_name": EXPERIMENT,
        "channels": args.channels,
        "evaluate_after_training": False,
    }
    overrides.update(args.overrides)
    return overrides


# ------------------------------------------------------------- training ----
class Runner:
    """Runs train.py subprocesses and evaluations, recording wall and CPU times."""

    def __init__(self, args, overrides):
        self.args = args
        self.out = args.output_folder
        self.overrides = overrides
        self.runs = self.out / "runs" / EXPERIMENT
        self.prep = self.runs / "prepared"
        self.timing_file = self.out / "timing.json"
        self.timing = json.loads(self.timing_file.read_text()) if self.timing_file.is_file() else {}

    def record(self, step, wall, cpu):
        """Adds wall and CPU seconds (CPU: all processes, summed over cores) to a step of timing.json."""
        entry = self.timing.setdefault(step, {"wall_s": 0.0, "cpu_s": 0.0})
        entry["wall_s"] = round(entry["wall_s"] + wall, 1)
        entry["cpu_s"] = round(entry["cpu_s"] + cpu, 1)
        write_text(self.timing_file, json.dumps(self.timing, indent=2) + "\n")

    def train(self, yaml_name, seed, label, **overrides):
        """``python train.py hparams/<yaml_name> --seed=S ...``, logged to logs/<seed>-<label>.log."""
        options = {**overrides_for(REPO / "hparams" / yaml_name, self.overrides), "seed": seed, **overrides}
        command = [sys.executable, "train.py", f"hparams/{yaml_name}", "--device=cpu", "--noprogressbar",
                   *(f"--{key}={value}" for key, value in options.items())]
        log = self.out / "logs" / f"{seed}-{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        logger.info("seed %s: training %s (log: %s)", seed, label, log)
        start, cpu = time.time(), children_cpu()
        env = dict(os.environ)
        if self.args.threads:
            env["OMP_NUM_THREADS"] = str(self.args.threads)
        with open(log, "a", encoding="utf-8") as stream:
            stream.write("$ " + " ".join(command) + "\n")
            stream.flush()
            done = subprocess.run(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
        self.record(f"{seed}/train/{label}", time.time() - start, children_cpu() - cpu)
        if done.returncode != 0:
            tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-20:])
            raise RuntimeError(f"training {label} (seed {seed}) failed; end of {log}:\n{tail}")

    def results_folder(self, system, seed):
        """``<output_folder>/<system>/seed<S>``."""
        return self.out / system / f"seed{seed}"

    def evaluate(self, system, seed, stage_folder):
        """Exports and evaluates a stage on the full grid; the first seed's export stays."""
        folder = self.results_folder(system, seed)
        start, cpu = time.time(), time.process_time()
        keep = seed == self.args.seeds[0]
        with tempfile.TemporaryDirectory(dir=self.out) as tmp:
            export = self.out / system / "export" if keep else pathlib.Path(tmp) / "export"
            export_model(stage_folder, export)
            results = evaluate_model(
                load_encoder(export),
                enrol_csv=self.prep / "enrol.csv",
                test_csv=self.prep / "test.csv",
                trials=self.prep / "trials.txt",
                noise_csvs={kind: self.prep / f"eval_{kind}.csv" for kind in NOISE_TYPES},
                rir_csv=self.prep / "eval_rir.csv",
                snrs=SNRS,
                batch_size=self.args.eval_batch_size,
                output_folder=folder,
                system_name=system,
            )
            if keep:
                export_model(stage_folder, export, results=results)  # model card with the measured table
        self.record(f"{seed}/evaluate/{system}", time.time() - start, time.process_time() - cpu)

    def done(self, system, seed):
        """True when the system's results.json for this seed exists."""
        return (self.results_folder(system, seed) / "results.json").is_file()

    def run_seed(self, seed, stage2_variants, with_base, with_joint):
        """Trains and evaluates one seed's systems, skipping evaluated ones."""
        root = self.runs / str(seed)
        todo = {name: o for name, o in stage2_variants.items() if not self.done(name, seed)}
        if (with_base and not self.done("base", seed)) or todo:
            self.train("stage1.yaml", seed, "base", number_of_epochs=self.args.stage1_epochs)
        if with_base and not self.done("base", seed):
            self.evaluate("base", seed, root / "stage1")
        for name, overrides in todo.items():
            options = {
                "number_of_epochs": self.args.stage2_epochs,
                "stage1_overrides": json.dumps({"number_of_epochs": self.args.stage1_epochs}),
                "output_folder": str(stage2_folder(root, name)),
                **overrides,  # a variant may change number_of_epochs
            }
            self.train("stage2.yaml", seed, name, **options)
            self.evaluate(name, seed, stage2_folder(root, name))
        if with_joint and not self.done("joint", seed):
            self.train("joint.yaml", seed, "joint",
                       stage1_epochs=self.args.stage1_epochs, stage2_epochs=self.args.stage2_epochs)
            self.evaluate("joint", seed, root / "joint")

    def compare(self, systems, seeds, folder):
        """comparison.md, eer_vs_snr.png and eer_by_condition.md over the evaluated seeds."""
        available = {
            name: [self.results_folder(name, s) / "results.json" for s in seeds if self.done(name, s)]
            for name in systems
        }
        available = {name: paths for name, paths in available.items() if paths}
        compare_systems({name: [str(p) for p in paths] for name, paths in available.items()}, folder)
        write_text(folder / "eer_by_condition.md", condition_table(available))
        return folder / "comparison.md"


def children_cpu():
    """CPU seconds (user + system) of the finished subprocesses and their own children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage2_folder(root, name):
    """Where a stage-2 variant trains: ``<seed>/stage2`` for the main one, else ``<seed>/variants/<name>``.

    Every variant reads the seed's ``stage1`` and ``anchors`` folders
    (train.py does not hand stage 2's ``output_folder`` to stage 1).
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


def write_text(path, text):
    """Writes ``path`` atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        f.write(text)
    os.replace(f.name, path)


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
    for seed in args.seeds:
        runner.run_seed(seed, args.variants, "base" in args.systems, "joint" in args.systems)
    table = runner.compare(args.systems, args.seeds, args.output_folder)
    print(table.read_text(encoding="utf-8"))
    if args.extra_variants:
        for seed in args.variant_seeds:
            runner.run_seed(seed, {**args.variants, **args.extra_variants}, "base" in args.systems,
                            "joint" in args.systems)
        systems = [*args.systems, *args.extra_variants]
        folder = args.output_folder / "variants" / ("seeds_" + "_".join(map(str, args.variant_seeds)))
        table = runner.compare(systems, args.variant_seeds, folder)
        print(table.read_text(encoding="utf-8"))
    runner.record("total", time.time() - start, time.process_time() + children_cpu() - cpu)
    return runner


if __name__ == "__main__":
    main()
