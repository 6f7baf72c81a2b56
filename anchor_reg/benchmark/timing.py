"""Clocks and memory probes of the benchmark: interleaved medians, peak resident and private memory, mappings."""
import os
import resource
import statistics
import sys
import time

import torch

MMAP_THRESHOLD = 1 << 17  # bytes; glibc serves larger blocks with mmap and unmaps them on free


def synchronize(device):
    """Waits for queued GPU work, so wall-clock times are the work's."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device):
    """Seconds one call of ``function()`` takes."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def flush_to_disk(path):
    """Returns once the file at ``path`` is on the disk (``fsync``), not only in the page cache."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def interleaved(variants, repeats, device, warmup=1, seed=None):
    """Median seconds of each variant, run in alternating order to cancel drift.

    Arguments
    ---------
    variants : dict
        Name -> callable without arguments.
    repeats : int
        Timed calls of each variant.
    device : str
        Synchronised around each call.
    warmup : int
        Untimed calls of each variant first.
    seed : int, optional
        Seeds torch before every call with ``seed + round``, so the variants of
        one round draw the same random numbers (e.g. the Augmenter's choices).

    Returns
    -------
    dict
        Name -> {"median_s", "times_s"}.
    """
    names = list(variants)

    def call(name, round_):
        if seed is not None:
            torch.manual_seed(seed + round_)
        variants[name]()

    for round_ in range(warmup):
        for name in names:
            call(name, -1 - round_)
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(timed(lambda: call(name, i), device))
    return {name: {"median_s": statistics.median(t), "times_s": [round(x, 5) for x in t]} for name, t in times.items()}


def cpu_peak(function):
    """(bytes, method): how far the resident memory rises above its level before ``function()``.

    Linux: reset the peak (``VmHWM``) through ``/proc/self/clear_refs``, read it
    after the call, subtract the RSS before. Elsewhere: growth of ``ru_maxrss``
    (0 when the call stays below an earlier peak).
    """
    try:
        before = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as stream:
            stream.write("5")
    except OSError:
        unit = 1 if sys.platform == "darwin" else 1024
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        function()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - before, "ru_maxrss growth"
    function()
    return _proc_status_bytes("VmHWM") - before, "VmHWM (reset by clear_refs) minus VmRSS before"


def _proc_status_bytes(field):
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def memory_counters():
    """This process's memory by kind, in bytes, from ``/proc/self/smaps_rollup`` (Linux).

    Keys as the kernel names them: ``Rss``, ``Shared_Clean``, ``Private_Clean``,
    ``Private_Dirty``, ``Anonymous``, ... A file page mapped by two processes is
    ``Shared_*`` in both; by one process only, ``Private_Clean``; a copy the
    process made for itself is ``Anonymous`` (and ``Private_Dirty``).
    """
    counters = {}
    with open("/proc/self/smaps_rollup", encoding="ascii") as stream:
        for line in stream:
            name, _, rest = line.partition(":")
            value = rest.split()
            if len(value) == 2 and value[1] == "kB":
                counters[name] = int(value[0]) * 1024
    return counters


def private_bytes(counters):
    """Resident memory no other process shares (USS): ``Private_Clean + Private_Dirty`` of :func:`memory_counters`."""
    return counters["Private_Clean"] + counters["Private_Dirty"]


def mapped_file(address):
    """The path of the file mapped at ``address`` in this process (``/proc/self/maps``), else None.

    None for anonymous memory (the heap, ``malloc``'s mappings), the name in
    brackets for the kernel's (``[heap]``, ``[stack]``).
    """
    with open("/proc/self/maps", encoding="utf-8") as stream:
        for line in stream:
            fields = line.split(maxsplit=5)
            start, stop = (int(bound, 16) for bound in fields[0].split("-"))
            if start <= address < stop:
                return fields[5].strip() if len(fields) == 6 else None
    return None
