"""The model of a SpeechBrain speaker-model YAML, read without building it.

A training YAML (a stage's ``hyperparams.yaml``) or an inference one (a hub
model's) defines the model as four nodes, :data:`MODEL_KEYS`. The export
copies them, tags intact, into its inference YAML; a base model loaded from a
folder or the hub gives them to the stage-2 copy.
"""
import io

import ruamel.yaml
from hyperpyyaml import resolve_references
from ruamel.yaml.nodes import MappingNode, SequenceNode

from anchor_reg.errors import ConfigError, one_line

MODEL_KEYS = ("compute_features", "mean_var_norm", "embedding_model", "classifier")


def load_model_yaml(path):
    """Parses a speaker-model YAML without instantiating it.

    Returns
    -------
    tree : dict
        The resolved YAML (values as ruamel round-trip objects).
    model_text : str
        The YAML text of the model nodes, tags intact, comments dropped.

    Raises
    ------
    ConfigError
        Naming ``path``: unparsable, or a model node missing.
    """
    yaml = ruamel.yaml.YAML()
    try:
        with open(path, encoding="utf-8") as fin:
            resolved = resolve_references(fin).getvalue()
        tree = yaml.load(resolved)
        root = yaml.compose(resolved)
    except Exception as err:
        raise ConfigError(f"cannot parse {path}: {one_line(err)}") from err
    missing = [key for key in MODEL_KEYS if key not in (tree or {})]
    if missing:
        raise ConfigError(f"{path} has no key(s): {', '.join(missing)}")
    pairs = [(k, v) for k, v in root.value if k.value in MODEL_KEYS]
    for key, value in pairs:
        _strip_node(key)
        _strip_node(value)
    stream = io.StringIO()
    yaml.serialize(MappingNode("tag:yaml.org,2002:map", pairs), stream)
    return tree, stream.getvalue()


def _strip_node(node):
    """Drops comments and anchor names from a composed YAML node, in place."""
    node.comment = None
    node.anchor = None
    if isinstance(node, MappingNode):
        for key, value in node.value:
            _strip_node(key)
            _strip_node(value)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _strip_node(item)


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
