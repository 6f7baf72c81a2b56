"""The model nodes of a SpeechBrain speaker-model YAML, and YAML values as plain Python values.

A training YAML (a stage's ``hyperparams.yaml``) or an inference one (a hub
model's) defines the model as four nodes, :data:`MODEL_KEYS`; the export copies
them, tags intact, into its inference YAML (:func:`anchor_reg.config.model_nodes`).
"""
import ruamel.yaml  # noqa: F401 (used by the doctest)

MODEL_KEYS = ("compute_features", "mean_var_norm", "embedding_model", "classifier")


def plain(node):
    """A round-trip YAML value as comparable plain Python values.

    Scalars become ``int``/``float``/``str`` (``bool`` and None stay), mappings
    dicts, sequences lists, and a tagged node (``!new:...``, ``!ref``,
    ``!PLACEHOLDER``) the pair ``(tag, plain value)``; comments and anchors
    are dropped.

    Example
    -------
    >>> plain(ruamel.yaml.YAML(typ="rt").load("a: [1, 2.5]\\nb: !ref <a>"))
    {'a': [1, 2.5], 'b': ('!ref', '<a>')}
    """
    tag = getattr(getattr(node, "tag", None), "value", None)
    tag = tag if tag and tag.startswith("!") else None
    if tag and not isinstance(node, (dict, list)):
        node = getattr(node, "value", node)
    if isinstance(node, dict):
        value = {str(k): plain(v) for k, v in node.items()}
    elif isinstance(node, list):
        value = [plain(v) for v in node]
    elif isinstance(node, bool) or node is None:
        value = node
    else:
        value = next((kind(node) for kind in (int, float, str) if isinstance(node, kind)), node)
    return (tag, value) if tag else value
