"""The range of every recipe key, in one table.

:func:`anchor_reg.config.check_values` applies it when a YAML loads with its
overrides (references resolved, nothing built yet), so a value that would make
a run meaningless (``snr_low > snr_high``, a negative λ, ``noisy_copies=0``,
``batch_size=8.5`` ...) stops it before any work, with one line naming the key
and the value. A key a YAML does not have is not checked.

>>> RANGES["dev_ratio"].test(0.1), RANGES["dev_ratio"].test(1.0), RANGES["dev_ratio"].wants
(True, False, 'a number in (0, 1)')
"""
import collections
import math

from anchor_reg.anchors import ANCHOR_TYPES
from anchor_reg.heads import HEADS
from anchor_reg.losses import DISTANCES, OBJECTIVES, WeightSchedule

Rule = collections.namedtuple("Rule", "test wants")


def integer(low):
    """An int (not a bool) >= ``low``."""
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low, f"an integer >= {low}")


def number(low=-math.inf, high=math.inf, *, open_low=False, open_high=False):
    """A finite number in the interval (``open_*``: the end is excluded)."""
    def test(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    if high == math.inf:
        wants = f"a number {'>' if open_low else '>='} {low}" if low > -math.inf else "a finite number"
    else:
        wants = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return Rule(test, wants)


def one_of(choices):
    """One of ``choices`` (strings)."""
    return Rule(lambda v: v in choices, f"one of {', '.join(choices)}")


def optional(rule):
    """None or what ``rule`` accepts."""
    return Rule(lambda v: v is None or rule.test(v), f"null or {rule.wants}")


def list_of(rule, wants):
    """A list whose items ``rule`` accepts."""
    return Rule(lambda v: isinstance(v, list) and all(rule.test(x) for x in v), wants)


def _verification_speakers(v):
    """At least 2 held-out speakers: a count, a fraction, or their ids."""
    if isinstance(v, list):
        return len(v) >= 2 and all(isinstance(s, str) for s in v)
    return integer(2).test(v) or number(0, 1, open_low=True, open_high=True).test(v)


POSITIVE = number(0, open_low=True)
MAX_NEGATIVES = 65536
NON_NEGATIVE = number(0)
DATASETS = ("synthetic", "folder", "voxceleb", "unlabelled")
EVAL_NOISE_TYPES = ("noise", "music", "babble")
SUPERVISIONS = ("labelled", "none")
DEV_CRITERIA = ("classification", "anchor_retrieval")

RANGES = {
    # which trainer, seeds
    "stage": one_of(("stage1", "stage2", "joint")),
    "seed": integer(0),
    "data_seed": integer(0),
    # data
    "dataset": one_of(DATASETS),
    "sample_rate": integer(8000),
    "seg_dur": POSITIVE,
    "dev_ratio": number(0, 1, open_low=True, open_high=True),
    "verification_speakers": Rule(_verification_speakers, "an integer >= 2, a fraction in (0, 1) or a list of >= 2 speaker ids"),
    "test_seg_dur": optional(POSITIVE),
    "crop_dur": optional(POSITIVE),
    "synthetic_speakers": integer(3),
    "synthetic_utts_per_speaker": integer(2),
    "synthetic_noises": integer(2),
    "babble_mixtures": integer(1),
    # training
    "number_of_epochs": integer(1),
    "stage1_epochs": integer(1),
    "stage2_epochs": integer(1),
    "batch_size": integer(1),
    "anchor_batch_size": integer(1),
    "eval_batch_size": integer(1),
    "lr": POSITIVE,
    "lr_final": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "num_workers": integer(0),
    "keep_checkpoints": integer(1),
    "ckpt_interval_steps": integer(0),
    "early_stop_patience": integer(1),
    # augmentation
    "snr_low": number(),
    "snr_high": number(),
    "noisy_copies": integer(1),
    # anchor-distance / consistency term
    "anchor_weight": NON_NEGATIVE,
    "anchor_weight_final": NON_NEGATIVE,
    "anchor_weight_warmup_epochs": integer(0),
    "anchor_distance": one_of(DISTANCES),
    "anchor_type": one_of(ANCHOR_TYPES),
    "anchor_weight_schedule_kind": one_of(WeightSchedule.KINDS),
    "anchor_objective": one_of(OBJECTIVES),
    "contrastive_scale": POSITIVE,
    "contrastive_margin": number(0, 1),
    "contrastive_negatives": Rule(lambda v: integer(0).test(v) and v <= MAX_NEGATIVES,
                                  f"an integer in [0, {MAX_NEGATIVES}] (the anchors of the store bound it too)"),
    "classifier_head": one_of(HEADS),
    "consistency_weight": NON_NEGATIVE,
    "consistency_distance": one_of(DISTANCES),
    # adaptation: labels, dev criterion, replay, forgetting controls
    "supervision": one_of(SUPERVISIONS),
    "dev_criterion": one_of(DEV_CRITERIA),
    "verification_folders": list_of(Rule(lambda v: isinstance(v, str) and bool(v), ""), "a list of folders"),
    "replay_folders": list_of(Rule(lambda v: isinstance(v, str) and bool(v), ""), "a list of folders"),
    "replay_rows": integer(0),
    "replay_weight": NON_NEGATIVE,
    "replay_objective": one_of(OBJECTIVES),
    "l2sp_weight": NON_NEGATIVE,
    # model
    "n_mels": integer(1),
    "channels": integer(4),
    "emb_dim": integer(1),
    "num_train_speakers": integer(0),
    # evaluation (stage YAMLs and verify.yaml)
    "eval_snrs": list_of(number(), "a list of numbers"),
    "eval_noise_types": list_of(one_of(EVAL_NOISE_TYPES), f"a list drawn from {', '.join(EVAL_NOISE_TYPES)}"),
    "snrs": list_of(number(), "a list of numbers"),
    "cohort_size": integer(1),
    "norm_topk": integer(1),
    "max_trials": optional(integer(1)),
}

# (low key, high key): low must not exceed high.
ORDERED = [("snr_low", "snr_high")]
# (key, longer key, why): a warning when key's value exceeds the longer key's.
WARN_LONGER = [("crop_dur", "seg_dur", "training crops are cut from rows of seg_dur seconds: a longer crop is "
                "the whole row")]

# (key, condition, other key, rule): when ``key``'s value passes ``condition``, ``other key`` must pass
# ``rule`` (a YAML without the other key fails: e.g. unlabelled data in a stage without ``supervision``).
IMPLIED = [
    ("dataset", one_of(("unlabelled",)), "supervision", one_of(("none",))),
    ("stage", one_of(("stage2",)), "base_model",
     Rule(lambda v: v is not None, "a base model (a stage folder, an export, a SpeechBrain model folder or a hub ID)")),
    ("dataset", one_of(("unlabelled",)), "verification_folders",
     Rule(lambda v: isinstance(v, list) and bool(v), "at least one folder of speakers (for the trials)")),
    ("supervision", one_of(("none",)), "anchor_weight", POSITIVE),
    ("supervision", one_of(("none",)), "dev_criterion", one_of(("anchor_retrieval",))),
    ("dev_criterion", one_of(("anchor_retrieval",)), "dev_noisy_copies", Rule(lambda v: v is True, "True")),
    ("replay_rows", integer(1), "replay_folders",
     Rule(lambda v: isinstance(v, list) and bool(v), "at least one folder of audio")),
]

# Keys that only shape the classifier (AAM head): a label-free stage refuses them set away from its defaults.
CLASSIFIER_ONLY_KEYS = ("classifier_head", "aam_margin", "aam_scale")


def implied_conflict(values):
    """The first ``(key, other key, rule)`` of :data:`IMPLIED` that ``values`` break, or None."""
    for key, condition, other, rule in IMPLIED:
        if key in values and not tagged(values[key]) and condition.test(plain(values[key])):
            if other not in values or (not tagged(values[other]) and not rule.test(plain(values[other]))):
                return key, other, rule
    return None


def label_free_conflict(defaults, values):
    """The first classifier-only key set away from its default when ``supervision`` is ``none``, or None.

    Arguments
    ---------
    defaults : mapping
        The YAML file's own values.
    values : mapping
        The values after the overrides.
    """
    if plain(values.get("supervision")) != "none":
        return None
    for key in CLASSIFIER_ONLY_KEYS:
        if key in values and key in defaults and plain(values[key]) != plain(defaults[key]):
            return key
    return None


def tagged(value):
    """True for a ``!new:``/``!PLACEHOLDER`` ... node: built or filled in later, not a plain value."""
    return str(getattr(getattr(value, "tag", None), "value", None) or "").startswith("!")


def plain(value):
    """ruamel's round-trip scalars and sequences as plain Python values (for the tests and the message)."""
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
