"""The benchmark's figures: one function per figure, each ``bench_x(work, sizes) -> figure or [figures]``.

``work`` is a :class:`anchor_reg.benchmark.workload.Workload`, ``sizes`` the
run's sizes (:data:`anchor_reg.benchmark.cli.QUICK`). The command line runs
:data:`FIGURES` in order; a new figure is a function appended there (and its
target, if any, in :data:`TARGETS`).
"""
import argparse
import json
import math
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
import speechbrain as sb
import torch

import anchor_reg
from anchor_reg.anchors import AnchorStore
from anchor_reg.benchmark.spread import (CONFIDENCE, UNRESOLVED, bootstrap_interval, median_interval, ratio_figure_value,
                                         transformed, verdict)
from anchor_reg.benchmark.timing import (MMAP_THRESHOLD, cpu_peak, flush_to_disk, interleaved, mapped_file,
                                         memory_counters, private_bytes, timed)
from anchor_reg.benchmark.workload import EMB_DIM, LiveTeacher, Workload, random_store, rows_through_network, voxceleb2_ids
from anchor_reg.brains import AnchorRegBrain
from anchor_reg.data.audio import read_audio_checked
from anchor_reg.evaluate import embed_utterances, evaluate_model, read_utterances

SEED = 1000  # every timed round seeds torch with SEED + round: the variants of a round augment alike

# figure -> (comparison, target); "<=" means lower is better
TARGETS = {
    "anchor_term_overhead": ("<=", 1.05),
    "live_teacher_cost": (">=", 1.3),
    "batched_embedding_speedup": (">=", 3.0),
    "noisy_evaluation_cost": ("<=", 1.1),
    "data_wait_fraction": ("<=", 0.10),
    "anchor_store_memory": ("<=", 1.1),
    "anchor_store_save_ratio": ("<=", 1.5),
    "anchor_store_load_s": ("<=", 0.1),
    "anchor_store_rank_memory": ("<=", 0.1),
    "anchor_store_lookup_ms": ("<=", 1.0),
    "peak_memory_ratio": ("<=", 1.1),
    "contrastive_term_overhead": ("<=", 1.05),
    "replay_row_cost": ("<=", 1.5),
}
CONTRASTIVE_NEGATIVES = 1024  # K of the contrastive figure
ROUND_BLOCKS = 4  # a step-time ratio with a target is timed in up to this many blocks of ``steps`` rounds


def figure(name, value, description, interval=None, **details):
    """One result: ``value`` and its ``interval`` against its target from :data:`TARGETS` (if any).

    ``interval`` (from :mod:`anchor_reg.benchmark.spread`) is the spread of a
    timed figure; None for a count (bytes), whose value alone decides. The
    verdict is :func:`anchor_reg.benchmark.spread.verdict` ("PASS", "FAIL",
    "unresolved"), None without a target.
    """
    result = {"name": name, "description": description, "value": float(value), "interval": interval}
    if name in TARGETS:
        op, target = TARGETS[name]
        result.update(target=f"{op} {target:g}", verdict=verdict(op, target, value, interval))
    else:
        result.update(target=None, verdict=None)
    result["details"] = details
    return result


def paired_step_ratio(work, brains, steps, name=None, to_figure=lambda ratio: ratio):
    """Times ``fit_batch`` on ``work.batch`` of two brains (``{label: brain}``) in paired, interleaved rounds;
    returns ``(timings, ratio, interval)``, the ratio being the first's over the second's (:func:`ratio_figure_value`).

    A figure with a target (``name`` in :data:`TARGETS`, its value ``to_figure(ratio)``) is timed in blocks
    of ``steps`` rounds until its verdict is PASS or FAIL, at most :data:`ROUND_BLOCKS` blocks. Each look's
    interval has confidence ``1 - (1 - CONFIDENCE) / ROUND_BLOCKS``, so all the looks together err no more
    often than one interval at ``CONFIDENCE`` (Bonferroni). A figure without a target is one block.
    """
    blocks = ROUND_BLOCKS if name in TARGETS else 1
    confidence = 1 - (1 - CONFIDENCE) / blocks
    variants = {label: (lambda b=b: b.fit_batch(work.batch)) for label, b in brains.items()}
    timings = {label: {"times_s": []} for label in brains}
    for block in range(blocks):  # block b's rounds are seeded SEED + b * steps + round, as one long run's
        more = interleaved(variants, steps, work.device, warmup=1 if block == 0 else 0, seed=SEED + block * steps)
        for label in brains:
            timings[label]["times_s"] += more[label]["times_s"]
        ratio, interval = ratio_figure_value(timings, *brains, confidence=confidence)
        if name in TARGETS and verdict(*TARGETS[name], *transformed(ratio, interval, to_figure)) != UNRESOLVED:
            break
    for timing in timings.values():
        timing["median_s"] = statistics.median(timing["times_s"])
    return timings, ratio, interval


def bench_anchor_term(work, sizes):
    """Figure 1: ``AnchorRegBrain.fit_batch`` / ``SpeakerBrain.fit_batch`` on the same modules, batch and Augmenter."""
    batch = work.batch
    timings, ratio, interval = paired_step_ratio(
        work, {"with_anchor": work.stage2, "without_anchor": work.stage2_without_anchor}, sizes["steps"],
        "anchor_term_overhead")
    rows = rows_through_network(work.stage2, batch)  # also leaves the Augmenter's state for this batch
    emb = torch.randn(rows, 1, EMB_DIM, device=work.device, requires_grad=True)

    def anchor_term_alone():  # AnchorRegBrain's own term: lookup + replication + distance, forward and backward
        work.stage2.extra_objective({"emb": emb}, batch).backward()

    alone = interleaved({"anchor_term": anchor_term_alone}, max(20, sizes["steps"]), work.device)["anchor_term"]
    return figure(
        "anchor_term_overhead", ratio, "stage-2 step time (fit_batch), with / without the anchor term, "
        "centre of the paired rounds' ratios", interval, rows_through_net=rows, store_rows=len(work.store),
        ratio_of_medians=timings["with_anchor"]["median_s"] / timings["without_anchor"]["median_s"],
        anchor_term_alone_ms=1000 * alone["median_s"],
        anchor_term_alone_over_step=alone["median_s"] / timings["without_anchor"]["median_s"], timings=timings,
    )


def bench_contrastive_term(work, sizes):
    """Figure 9: ``AnchorRegBrain.fit_batch`` with the contrastive objective / ``SpeakerBrain.fit_batch``.

    The objective is the one stage2.yaml builds for ``anchor_objective: contrastive``
    with ``contrastive_negatives: 1024`` (InfoNCE against the rows' anchors and K
    anchors of other speakers drawn from the store at each step); the modules,
    batch and Augmenter are figure 1's, and so is the step without an anchor term.
    """
    batch = work.batch
    loss = work.yaml("stage2.yaml", anchor_objective="contrastive",
                     contrastive_negatives=CONTRASTIVE_NEGATIVES)["anchor_loss"]
    contrastive = work.brain(AnchorRegBrain, anchors=work.store, anchor_loss=loss)
    timings, ratio, interval = paired_step_ratio(
        work, {"contrastive": contrastive, "without_anchor": work.stage2_without_anchor}, sizes["steps"],
        "contrastive_term_overhead")
    rows = rows_through_network(contrastive, batch)
    emb = torch.randn(rows, 1, EMB_DIM, device=work.device, requires_grad=True)

    def contrastive_term_alone():  # lookup + bank of K negatives + InfoNCE, forward and backward
        contrastive.extra_objective({"emb": emb}, batch).backward()

    alone = interleaved({"term": contrastive_term_alone}, max(20, sizes["steps"]), work.device)["term"]
    return figure(
        "contrastive_term_overhead", ratio,
        f"stage-2 step time (fit_batch), contrastive anchor term (K={loss.num_negatives}) / no anchor term, "
        "centre of the paired rounds' ratios", interval,
        negatives=loss.num_negatives, rows_through_net=rows, store_rows=len(work.store),
        ratio_of_medians=timings["contrastive"]["median_s"] / timings["without_anchor"]["median_s"],
        contrastive_term_alone_ms=1000 * alone["median_s"],
        contrastive_term_alone_over_step=alone["median_s"] / timings["without_anchor"]["median_s"], timings=timings,
    )


def bench_live_teacher(work, sizes):
    """Figure 2: stage-2 step with a live teacher / with fixed anchors (both ``AnchorRegBrain.fit_batch``).

    The live teacher stands in for the store: a frozen copy of the model
    re-embeds the B clean crops at every step. Measured for the recipe's batch
    (clean + noisy copy of each crop, 2B rows through the network) and, without
    a target, for a noisy-only batch (``clean_copies: False``, B rows): the
    teacher's share of the step is then twice as large.
    """
    batch = work.batch
    teacher = LiveTeacher(work.hparams, batch, work.device)
    noisy_only = work.yaml("stage2.yaml", clean_copies=False)["wav_augment"]
    results = {}
    for name, augmenter, figure_name in (("clean_and_noisy", work.hparams["wav_augment"], "live_teacher_cost"),
                                         ("noisy_only", noisy_only, None)):
        live = work.brain(AnchorRegBrain, anchors=teacher, wav_augment=augmenter)
        fixed = work.brain(AnchorRegBrain, anchors=work.store, wav_augment=augmenter)
        timings, ratio, interval = paired_step_ratio(work, {"live_teacher": live, "fixed_anchors": fixed},
                                                     sizes["steps"], figure_name)
        results[name] = dict(
            value=ratio, interval=interval,
            rows_through_net=rows_through_network(fixed, batch), teacher_rows=len(batch.id),
            ratio_of_medians=timings["live_teacher"]["median_s"] / timings["fixed_anchors"]["median_s"],
            timings=timings,
        )
    return [
        figure(
            "live_teacher_cost", description="stage-2 step time, live teacher (frozen copy re-embeds the clean "
            "crop) / fixed anchors, centre of the paired rounds' ratios", **results["clean_and_noisy"],
        ),
        figure(
            "live_teacher_cost_noisy_only",
            description="the same with clean_copies=False (noisy copy only; no target: not the recipe's default)",
            **results["noisy_only"],
        ),
    ]


def evaluation_waveforms(work, count, seconds, seed=1):
    """``count`` prepared verification utterances, each repeated or cut to a length drawn in ``seconds``."""
    rows = {**read_utterances(work.prep_folder / "enrol.csv"), **read_utterances(work.prep_folder / "test.csv")}
    ids = sorted(rows)
    rng = np.random.default_rng(seed)
    sample_rate = work.hparams["sample_rate"]
    waveforms = {}
    for k in range(count):
        row = rows[ids[k % len(ids)]]
        wav = read_audio_checked(row["wav"], sample_rate, row["start"], row["stop"])
        length = int(rng.uniform(*seconds) * sample_rate)
        waveforms[f"utt{k:03d}"] = wav.repeat(math.ceil(length / wav.numel()))[:length]
    return waveforms


def bench_batched_embedding(work, sizes):
    """Figure 3: ``embed_utterances`` in length-sorted batches vs one utterance at a time (``eval_rounds`` rounds)."""
    encoder = work.encoder()
    waveforms = evaluation_waveforms(work, sizes["embed_utterances"], sizes["utterance_seconds"])
    ids = sorted(waveforms)
    batch_size = work.options.eval_batch_size
    embed_utterances(encoder, waveforms, ids[:2], batch_size)  # warm-up
    results = {}
    timings = interleaved(
        {
            "batched": lambda: results.__setitem__("batched", embed_utterances(encoder, waveforms, ids, batch_size)),
            "one_at_a_time": lambda: results.__setitem__("single", embed_utterances(encoder, waveforms, ids, 1)),
        },
        sizes["eval_rounds"],
        work.device,
        warmup=0,
    )
    cosine = torch.nn.functional.cosine_similarity(results["batched"], results["single"], dim=1)
    lengths = [waveforms[i].numel() / work.hparams["sample_rate"] for i in ids]
    speedup, interval = ratio_figure_value(timings, "one_at_a_time", "batched")
    return figure(
        "batched_embedding_speedup", speedup,
        "evaluation embeddings: one utterance at a time / length-sorted batches (time), "
        "centre of the paired rounds' ratios",
        interval,
        utterances=len(ids), batch_size=batch_size, seconds_min=round(min(lengths), 2),
        seconds_max=round(max(lengths), 2), seconds_total=round(sum(lengths), 1),
        cosine_mean=float(cosine.mean()), cosine_min=float(cosine.min()),
        max_cosine_difference=float((1 - cosine).max()), timings=timings,
        note="padded (by reflection) utterances differ slightly: ECAPA convolutions see the padding near the end",
    )


def bench_noisy_evaluation(work, sizes):
    """Figure 4: ``evaluate_model`` on the prepared trials with all 17 conditions / 17 x a clean-only call.

    Timed in ``eval_rounds`` interleaved rounds; the figure is the centre of the rounds' ratios over 17.
    """
    encoder = work.encoder()
    prep = work.prep_folder
    counts = {}

    def run(conditions):
        output = evaluate_model(
            encoder, enrol_csv=prep / "enrol.csv", test_csv=prep / "test.csv", trials=prep / "trials.txt",
            noise_csvs={kind: prep / f"eval_{kind}.csv" for kind in work.hparams["eval_noise_types"]},
            rir_csv=prep / "eval_rir.csv", batch_size=work.options.eval_batch_size, conditions=conditions,
        )
        counts[len(output["conditions"])] = output["settings"]

    run(["clean"])  # warm-up
    all_conditions = None  # evaluate_model's default grid: clean, 3 types x 5 SNRs, reverb
    timings = interleaved({"clean_only": lambda: run(["clean"]), "all_conditions": lambda: run(all_conditions)},
                          sizes["eval_rounds"], work.device, warmup=0)
    n_conditions = max(counts)
    cost, interval = transformed(*ratio_figure_value(timings, "all_conditions", "clean_only"),
                                 lambda ratio: ratio / n_conditions)
    return figure(
        "noisy_evaluation_cost", cost,
        f"evaluate_model time, {n_conditions} conditions / ({n_conditions} x clean only), "
        "centre of the paired rounds' ratios",
        interval,
        conditions=n_conditions, utterances=counts[n_conditions]["n_utterances"],
        corrupted_utterances=counts[n_conditions]["n_corrupted_utterances"],
        all_over_clean=timings["all_conditions"]["median_s"] / timings["clean_only"]["median_s"], timings=timings,
    )


def bench_data_loading(work, sizes, num_workers=2):
    """Figure 5: share of a stage-2 training step (``fit_batch``) spent waiting for ``next(batch)``.

    The loader is the Brain's own (``make_dataloader``) over the prepared train.csv,
    run for as many epochs as ``loader_steps`` measured steps take; the first
    batch of each epoch (the workers starting) is reported apart. The interval
    resamples the measured steps (bootstrap of the ratio of sums).
    """
    loader = work.stage2.make_dataloader(
        work.dataset, sb.Stage.TRAIN, batch_size=work.options.batch_size, shuffle=True,
        num_workers=num_workers, drop_last=True,
    )
    if len(loader) < 2:
        raise ValueError(f"figure 5: the prepared train.csv has fewer than 2 batches of {work.options.batch_size} rows")
    waits, computes, first_waits = [], [], []
    while len(waits) < sizes["loader_steps"]:
        iterator = iter(loader)
        for k in range(min(len(loader), sizes["loader_steps"] - len(waits) + 1)):
            start = time.perf_counter()
            batch = next(iterator)
            wait = time.perf_counter() - start
            compute = timed(lambda: work.stage2.fit_batch(batch), work.device)
            if k == 0:
                first_waits.append(round(wait, 4))
            else:
                waits.append(wait)
                computes.append(compute)
        del iterator

    def wait_fraction(steps):
        wait = sum(w for w, _ in steps)
        return wait / (wait + sum(c for _, c in steps))

    measured = list(zip(waits, computes))
    return figure(
        "data_wait_fraction", wait_fraction(measured),
        f"share of a training step waiting for data (num_workers={num_workers}, after each epoch's first batch)",
        bootstrap_interval(measured, wait_fraction),
        batch_size=work.options.batch_size, steps_measured=len(waits), first_batch_waits_s=first_waits,
        wait_s=[round(w, 4) for w in waits], compute_s=[round(c, 4) for c in computes],
        note="compute = AnchorRegBrain.fit_batch (Augmenter + forward + backward + optimizer step)",
    )


def bench_anchor_store(work, sizes, batch=512):
    """Figure 6: the anchor store at VoxCeleb2 scale: memory, save, load, lookup, and its cost per rank.

    The store is saved ``store_writes`` times, interleaved with plain writes of the
    same bytes; this process then loads it (memory-mapped) ``store_loads`` times
    and times lookups, and two gloo ranks in fresh processes load and use it as
    stage 2 does (:func:`rank_store_probe`) to measure the private memory each
    rank adds. The memory figures are byte counts (no interval); the times are
    medians with their intervals.
    """
    num_rows, lookups = sizes["store_rows"], sizes["lookups"]
    ids = voxceleb2_ids(num_rows)
    start = time.perf_counter()
    store = random_store(ids)
    build_s = time.perf_counter() - start
    raw = num_rows * EMB_DIM * 4
    path = pathlib.Path(work.scratch) / "anchors.pt"
    raw_path = path.with_name("same_bytes.raw")

    def write_same_bytes():  # the disk's speed: the store's arrays in one plain write, no format
        with open(raw_path, "wb") as stream:
            for array in (store.embeddings.numpy(), store.ids, store.hashes, store.row_speaker.numpy()):
                stream.write(memoryview(np.ascontiguousarray(array)).cast("B"))
        flush_to_disk(raw_path)

    def save():
        store.save(path)
        flush_to_disk(path)

    # each write ends on the disk: without it a write's time depends on how much the last one left to flush
    writes = interleaved({"save": save, "raw": write_same_bytes}, repeats=sizes["store_writes"], device="cpu")
    raw_path.unlink()
    save_ratio, save_interval = ratio_figure_value(writes, "save", "raw")
    del store
    loaded = {}
    load_times = [timed(lambda: loaded.__setitem__("store", AnchorStore.from_file(path)), "cpu")
                  for _ in range(1 + sizes["store_loads"])]
    first_load_s, load_times = load_times[0], load_times[1:]  # the first maps pages the save just wrote
    store = loaded["store"]
    rng = np.random.default_rng(0)
    queries = [[ids[k] for k in rng.integers(0, num_rows, size=batch)] for _ in range(lookups)]
    # the first pass touches the freshly loaded pages; training does thousands of lookups, so the
    # figure is the steady state (second pass) and the first pass is reported beside it
    first_pass = [timed(lambda q=q: store.lookup(q), "cpu") for q in queries]
    times = [timed(lambda q=q: store.lookup(q), "cpu") for q in queries]
    lookup_ms = 1000 * statistics.median(times)
    lookup_interval = median_interval([1000 * t for t in times])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # index_select is parallelised: on a busy machine waking a thread dominates
    try:
        one_thread_ms = 1000 * statistics.median(timed(lambda q=q: store.lookup(q), "cpu") for q in queries)
    finally:
        torch.set_num_threads(threads)
    file_bytes = path.stat().st_size
    details = {"rows": num_rows, "raw_bytes": raw, "store_nbytes": store.nbytes(), "file_bytes": file_bytes,
               "build_s": round(build_s, 2), "example_id": ids[0],
               "embeddings_mapped_from_file": mapped_file(store.embeddings.numpy().ctypes.data) == str(path)}
    ranks = two_rank_probes(path, lookups, batch)
    path.unlink()
    per_rank = {f"rank{r['rank']}_{key}": r[key] for r in ranks
                for key in ("private_growth_bytes", "anonymous_growth_bytes", "shared_growth_bytes", "rss_growth_bytes",
                            "load_s")}
    return [
        figure("anchor_store_memory", store.nbytes() / raw,
               f"AnchorStore.nbytes / raw (N x {EMB_DIM} x 4 B), N = {num_rows:,}", **details),
        figure("anchor_store_save_ratio", save_ratio,
               "AnchorStore.save (atomic temp file + rename) / one plain write of the same arrays, each until on disk, "
               f"centre of {sizes['store_writes']} paired rounds' ratios", save_interval,
               rows=num_rows, file_bytes=file_bytes, save_s=writes["save"]["median_s"],
               raw_write_s=writes["raw"]["median_s"], times=writes),
        figure("anchor_store_load_s", statistics.median(load_times),
               f"AnchorStore.from_file seconds (memory-mapped, file in the page cache), median of {len(load_times)} "
               "after a first load",
               median_interval(load_times), rows=num_rows, file_bytes=file_bytes, first_load_s=first_load_s,
               times_s=[round(t, 5) for t in load_times]),
        figure("anchor_store_rank_memory", max(r["private_growth_bytes"] for r in ranks) / file_bytes,
               "private memory a rank adds (load + digest + lookups + negatives) / store file size, "
               "max of 2 gloo ranks", file_bytes=file_bytes, digests=[r["digest"] for r in ranks],
               method="Private_Clean + Private_Dirty of /proc/self/smaps_rollup, after minus before the load; "
               "measured once both ranks have used the store", **per_rank),
        figure("anchor_store_lookup_ms", lookup_ms,
               f"lookup of {batch} IDs, median ms over {lookups} (after a first pass)", lookup_interval,
               rows=num_rows, torch_threads=threads, p90_ms=1000 * float(np.percentile(times, 90)),
               first_pass_median_ms=1000 * statistics.median(first_pass),
               one_thread_median_ms=one_thread_ms),
    ]


def rank_store_probe(path, lookups, batch, negatives=CONTRASTIVE_NEGATIVES):
    """One gloo rank's use of the store at ``path``: what its private memory grows by (run in a fresh process).

    As a stage-2 rank does: load (memory-mapped), :meth:`AnchorStore.digest`
    (``train.py`` records it; it reads every page), then ``lookups`` batches of
    ``batch`` random IDs (anchors, speaker indices, a bank of ``negatives``).
    The memory is read once every rank has used the store and before any
    leaves, so the pages both map count as shared, as on a node of 8 ranks.
    Needs ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``.

    Returns
    -------
    dict
        ``rank``, ``digest``, ``load_s`` and the growth in bytes of the private
        (USS), anonymous, shared and resident memory.
    """
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    before = memory_counters()
    loaded = {}
    load_s = timed(lambda: loaded.__setitem__("store", AnchorStore.from_file(path)), "cpu")
    store = loaded["store"]
    digest = store.digest()
    rng = np.random.default_rng(rank)
    for _ in range(lookups):
        ids = [i.decode() for i in store.ids[rng.integers(0, len(store), size=batch)]]
        store.lookup(ids)
        store.sample_negatives(store.speaker_index(ids), negatives)
    torch.distributed.barrier()
    after = memory_counters()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    growth = {key: after[key] - before[key] for key in ("Anonymous", "Shared_Clean", "Rss")}
    return {"rank": rank, "digest": digest, "load_s": load_s,
            "private_growth_bytes": private_bytes(after) - private_bytes(before),
            "anonymous_growth_bytes": growth["Anonymous"], "shared_growth_bytes": growth["Shared_Clean"],
            "rss_growth_bytes": growth["Rss"]}


def two_rank_probes(path, lookups, batch, timeout_s=900):
    """:func:`rank_store_probe` on 2 gloo ranks (fresh processes on 127.0.0.1); their results by rank."""
    master = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    command = probe_command("rank_store_probe", [str(path), lookups, batch])
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=probe_env(**master, RANK=str(rank), LOCAL_RANK=str(rank)))
             for rank in range(2)]
    try:
        outputs = [proc.communicate(timeout=timeout_s) for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        raise RuntimeError(f"anchor-store probes did not finish within {timeout_s} s") from None
    failed = [(rank, err) for rank, (proc, (_, err)) in enumerate(zip(procs, outputs)) if proc.returncode != 0]
    if failed:
        raise RuntimeError(f"anchor-store probe of rank {failed[0][0]} failed:\n{failed[0][1][-2000:]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def free_port():
    """A TCP port of 127.0.0.1 nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe_env(**extra):
    """The environment of a probe process: this package importable, plus ``extra``."""
    package_root = str(pathlib.Path(anchor_reg.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
                **extra)


def probe_command(function, args):
    """``python -c`` running ``function(*args)`` of this module and printing its JSON result."""
    code = (f"import json; from anchor_reg.benchmark.figures import {function}; "
            f"print(json.dumps({function}(*json.loads({json.dumps(args)!r}))))")
    return [sys.executable, "-c", code]


def memory_probe(kind, overrides, options):
    """Peak memory (bytes) of one training step, in this (fresh) process.

    ``stage1``: ``SpeakerBrain.fit_batch``, ``stage2``: ``AnchorRegBrain.fit_batch``,
    both on stage 2's modules and Augmenter (clean + noisy: 2B rows), so the
    same number of rows goes through the network and stage 2 adds lookup +
    replication + anchor distance. One warm-up step allocates the optimizer
    state first, then the second step (augmented alike) is measured: CPU with
    :func:`cpu_peak`, GPU with ``max_memory_allocated`` minus the bytes allocated before.
    """
    work = Workload(overrides, argparse.Namespace(**options))
    brain = work.stage2 if kind == "stage2" else work.stage2_without_anchor

    def step():
        torch.manual_seed(SEED)
        brain.fit_batch(work.batch)

    step()
    device = work.device
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    else:
        peak, method = cpu_peak(step)
    return {"kind": kind, "rows": rows_through_network(brain, work.batch), "step_peak_bytes": peak, "method": method}


def bench_peak_memory(work, sizes):
    """Figure 7: step peak memory, stage 2 / stage 1, each measured in a fresh subprocess."""
    probes = {}
    for kind in ("stage1", "stage2"):
        command = probe_command("memory_probe", [kind, work.overrides, vars(work.options)])
        env = probe_env(MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))  # freed tensors leave the RSS at once
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory probe '{kind}' failed:\n{done.stderr[-2000:]}")
        probes[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = probes["stage2"]["step_peak_bytes"] / max(1, probes["stage1"]["step_peak_bytes"])
    return figure(
        "peak_memory_ratio", ratio, f"step peak memory, stage 2 / stage 1, {probes['stage1']['rows']} rows each",
        method=probes["stage1"]["method"] + f"; each kind in a fresh subprocess with MALLOC_MMAP_THRESHOLD_="
        f"{MMAP_THRESHOLD}, second step measured",
        stage1_bytes=probes["stage1"]["step_peak_bytes"], stage2_bytes=probes["stage2"]["step_peak_bytes"],
    )


def bench_throughput(work, sizes):
    """Figure 8 (no target): utterances/s of full training steps (``fit_batch``), augmentation included.

    Stage 1: ``SpeakerBrain`` on stage1.yaml (half of the batches get one more
    DropFreq/DropChunk copy); stage 2: ``AnchorRegBrain`` on stage2.yaml (clean
    + noisy copy, AAM + anchor term); joint: ``JointBrain`` on joint.yaml (clean
    + noisy copy, AAM + online consistency term).
    """
    brains = {"stage1": work.stage1_brain(), "stage2": work.stage2, "joint": work.joint_brain()}
    timings = interleaved({name: (lambda b=b: b.fit_batch(work.batch)) for name, b in brains.items()},
                          sizes["throughput_rounds"], work.device, seed=SEED)
    size = len(work.batch.id)
    figures = []
    for name in brains:
        step = median_interval(timings[name]["times_s"])
        interval = dict(step, low=size / step["high"], high=size / step["low"])  # of the batch over the median step
        figures.append(figure(f"{name}_utterances_per_s", size / timings[name]["median_s"],
                              f"{name} training throughput (utterances/s, fit_batch with augmentation)", interval,
                              batch_size=size, median_step_s=timings[name]["median_s"]))
    return figures


def replay_row_cost(step_ratio, batch_rows, replay_rows):
    """``((t_with - t_without) / replay_rows) / (t_without / batch_rows)`` of a step-time ratio t_with / t_without."""
    return (step_ratio - 1) * batch_rows / replay_rows


def bench_replay(work, sizes):
    """Figure 10: what a replay row costs a label-free stage-2 step, relative to a training row.

    The label-free step (``supervision: none``, pull to the fixed anchors) of
    the batch's B rows, timed with ``replay_rows`` R = B (each step also draws R
    replay rows, augments them alike and pulls them to their own anchors) and
    without replay, interleaved. Of the step-time ratio (the centre of the
    rounds' ratios, as every ratio figure's), the figure is
    ``((t_with - t_without) / R) / (t_without / B)``: the time of one more
    replay row over the time of one training row; 1 when a replay row costs
    what a training row does (the replay rows go through their own forward pass).
    """
    rows = len(work.batch.id)
    replay_rows = rows
    with_replay, without_replay = work.label_free_brains(replay_rows)

    def to_figure(ratio):
        return replay_row_cost(ratio, rows, replay_rows)

    timings, step_ratio, step_interval = paired_step_ratio(
        work, {"with_replay": with_replay, "without_replay": without_replay}, sizes["steps"], "replay_row_cost",
        to_figure)
    cost, interval = transformed(step_ratio, step_interval, to_figure)
    replay_drawn = with_replay.replay.draw(with_replay.hparams.epoch_counter.current, with_replay.step)
    return figure(
        "replay_row_cost", cost,
        "label-free stage-2 step: time per replay row added / time per training row (R = B replay rows), "
        "of the centre of the paired rounds' ratios", interval,
        batch_rows=rows, replay_rows=replay_rows, replay_rows_drawn=len(replay_drawn.id),
        rows_through_net=rows_through_network(without_replay, work.batch),
        step_ratio=step_ratio,
        replay_terms=sorted(with_replay.loss_terms), plain_terms=sorted(without_replay.loss_terms), timings=timings,
    )


# What the command line runs, in order: (progress label, bench function).
FIGURES = [
    ("1 anchor term", bench_anchor_term),
    ("2 live teacher", bench_live_teacher),
    ("3 batched embeddings", bench_batched_embedding),
    ("4 noisy evaluation", bench_noisy_evaluation),
    ("5 data loading", bench_data_loading),
    ("6 anchor store", bench_anchor_store),
    ("7 peak memory", bench_peak_memory),
    ("8 throughput", bench_throughput),
    ("9 contrastive term", bench_contrastive_term),
    ("10 replay", bench_replay),
]
