"""Verification metrics (EER, minDCF, DET) and embedding-space geometry.

The error rates use exactly the threshold grid of
``speechbrain.utils.metric_stats.EER`` / ``minDCF`` (every distinct score plus
the midpoints between consecutive ones; a trial is rejected when
``score <= threshold``), but are computed with sorting and ``searchsorted``
instead of a Python loop, so millions of trials take a fraction of a second.
Both functions are checked against SpeechBrain's on every run of the tests
(tests/test_metrics.py), but not replaced by them: the DET points need these
counts anyway, and SpeechBrain's ``minDCF`` materialises a (thresholds x
trials) float matrix (about 2N x N/2 x 4 bytes: 5.7 GB for VoxCeleb1-O's
37,720 trials, far more for -E/-H), while its ``EER`` loops in Python over
the 2N thresholds.

minDCF convention: ``speechbrain.utils.metric_stats.minDCF`` returns the raw
detection cost ``c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)``.
:func:`min_dcf` returns that cost divided by the cost of the best trivial
system, ``min(c_miss * p_target, c_fa * (1 - p_target))``, which is how
WeSpeaker, 3D-Speaker and the NIST SRE / VoxSRC evaluations report it. With the
defaults (p_target=0.01, c_miss=c_fa=1) the normalised value is
speechbrain's value divided by 0.01.

Authors
 * anchor-reg contributors
"""

import torch

MIN_DCF_NOTE = (
    "minDCF at p_target=0.01, c_miss=c_fa=1, normalised by "
    "min(p_target*c_miss, (1-p_target)*c_fa) as in WeSpeaker/3D-Speaker "
    "(= speechbrain.utils.metric_stats.minDCF / 0.01)."
)


def error_counts(positive_scores, negative_scores):
    """Miss and false-alarm counts on speechbrain's threshold grid.

    Arguments
    ---------
    positive_scores : torch.Tensor
        Scores of target trials, shape (P,).
    negative_scores : torch.Tensor
        Scores of non-target trials, shape (N,).

    Returns
    -------
    thresholds : torch.Tensor
        Ascending thresholds, shape (K,), float64.
    n_miss : torch.Tensor
        Number of target scores ``<= threshold``, shape (K,).
    n_fa : torch.Tensor
        Number of non-target scores ``> threshold``, shape (K,).
    """
    pos = torch.as_tensor(positive_scores, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative_scores, dtype=torch.float64).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(
            f"Need target and non-target scores, got {pos.numel()} target "
            f"and {neg.numel()} non-target trials."
        )
    distinct = torch.unique(torch.cat([pos, neg]))
    midpoints = (distinct[:-1] + distinct[1:]) / 2
    thresholds = torch.sort(torch.cat([distinct, midpoints])).values
    n_miss = torch.searchsorted(torch.sort(pos).values, thresholds, right=True)
    n_fa = neg.numel() - torch.searchsorted(
        torch.sort(neg).values, thresholds, right=True
    )
    return thresholds, n_miss, n_fa


def eer(positive_scores, negative_scores):
    """Equal error rate, as ``speechbrain.utils.metric_stats.EER``.

    The operating point is the first threshold where |p_fa - p_miss| is
    smallest (compared exactly, in integer arithmetic); the EER is the mean of
    the two rates there.

    Arguments
    ---------
    positive_scores : torch.Tensor
        Scores of target trials, shape (P,).
    negative_scores : torch.Tensor
        Scores of non-target trials, shape (N,).

    Returns
    -------
    eer : float
        Equal error rate as a fraction in [0, 1].
    threshold : float
        Threshold of the operating point.

    Example
    -------
    >>> eer(torch.tensor([0.6, 0.7, 0.8, 0.3]), torch.tensor([0.4, 0.5, 0.2, 0.1]))[0]
    0.25
    """
    thresholds, n_miss, n_fa = error_counts(positive_scores, negative_scores)
    n_pos = torch.as_tensor(positive_scores).numel()
    n_neg = torch.as_tensor(negative_scores).numel()
    gap = (n_fa * n_pos - n_miss * n_neg).abs()
    best = int(torch.argmin(gap))
    rate = (n_fa[best].item() / n_neg + n_miss[best].item() / n_pos) / 2
    return float(rate), float(thresholds[best])


def min_dcf(
    positive_scores, negative_scores, p_target=0.01, c_miss=1.0, c_fa=1.0
):
    """Normalised minimum detection cost (see the module docstring).

    Arguments
    ---------
    positive_scores : torch.Tensor
        Scores of target trials, shape (P,).
    negative_scores : torch.Tensor
        Scores of non-target trials, shape (N,).
    p_target : float
        Prior probability of a target trial.
    c_miss : float
        Cost of a miss.
    c_fa : float
        Cost of a false alarm.

    Returns
    -------
    min_dcf : float
        Minimum of the detection cost over thresholds, divided by
        ``min(c_miss * p_target, c_fa * (1 - p_target))``.
    threshold : float
        Threshold of the minimum.

    Example
    -------
    >>> min_dcf(torch.tensor([0.6, 0.7, 0.8, 0.3]), torch.tensor([0.4, 0.5, 0.2, 0.1]))[0]
    0.25
    """
    thresholds, n_miss, n_fa = error_counts(positive_scores, negative_scores)
    p_miss = n_miss.double() / torch.as_tensor(positive_scores).numel()
    p_fa = n_fa.double() / torch.as_tensor(negative_scores).numel()
    cost = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
    best = int(torch.argmin(cost))
    default_cost = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(cost[best] / default_cost), float(thresholds[best])


def det_curve(positive_scores, negative_scores):
    """False-alarm and miss rates at every threshold, for a DET plot.

    Arguments
    ---------
    positive_scores : torch.Tensor
        Scores of target trials, shape (P,).
    negative_scores : torch.Tensor
        Scores of non-target trials, shape (N,).

    Returns
    -------
    p_fa : torch.Tensor
        False-alarm rates, shape (K,), non-increasing.
    p_miss : torch.Tensor
        Miss rates, shape (K,), non-decreasing.
    """
    _, n_miss, n_fa = error_counts(positive_scores, negative_scores)
    p_miss = n_miss.double() / torch.as_tensor(positive_scores).numel()
    p_fa = n_fa.double() / torch.as_tensor(negative_scores).numel()
    return p_fa, p_miss


def speaker_geometry(embeddings, speakers):
    """Intra-speaker compactness and inter-speaker separation (cosine).

    Centroids are the means of the L2-normalised embeddings of a speaker.

    Arguments
    ---------
    embeddings : torch.Tensor
        Utterance embeddings, shape (N, D).
    speakers : list of str
        Speaker of each utterance, length N.

    Returns
    -------
    dict
        ``compactness``: mean cosine of an utterance to its speaker centroid,
        over speakers with at least two utterances (None if there are none);
        ``separation``: mean cosine distance (1 - cos) over all pairs of
        speaker centroids; ``nearest_centroid_distance``: mean over speakers of
        the cosine distance to the nearest other centroid (both None with
        fewer than two speakers).

    Example
    -------
    >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> geo = speaker_geometry(emb, ["a", "a", "b", "b"])
    >>> round(geo["compactness"], 3), round(geo["separation"], 3)
    (0.999, 0.9)
    """
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    names = sorted(set(speakers))
    index = torch.tensor([names.index(spk) for spk in speakers])
    centroids = torch.zeros(len(names), unit.shape[1], dtype=unit.dtype)
    centroids.index_add_(0, index, unit)
    counts = torch.bincount(index, minlength=len(names))
    unit_centroids = torch.nn.functional.normalize(centroids, dim=1)

    to_centroid = (unit * unit_centroids[index]).sum(dim=1)
    in_shared = counts[index] >= 2
    compactness = to_centroid[in_shared].mean().item() if in_shared.any() else None

    separation = nearest = None
    if len(names) >= 2:
        distance = 1 - unit_centroids @ unit_centroids.T
        pairs = torch.triu_indices(len(names), len(names), offset=1)
        separation = distance[pairs[0], pairs[1]].mean().item()
        distance.fill_diagonal_(float("inf"))
        nearest = distance.min(dim=1).values.mean().item()
    return {
        "compactness": compactness,
        "separation": separation,
        "nearest_centroid_distance": nearest,
    }


def embedding_drift(clean, corrupted):
    """Mean cosine distance between clean and corrupted embeddings.

    Arguments
    ---------
    clean : torch.Tensor
        Embeddings of the clean utterances, shape (N, D).
    corrupted : torch.Tensor
        Embeddings of the same utterances corrupted, shape (N, D).

    Returns
    -------
    float
        Mean of ``1 - cos(clean_i, corrupted_i)``.

    Example
    -------
    >>> embedding_drift(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    0.5
    """
    cos = torch.nn.functional.cosine_similarity(
        clean.double(), corrupted.double(), dim=1
    )
    return float((1 - cos).clamp(min=0).mean())


def mean_and_sd(values):
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the
    values that are not None; (None, None) when there are none.

    Example
    -------
    >>> mean_and_sd([1.0, 3.0, None])
    (2.0, 1.4142135623730951)
    """
    present = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if present.numel() == 0:
        return None, None
    sd = present.std().item() if present.numel() > 1 else 0.0
    return present.mean().item(), sd
