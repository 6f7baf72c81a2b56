"""Verification metrics on the threshold grid of SpeechBrain's ``EER`` / ``minDCF``, vectorised (its ``minDCF``
holds a thresholds x trials matrix: 5.7 GB for VoxCeleb1-O), and embedding-space geometry."""
import torch

MIN_DCF_NOTE = ("minDCF at p_target=0.01, c_miss=c_fa=1, normalised by min(p_target*c_miss, (1-p_target)*c_fa) "
                "as in WeSpeaker/3D-Speaker (= speechbrain.utils.metric_stats.minDCF / 0.01).")


def error_counts(positive_scores, negative_scores):
    """(K,) float64 ascending thresholds, (K,) target scores ``<=`` each, (K,) non-target scores ``>``."""
    pos = torch.as_tensor(positive_scores, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative_scores, dtype=torch.float64).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"Need target and non-target scores, got {pos.numel()} target "
                         f"and {neg.numel()} non-target trials.")
    distinct = torch.unique(torch.cat([pos, neg]))
    midpoints = (distinct[:-1] + distinct[1:]) / 2
    thresholds = torch.sort(torch.cat([distinct, midpoints])).values
    n_miss = torch.searchsorted(torch.sort(pos).values, thresholds, right=True)
    n_fa = neg.numel() - torch.searchsorted(torch.sort(neg).values, thresholds, right=True)
    return thresholds, n_miss, n_fa


def error_rates(positive_scores, negative_scores):
    """(K,) thresholds, (K,) float64 miss rates and (K,) false-alarm rates (see :func:`error_counts`)."""
    thresholds, n_miss, n_fa = error_counts(positive_scores, negative_scores)
    p_miss = n_miss.double() / torch.as_tensor(positive_scores).numel()
    p_fa = n_fa.double() / torch.as_tensor(negative_scores).numel()
    return thresholds, p_miss, p_fa


def eer(positive_scores, negative_scores):
    """(EER in [0, 1], threshold) of (P,) target and (N,) non-target scores: the mean of the two rates at the
    first threshold with the smallest |p_fa - p_miss| (compared exactly, in integers)."""
    thresholds, n_miss, n_fa = error_counts(positive_scores, negative_scores)
    n_pos, n_neg = torch.as_tensor(positive_scores).numel(), torch.as_tensor(negative_scores).numel()
    gap = (n_fa * n_pos - n_miss * n_neg).abs()
    best = int(torch.argmin(gap))
    rate = (n_fa[best].item() / n_neg + n_miss[best].item() / n_pos) / 2
    return float(rate), float(thresholds[best])


def min_dcf(positive_scores, negative_scores, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """(minDCF, threshold): SpeechBrain's ``minDCF`` over ``min(c_miss * p_target, c_fa * (1 - p_target))``,
    as WeSpeaker, 3D-Speaker and NIST SRE / VoxSRC report it (:data:`MIN_DCF_NOTE`)."""
    thresholds, p_miss, p_fa = error_rates(positive_scores, negative_scores)
    cost = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
    best = int(torch.argmin(cost))
    default_cost = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(cost[best] / default_cost), float(thresholds[best])


def det_curve(positive_scores, negative_scores):
    """(K,) non-increasing false-alarm rates and (K,) non-decreasing miss rates, for a DET plot."""
    _, p_miss, p_fa = error_rates(positive_scores, negative_scores)
    return p_fa, p_miss


def speaker_geometry(embeddings, speakers):
    """Cosine geometry of (N, D) embeddings of N speakers: ``compactness`` (mean cos to the own centroid,
    speakers with >= 2 utterances), ``separation`` (mean 1 - cos of centroid pairs) and
    ``nearest_centroid_distance`` (mean 1 - cos to the nearest other centroid); None where undefined."""
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
    return {"compactness": compactness, "separation": separation, "nearest_centroid_distance": nearest}


def embedding_drift(clean, corrupted):
    """Mean ``1 - cos`` between (N, D) clean embeddings and (N, D) embeddings of the same utterances corrupted."""
    cos = torch.nn.functional.cosine_similarity(clean.double(), corrupted.double(), dim=1)
    return float((1 - cos).clamp(min=0).mean())


def mean_and_sd(values):
    """Mean and sample SD (ddof=1; 0 for one value) of the values that are not None; (None, None) if none."""
    present = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if present.numel() == 0:
        return None, None
    sd = present.std().item() if present.numel() > 1 else 0.0
    return present.mean().item(), sd
