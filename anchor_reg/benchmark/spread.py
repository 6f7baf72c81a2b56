"""Spread of the benchmark's figures and their verdicts: intervals, then PASS / FAIL / unresolved.

A timed figure is a statistic of repeated samples (the per-round ratios of two
interleaved variants, the per-step waits, the lookups); its interval says how
far the figure could move if the run were repeated under the same conditions.
A verdict is PASS or FAIL only when the whole interval lies on one side of the
target, and ``unresolved`` otherwise (too few samples, or a figure at its target).
The intervals cover the spread inside one run, not a change of load between runs.
"""
import math
import random
import statistics

CONFIDENCE = 0.9  # every interval's (at least) coverage; below it a verdict is "unresolved"
UNRESOLVED = "unresolved"


def median_interval(values, confidence=CONFIDENCE):
    """Distribution-free interval of the median of ``values``: a pair of order statistics.

    For n independent samples of a continuous distribution, the k-th smallest
    and the k-th largest enclose its median with probability
    ``1 - 2 P(Binomial(n, 1/2) <= k - 1)``; the narrowest such pair with at
    least ``confidence`` is returned. With too few samples for any pair (n < 5
    at 0.9) the interval is [min, max] and its ``coverage`` says how little it holds.

    Returns
    -------
    dict
        ``low``, ``high``, ``coverage`` (of the pair chosen), ``samples``, ``method``.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_interval: no values")
    k, coverage = 1, order_pair_coverage(n, 1)
    while k + 1 <= n // 2 and order_pair_coverage(n, k + 1) >= confidence:
        k += 1
        coverage = order_pair_coverage(n, k)
    return {"low": ordered[k - 1], "high": ordered[n - k], "coverage": coverage, "samples": n,
            "method": f"order statistics {k} and {n + 1 - k} of {n} (distribution-free, median)"}


def order_pair_coverage(n, k):
    """Probability that the k-th smallest and k-th largest of n samples enclose the median."""
    return 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n


def paired_ratios(timings, numerator, denominator):
    """Per-round ratios ``numerator / denominator`` of two interleaved variants (rounds share the load)."""
    return [a / b for a, b in zip(timings[numerator]["times_s"], timings[denominator]["times_s"])]


def ratio_figure_value(timings, numerator, denominator, confidence=CONFIDENCE):
    """(median of the paired ratios, its :func:`median_interval`) of two interleaved variants."""
    ratios = paired_ratios(timings, numerator, denominator)
    return statistics.median(ratios), median_interval(ratios, confidence)


def bootstrap_interval(samples, statistic, confidence=CONFIDENCE, resamples=2000, seed=0):
    """Percentile bootstrap interval of ``statistic(samples)``, resampling the samples with a fixed seed.

    For statistics of several samples together (e.g. a ratio of sums); the
    coverage is nominal. Fewer than 5 samples give the coverage 0: a verdict on
    them is "unresolved".

    Arguments
    ---------
    samples : list
        Units resampled with replacement (e.g. (wait, compute) pairs of one step).
    statistic : callable
        List of samples -> float.
    """
    if not samples:
        raise ValueError("bootstrap_interval: no samples")
    rng = random.Random(seed)
    values = sorted(statistic(rng.choices(samples, k=len(samples))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low, high = values[int(tail * (resamples - 1))], values[math.ceil((1 - tail) * (resamples - 1))]
    return {"low": low, "high": high, "coverage": confidence if len(samples) >= 5 else 0.0, "samples": len(samples),
            "method": f"percentile bootstrap, {resamples} resamples, seed {seed}"}


def verdict(comparison, target, value, interval=None, confidence=CONFIDENCE):
    """PASS, FAIL or "unresolved" of a figure against ``comparison target`` ("<=" or ">=").

    With an interval: PASS when all of it meets the target, FAIL when none of
    it does, "unresolved" when it straddles the target or covers less than
    ``confidence``. Without one (a count, e.g. bytes, not a sample of a
    timing): the value decides.
    """
    def meets(x):
        return x <= target if comparison == "<=" else x >= target

    if comparison not in ("<=", ">="):
        raise ValueError(f"comparison must be '<=' or '>=', not {comparison!r}")
    if interval is None:
        return "PASS" if meets(value) else "FAIL"
    if interval["coverage"] < confidence:
        return UNRESOLVED
    low, high = meets(interval["low"]), meets(interval["high"])
    if low and high:
        return "PASS"
    if not low and not high:
        return "FAIL"
    return UNRESOLVED
