"""Loading HyperPyYAML files with errors that name the file and the key.

A stage YAML's top-level ``!include:`` (``common: !include:common.yaml``) is
merged into its top level (:func:`merged_tree`), so the shared keys and the
stage's own form one namespace. HyperPyYAML already rejects unknown override
keys; this adds the YAML file and line for syntax errors, a type check of overrides against the file's
defaults (``--number_of_epochs=abc`` is an error, not a string), a range
check of every key's value (the table in :mod:`anchor_reg.checks`) before
anything is built, and an early check that the output folder can be written.
"""
import io
import logging
import os
import pathlib

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

from anchor_reg.checks import ORDERED, RANGES, WARN_LONGER, implied_conflict, label_free_conflict, plain, tagged
from anchor_reg.errors import ConfigError

logger = logging.getLogger(__name__)


def _read_yaml(text, source):
    """Round-trip parse (tags kept) with errors naming ``source`` and the line."""
    try:
        return ruamel.yaml.YAML(typ="rt").load(text)
    except ruamel.yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from err


def parse_overrides(overrides):
    """Overrides (a YAML string, as ``sb.parse_arguments`` returns, or a dict) → dict."""
    if isinstance(overrides, dict):
        return dict(overrides)
    if not overrides:
        return {}
    parsed = _read_yaml(overrides, "command-line overrides")
    return dict(parsed or {})


def _kind(value):
    """Coarse type of a YAML scalar default, or None when anything goes."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        return float
    if isinstance(value, str) and not getattr(value, "tag", None):
        return str
    if isinstance(value, list):
        return list
    return None


def check_override_types(defaults, overrides, source):
    """Raises :class:`ConfigError` for unknown keys or values of the wrong type.

    Arguments
    ---------
    defaults : mapping
        Top level of the YAML file (round-trip parsed).
    overrides : dict
        Keys and values given on the command line.
    source : str
        The YAML file, for the message.
    """
    for key, value in overrides.items():
        if key not in defaults:
            known = ", ".join(sorted(k for k in defaults if not str(k).startswith("__")))
            raise ConfigError(f"{source}: unknown key '{key}' in the overrides (known keys: {known})")
        default = defaults[key]
        if getattr(default, "tag", None) is not None and str(default.tag.value or "").startswith("!"):
            continue  # a !ref / !new node: any replacement is the user's call
        expected = _kind(default)
        if expected is None or value is None:
            continue
        got = _kind(value)
        if expected is float and isinstance(value, bool):
            got = bool
        if got != expected and not (expected is str and isinstance(value, (int, float))):
            raise ConfigError(
                f"{source}: key '{key}' expects a {expected.__name__} like {default!r}, "
                f"got {value!r} ({type(value).__name__})"
            )


def include_of(node):
    """The file a top-level ``!include:FILE`` node names, or None."""
    tag = str(getattr(getattr(node, "tag", None), "value", None) or "")
    return tag[len("!include:"):] if tag.startswith("!include:") else None


def merged_tree(hparams_file, merge=True):
    """The stage YAML with its top-level ``!include:`` files merged into its top level (round-trip nodes).

    A stage YAML says ``common: !include:common.yaml`` (with the included file's
    keys it sets, e.g. ``stage: stage2``, as the node's mapping): the included
    keys come first, then the stage's own, in one namespace, so references go
    both ways and overrides reach every key. A key defined twice is an error.
    Includes inside the included file (``model: !include:model.yaml`` in
    common.yaml) keep HyperPyYAML's meaning: the included YAML is that key's value.
    """
    path = pathlib.Path(hparams_file)
    if not path.is_file():
        raise ConfigError(f"hyperparameter file {path} does not exist")
    tree = _read_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    if not merge:
        return tree
    merged = ruamel.yaml.comments.CommentedMap()
    for key, node in tree.items():
        included = include_of(node)
        if included is None:
            continue
        shared = merged_tree(path.parent / included, merge=False)
        given = dict(node) if isinstance(node, dict) else {}
        unknown = sorted(set(given) - set(shared))
        if unknown:
            raise ConfigError(f"{path}: '{key}' sets {unknown}, which {included} does not define")
        shared.update(given)
        merged.update(shared)
    for key, node in tree.items():
        if include_of(node) is not None:
            continue
        if key in merged:
            raise ConfigError(f"{path}: key '{key}' is also defined by an included file: define it once")
        merged[key] = node
    return merged


def yaml_stream(tree, name):
    """A tree's YAML text as a stream named ``name`` (``!include`` nodes left in it resolve beside it)."""
    stream = io.StringIO(dump(tree))
    stream.name = str(name)
    return stream


def resolve(hparams_file, overrides=None):
    """The YAML with overrides applied and references resolved (nothing built), checked key by key.

    Returns
    -------
    ruamel.yaml.comments.CommentedMap
        Every key at the top level; ``!new:`` and ``!apply:`` nodes stay tagged.
        Raises :class:`ConfigError` for an unknown or ill-typed override or a
        value out of its range (:mod:`anchor_reg.checks`).
    """
    path = pathlib.Path(hparams_file)
    overrides = parse_overrides(overrides)
    tree = merged_tree(path)
    check_override_types(tree, overrides, str(path))
    defaults = dict(tree)
    nodes = {key: value for key, value in overrides.items() if tagged(value)}  # whole nodes replace the YAML's
    tree.update(nodes)
    values = {key: value for key, value in overrides.items() if key not in nodes}
    try:
        resolved = _read_yaml(resolve_references(yaml_stream(tree, path), values).getvalue(), str(path))
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        raise ConfigError(f"{path}: cannot resolve the hyperparameters: {type(err).__name__}: {err}") from err
    check_values(resolved, str(path))
    check_label_free(defaults, resolved, str(path))
    return resolved


def plain_values(tree):
    """``{key: value}`` of a resolved tree's untagged entries as plain Python values (locations, numbers ...)."""
    return {str(key): plain(value) for key, value in tree.items() if not tagged(value) and not str(key).startswith("__")}


def dump(tree):
    """The YAML text of a (resolved) tree."""
    stream = io.StringIO()
    ruamel.yaml.YAML(typ="rt").dump(tree, stream)
    return stream.getvalue()


def model_nodes(yaml_file, keys):
    """``{key: node}`` of a SpeechBrain YAML's ``keys``, references resolved, tags intact (nothing built).

    Raises :class:`ConfigError` naming the keys the file lacks.
    """
    path = pathlib.Path(yaml_file)
    try:
        with open(path, encoding="utf-8") as stream:
            tree = ruamel.yaml.YAML().load(resolve_references(stream).getvalue())
    except Exception as err:
        raise ConfigError(f"cannot parse {path}: {' '.join(str(err).split())[:300]}") from err
    missing = [key for key in keys if key not in (tree or {})]
    if missing:
        raise ConfigError(f"{path} has no key(s): {', '.join(missing)}")
    return {key: tree[key] for key in keys}


def check_values(values, source):
    """Raises :class:`ConfigError` for the first key whose value is out of its range.

    Arguments
    ---------
    values : mapping
        Top level of the YAML (overrides applied, references resolved).
    source : str
        The YAML file, for the message.
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


def check_label_free(defaults, values, source):
    """Refuses a classifier-only key (``classifier_head``, ``aam_margin`` ...) set away from the YAML's
    default in a label-free stage (``supervision: none``), which has no classifier."""
    key = label_free_conflict(defaults, values)
    if key is not None:
        raise ConfigError(
            f"{source}: key '{key}' shapes the classifier, but supervision is none (no classifier, no AAM): "
            f"drop --{key} (got {plain(values[key])!r}, default {plain(defaults[key])!r})"
        )


def load_hparams(hparams_file, overrides=None):
    """Loads a stage YAML (includes merged, :func:`merged_tree`) with overrides, naming the file/key on any error.

    Every key is checked (:func:`resolve`) before anything is built; the YAML
    is then built once, with ``load_hyperpyyaml``.

    Arguments
    ---------
    hparams_file : str | pathlib.Path
        The YAML file.
    overrides : str | dict
        Overrides (``sb.parse_arguments``'s YAML string, or a dict); a tagged
        YAML node (``!new:...``, e.g. a base model's own ``embedding_model``)
        replaces the key's node whole.

    Returns
    -------
    dict
        The instantiated hyperparameters.
    """
    path = pathlib.Path(hparams_file)
    resolved = resolve(path, overrides)
    try:
        return load_hyperpyyaml(io.StringIO(dump(resolved)))
    except OSError as err:  # e.g. the Checkpointer creating an output folder it cannot write
        raise ConfigError(
            f"output_folder: cannot write to {err.filename} ({err.strerror}); "
            f"check output_base / output_folder in {path} or on the command line"
        ) from err
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as err:
        raise ConfigError(f"{path}: cannot build the hyperparameters: {type(err).__name__}: {err}") from err


def keys_of(hparams_file):
    """Top-level keys of a YAML file, its included files' too (without instantiating it)."""
    return set(merged_tree(hparams_file))


def overrides_for(hparams_file, overrides):
    """The subset of ``overrides`` whose keys ``hparams_file`` defines."""
    keys = keys_of(hparams_file)
    return {k: v for k, v in parse_overrides(overrides).items() if k in keys}


def check_writable(folder, key="output_folder"):
    """Creates ``folder`` and writes a probe file, or raises naming ``key``."""
    folder = pathlib.Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{key}: cannot write to {folder} ({err.strerror or err})") from err
