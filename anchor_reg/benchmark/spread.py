"""Spread of the benchmark's figures and their verdicts: intervals, then PASS / FAIL / unresolved.

A timed figure is a statistic of repeated samples (the per-round ratios of two
interleaved variants, the per-step waits, the lookups); its interval says how
far the figure could move if the run were repeated under the same conditions.
A verdict is PASS or FAIL only when the whole interval lies on one side of the
target, and ``unresolved`` otherwise (too few samples, or a figure at its target).
The intervals cover the spread inside one run, not a change of load between runs.

Every ratio of two interleaved variants is the Hodges-Lehmann centre of the
rounds' log ratios with its Wilcoxon signed-rank interval
(:func:`ratio_figure_value`): a round's two variants see the same kind of
noise, so its log ratio is symmetric about the true one; the centre of a
symmetric sample needs about a third fewer rounds than its median for an
interval as narrow, and, unlike a mean, one outlying round barely moves it.
"""
import functools
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


@functools.lru_cache(maxsize=None)
def signed_rank_counts(n):
    """How many of the 2^n sign patterns of ranks 1..n give each positive-rank sum 0 .. n(n+1)/2.

    The null distribution of the Wilcoxon signed-rank statistic: entry ``t``
    counts the subsets of {1, ..., n} summing to ``t``.
    """
    counts = [1] + [0] * (n * (n + 1) // 2)
    for rank in range(1, n + 1):
        for total in range(len(counts) - 1, rank - 1, -1):
            counts[total] += counts[total - rank]
    return tuple(counts)


def signed_rank_coverage(n, k):
    """Probability that the k-th smallest and k-th largest Walsh averages of n symmetric samples enclose the centre."""
    return 1 - 2 * sum(signed_rank_counts(n)[:k]) / 2**n


def centre_interval(values, confidence=CONFIDENCE):
    """Hodges-Lehmann centre of ``values`` and its Wilcoxon signed-rank interval.

    For n independent samples of a continuous distribution symmetric about a
    centre, the n(n+1)/2 Walsh averages ``(x_i + x_j) / 2`` (i <= j) have the
    centre as their median; their k-th smallest and k-th largest enclose it with
    probability ``1 - 2 P(T <= k - 1)``, T the signed-rank statistic
    (:func:`signed_rank_counts`). The narrowest such pair with at least
    ``confidence`` is returned; below 5 samples at 0.9 even the extreme pair
    covers less, and its ``coverage`` says so.

    Returns
    -------
    (float, dict)
        The median of the Walsh averages; ``low``, ``high``, ``coverage``,
        ``samples``, ``method`` of the interval.
    """
    n = len(values)
    if n == 0:
        raise ValueError("centre_interval: no values")
    walsh = sorted((values[i] + values[j]) / 2 for i in range(n) for j in range(i, n))
    k = 1
    while k < len(walsh) // 2 and signed_rank_coverage(n, k + 1) >= confidence:
        k += 1
    return statistics.median(walsh), {
        "low": walsh[k - 1], "high": walsh[len(walsh) - k], "coverage": signed_rank_coverage(n, k), "samples": n,
        "method": f"Walsh averages {k} and {len(walsh) + 1 - k} of {len(walsh)} "
                  "(Wilcoxon signed-rank, Hodges-Lehmann centre)",
    }


def paired_ratios(timings, numerator, denominator):
    """Per-round ratios ``numerator / denominator`` of two interleaved variants (rounds share the load)."""
    return [a / b for a, b in zip(timings[numerator]["times_s"], timings[denominator]["times_s"])]


def ratio_figure_value(timings, numerator, denominator, confidence=CONFIDENCE):
    """(ratio, interval) of two interleaved variants: :func:`centre_interval` of the rounds' log ratios, exp'd."""
    logs = [math.log(ratio) for ratio in paired_ratios(timings, numerator, denominator)]
    centre, interval = centre_interval(logs, confidence)
    return math.exp(centre), dict(interval, low=math.exp(interval["low"]), high=math.exp(interval["high"]),
                                  method=f"{interval['method']} of the paired log ratios")


def transformed(value, interval, transform):
    """(``transform(value)``, the interval with both bounds transformed) for an increasing ``transform``."""
    return transform(value), dict(interval, low=transform(interval["low"]), high=transform(interval["high"]))


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
