"""The range of every recipe key, in one table, and :func:`check_values`, which applies it before any work."""
import collections
import logging
import math

from anchor_reg.anchors import ANCHOR_TYPES
from anchor_reg.data.prepare import DATASETS
from anchor_reg.errors import ConfigError
from anchor_reg.heads import HEADS
from anchor_reg.losses import DISTANCES, OBJECTIVES, WeightSchedule

logger = logging.getLogger(__name__)
Rule = collections.namedtuple("Rule", "test wants")


def integer(low):
    """An int (not a bool) >= ``low``."""
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low, f"an integer >= {low}")


def number(low=-math.inf, high=math.inf, *, open_low=False, open_high=False):
    """A finite number in the interval (``open_*``: that end excluded)."""
    def test(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    if high < math.inf:
        wants = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    else:
        wants = f"a number {'>' if open_low else '>='} {low}" if low > -math.inf else "a finite number"
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


POSITIVE, NON_NEGATIVE = number(0, open_low=True), number(0)
MAX_NEGATIVES = 65536
EVAL_NOISE_TYPES = ("noise", "music", "babble")
FOLDERS = list_of(Rule(lambda v: isinstance(v, str) and bool(v), ""), "a list of folders")
NONEMPTY = Rule(lambda v: isinstance(v, list) and bool(v), "")

RANGES = {
    # closed sets
    "stage": one_of(("stage1", "stage2", "joint")),
    "dataset": one_of(DATASETS),
    "supervision": one_of(("labelled", "none")),
    "dev_criterion": one_of(("classification", "anchor_retrieval")),
    "anchor_type": one_of(ANCHOR_TYPES),
    "anchor_weight_schedule_kind": one_of(WeightSchedule.KINDS),
    "classifier_head": one_of(HEADS),
    **dict.fromkeys(("anchor_distance", "consistency_distance"), one_of(DISTANCES)),
    **dict.fromkeys(("anchor_objective", "replay_objective"), one_of(OBJECTIVES)),
    # counts
    **dict.fromkeys(("seed", "data_seed", "num_workers", "ckpt_interval_steps", "anchor_weight_warmup_epochs",
                     "replay_rows", "replay_dev_rows", "num_train_speakers"), integer(0)),
    **dict.fromkeys(("number_of_epochs", "stage1_epochs", "stage2_epochs", "early_stop_patience", "batch_size",
                     "anchor_batch_size", "eval_batch_size", "keep_checkpoints", "noisy_copies", "babble_mixtures",
                     "n_mels", "emb_dim", "cohort_size", "norm_topk"), integer(1)),
    **dict.fromkeys(("synthetic_utts_per_speaker", "synthetic_noises"), integer(2)),
    "synthetic_speakers": integer(3),
    "channels": integer(4),
    "sample_rate": integer(8000),
    "max_trials": optional(integer(1)),
    "verification_speakers": Rule(_verification_speakers,
                                  "an integer >= 2, a fraction in (0, 1) or a list of >= 2 speaker ids"),
    "contrastive_negatives": Rule(lambda v: integer(0).test(v) and v <= MAX_NEGATIVES,
                                  f"an integer in [0, {MAX_NEGATIVES}] (the anchors of the store bound it too)"),
    # numbers
    **dict.fromkeys(("seg_dur", "lr", "contrastive_scale"), POSITIVE),
    **dict.fromkeys(("test_seg_dur", "crop_dur"), optional(POSITIVE)),
    **dict.fromkeys(("lr_final", "weight_decay", "anchor_weight", "anchor_weight_final", "consistency_weight",
                     "replay_weight", "l2sp_weight"), NON_NEGATIVE),
    **dict.fromkeys(("snr_low", "snr_high"), number()),
    "dev_ratio": number(0, 1, open_low=True, open_high=True),
    "contrastive_margin": number(0, 1),
    # lists
    **dict.fromkeys(("eval_snrs", "snrs"), list_of(number(), "a list of numbers")),
    "eval_noise_types": list_of(one_of(EVAL_NOISE_TYPES), f"a list drawn from {', '.join(EVAL_NOISE_TYPES)}"),
    **dict.fromkeys(("verification_folders", "replay_folders"), FOLDERS),
}

# (low key, high key): low must not exceed high.
ORDERED = [("snr_low", "snr_high")]
# (key, longer key, why): a warning when key's value exceeds the longer key's.
WARN_LONGER = [("crop_dur", "seg_dur", "training crops are cut from rows of seg_dur seconds: a longer crop is "
                "the whole row")]
# (key, condition, other key, rule): when key's value passes condition, other key must pass rule (and exist).
IMPLIED = [
    ("dataset", one_of(("unlabelled",)), "supervision", one_of(("none",))),
    ("stage", one_of(("stage2",)), "base_model",
     Rule(lambda v: v is not None, "a base model (a stage folder, an export, a SpeechBrain model folder or a hub ID)")),
    ("dataset", one_of(("unlabelled",)), "verification_folders",
     NONEMPTY._replace(wants="at least one folder of speakers (for the trials)")),
    ("supervision", one_of(("none",)), "anchor_weight", POSITIVE),
    ("supervision", one_of(("none",)), "dev_criterion", one_of(("anchor_retrieval",))),
    ("dev_criterion", one_of(("anchor_retrieval",)), "dev_noisy_copies", Rule(lambda v: v is True, "True")),
    ("replay_rows", integer(1), "replay_folders", NONEMPTY._replace(wants="at least one folder of audio")),
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
    """The first classifier-only key whose value (``values``) left the YAML's ``defaults`` under
    ``supervision: none``, or None."""
    if plain(values.get("supervision")) != "none":
        return None
    for key in CLASSIFIER_ONLY_KEYS:
        if key in values and key in defaults and plain(values[key]) != plain(defaults[key]):
            return key
    return None


def check_values(values, defaults, source):
    """Raises :class:`ConfigError` naming ``source`` and the first key of ``values`` that breaks a rule.

    ``values``: the YAML's top level, overrides applied and references resolved; ``defaults``: its own.
    """
    for key, rule in RANGES.items():
        if key in values and not tagged(values[key]) and not rule.test(plain(values[key])):
            raise ConfigError(f"{source}: key '{key}' must be {rule.wants}, got {plain(values[key])!r}")
    for low, high in ORDERED:
        if low in values and high in values and values[low] > values[high]:
            raise ConfigError(
                f"{source}: key '{low}' must be <= {high} ({plain(values[high])!r}), got {plain(values[low])!r}"
            )
    conflict = implied_conflict(values)
    if conflict is not None:
        key, other, rule = conflict
        got = f"got {plain(values[other])!r}" if other in values else "this YAML has no such key"
        raise ConfigError(f"{source}: key '{other}' must be {rule.wants} when {key} is {plain(values[key])!r} ({got})")
    for key, longer, why in WARN_LONGER:
        if values.get(key) is not None and values.get(longer) is not None and values[key] > values[longer]:
            logger.warning("%s: %s (%s) is longer than %s (%s): %s", source, key, plain(values[key]), longer,
                           plain(values[longer]), why)
    key = label_free_conflict(defaults, values)
    if key is not None:
        raise ConfigError(
            f"{source}: key '{key}' shapes the classifier, but supervision is none (no classifier, no AAM): "
            f"drop --{key} (got {plain(values[key])!r}, default {plain(defaults[key])!r})"
        )


def tag_of(node):
    """A YAML node's tag (``!new:...``, ``!include:...``) or ''."""
    return str(getattr(getattr(node, "tag", None), "value", None) or "")


def tagged(value):
    """True for a ``!new:``/``!PLACEHOLDER`` ... node: built or filled in later, not a plain value."""
    return tag_of(value).startswith("!")


def plain(value):
    """ruamel's round-trip scalars and sequences as plain Python values."""
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return [plain(v) for v in value] if isinstance(value, list) else value
