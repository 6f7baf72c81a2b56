"""The benchmark's command line: sizes, the run over :data:`~anchor_reg.benchmark.figures.FIGURES`, table and JSON."""
import argparse
import json
import multiprocessing
import os
import pathlib
import platform
import shutil
import signal
import sys
import tempfile
import time

import torch

import anchor_reg.benchmark
from anchor_reg.atomic import write_text_atomic
from anchor_reg.benchmark.figures import FIGURES
from anchor_reg.benchmark.spread import CONFIDENCE, UNRESOLVED
from anchor_reg.benchmark.workload import VOXCELEB2_ROWS, VOXCELEB2_SPEAKERS, Workload, prepare

QUICK = {
    "steps": 16,  # rounds of a block of a step-time ratio figure (1, 2, 9, 10; up to figures.ROUND_BLOCKS blocks)
    "throughput_rounds": 4,  # interleaved rounds of figure 8
    "eval_rounds": 7,  # interleaved rounds of figures 3 and 4
    "embed_utterances": 24,  # figure 3
    "utterance_seconds": (2.0, 6.0),
    "corpus_speakers": 30,  # the synthetic corpus: speakers x utterances (2-4 s each)
    "corpus_utterances": 6,
    "eval_speakers": 6,  # figure 4: speakers held out for the prepared trials
    "loader_steps": 7,  # figure 5: measured steps (over several epochs; each epoch's first batch is not counted)
    "store_rows": VOXCELEB2_ROWS,  # figure 6: VoxCeleb2 dev in 3 s rows
    "store_writes": 5,  # figure 6: interleaved rounds of save / plain write
    "store_loads": 15,  # figure 6: timed loads after a first one
    "lookups": 100,
}
FULL = dict(QUICK, steps=24, throughput_rounds=6, eval_rounds=9, embed_utterances=64, utterance_seconds=(4.0, 12.0),
            corpus_speakers=60, corpus_utterances=8, eval_speakers=10, loader_steps=12, lookups=500)
VERDICT_COUNTS = {"passed": "PASS", "failed": "FAIL", "unresolved": UNRESOLVED}  # results key -> verdict counted


def run_benchmarks(options, work_folder, sizes=None, log=print):
    """Prepares the data, builds the Brains, runs every figure; returns the results dict written as JSON.

    Arguments
    ---------
    options : argparse.Namespace
        See :func:`parse_args`.
    work_folder : pathlib.Path
        Scratch folder for the prepared data and the store file.
    sizes : dict, optional
        Replaces entries of :data:`QUICK` / :data:`FULL`.
    log : callable
        Progress messages.
    """
    sizes = dict(QUICK if options.quick else FULL, **(sizes or {}))
    if options.store_rows:
        sizes["store_rows"] = options.store_rows
    if options.steps:
        sizes["steps"] = options.steps
    work_folder = pathlib.Path(work_folder)
    log("[benchmark] preparing the data ...")
    work = Workload(prepare(work_folder, options, sizes), options, scratch=work_folder)
    figures = []
    for label, bench in FIGURES:
        log(f"[benchmark] {label} ...")
        start = time.perf_counter()
        out = bench(work, sizes)
        figures.extend(out if isinstance(out, list) else [out])
        log(f"[benchmark] {label}: {time.perf_counter() - start:.1f} s")
    device_name = (torch.cuda.get_device_name(options.device) if torch.device(options.device).type == "cuda"
                   else platform.processor() or platform.machine())
    return {
        "settings": {
            "mode": "quick" if options.quick else "full",
            "device": options.device,
            "device_name": device_name,
            "precision": options.precision,
            "channels": options.channels,
            "batch_size": options.batch_size,
            "crop_s": options.crop,
            "eval_batch_size": options.eval_batch_size,
            "speakers": options.speakers,
            "speech": str(options.data) if options.data else "synthetic (anchor_reg.data.synthetic)",
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average": [round(x, 1) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            **sizes,
        },
        "figures": figures,
        "confidence": CONFIDENCE,
        **{key: sum(f["verdict"] == verdict for f in figures) for key, verdict in VERDICT_COUNTS.items()},
    }


def format_table(results):
    """The results as a Markdown table."""
    s = results["settings"]
    lines = [
        f"anchor-reg benchmark ({s['mode']}): {s['device']} ({s['device_name']}), {s['precision']}, "
        f"ECAPA C={s['channels']}, batch {s['batch_size']} x {s['crop_s']} s, torch {s['torch']}, "
        f"{s['torch_threads']} threads, {s['cpu_count']} CPUs, load average {s['load_average']}; "
        f"speech: {s['speech']}",
        "",
        f"| figure | description | measured | interval (>= {results['confidence']:.0%}) | target | result |",
        "|---|---|---:|---|---|---|",
    ]
    for f in results["figures"]:
        lines.append(f"| {f['name']} | {f['description']} | {f['value']:.4g} | {format_interval(f['interval'])} | "
                     f"{f['target'] or '–'} | {f['verdict'] or '–'} |")
    counts = ", ".join(f"{results[key]} {key}" for key in VERDICT_COUNTS)
    lines += ["", f"{counts}. PASS or FAIL only where the whole interval lies on one side of the target."]
    return "\n".join(lines)


def format_interval(interval):
    """``[low, high] n=N`` of a figure's interval; ``–`` for a count (no interval); coverage when below the level."""
    if interval is None:
        return "–"
    text = f"[{interval['low']:.4g}, {interval['high']:.4g}] n={interval['samples']}"
    return text if interval["coverage"] >= CONFIDENCE else f"{text}, covers {interval['coverage']:.0%}"


def write_json(results, path):
    """Writes ``results`` to ``path`` atomically."""
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m anchor_reg.benchmark",
                                     description=anchor_reg.benchmark.__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 5 min on 2 idle CPU cores)")
    parser.add_argument("--output", default="results/benchmark.json", help="JSON file written (atomically)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--channels", type=int, default=128, help="ECAPA-TDNN width C")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--crop", type=float, default=3.0, help="training crop seconds (the preparation's seg_dur)")
    parser.add_argument("--eval_batch_size", type=int, default=16)
    parser.add_argument("--speakers", type=int, default=VOXCELEB2_SPEAKERS, help="classifier outputs")
    parser.add_argument("--store_rows", type=int, default=None,
                        help="anchor-store rows (default: VoxCeleb2 dev cut into 3 s rows)")
    parser.add_argument("--steps", type=int, default=None, help="rounds of a block of a step-time ratio figure")
    parser.add_argument("--data", default=None,
                        help="folder of real 16 kHz speech laid out <speaker>/<session>/<utt>.wav|flac "
                             "(prepared as --dataset=folder, with synthetic noises)")
    parser.add_argument("--hparams_folder", default=None,
                        help="folder of stage1.yaml, stage2.yaml, joint.yaml (default: the recipe's)")
    options = parser.parse_args(argv)
    if options.precision == "fp16" and "cuda" not in options.device:
        parser.error("--precision fp16 needs --device cuda")
    return options


def stop(work, status):
    """SIGTERM handler: ends the worker processes, removes the work folder, exits with ``status`` at once.

    Exits with ``os._exit``: an exception raised from a handler can be caught by
    whatever code it interrupts (``pydoc.locate``, which HyperPyYAML imports
    through, turns it into an ``ErrorDuringImport``) and the run would go on.
    """
    for child in multiprocessing.active_children():  # the synthetic corpus's pool writes into ``work``
        child.kill()
        child.join()
    shutil.rmtree(work, ignore_errors=True)
    os._exit(status)


def main(argv=None):
    """Runs the benchmark, prints the table, writes the JSON."""
    options = parse_args(argv)
    work = tempfile.mkdtemp(prefix="anchor_reg_benchmark_")
    signal.signal(signal.SIGTERM, lambda signum, frame: stop(work, 128 + signum))
    try:
        results = run_benchmarks(options, work, log=lambda message: print(message, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(results, options.output)
    print(format_table(results))
    print(f"\nwrote {options.output}")
