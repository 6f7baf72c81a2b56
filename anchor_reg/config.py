"""Loading HyperPyYAML files: includes merged, overrides type-checked, every key range-checked
(:mod:`anchor_reg.checks`) before anything is built, and errors that name the file, line and key."""
import io
import os
import pathlib

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

from anchor_reg.checks import check_values, plain, tag_of, tagged
from anchor_reg.errors import ConfigError


def _read_yaml(text, source):
    """Round-trip parse (tags kept) with errors naming ``source`` and the line."""
    try:
        return ruamel.yaml.YAML(typ="rt").load(text)
    except ruamel.yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from err


def _read_file(path):
    """A YAML file's top level (round-trip nodes)."""
    if not path.is_file():
        raise ConfigError(f"hyperparameter file {path} does not exist")
    tree = _read_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return tree


def parse_overrides(overrides):
    """Overrides (a YAML string, as ``sb.parse_arguments`` returns, or a dict) as a dict."""
    if isinstance(overrides, dict):
        return dict(overrides)
    return dict(_read_yaml(overrides, "command-line overrides") or {}) if overrides else {}


def _kind(value):
    """Coarse type of a YAML scalar default, or None when anything goes."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        return float
    if isinstance(value, str) and not getattr(value, "tag", None):
        return str
    return list if isinstance(value, list) else None


def check_override_types(defaults, overrides, source):
    """Raises :class:`ConfigError` for an override key the YAML (top level ``defaults``) lacks, or of the wrong
    type (``--number_of_epochs=abc``); a ``!ref``/``!new`` node's replacement is the user's call."""
    for key, value in overrides.items():
        if key not in defaults:
            known = ", ".join(sorted(k for k in defaults if not str(k).startswith("__")))
            raise ConfigError(f"{source}: unknown key '{key}' in the overrides (known keys: {known})")
        default, expected, got = defaults[key], _kind(defaults[key]), _kind(value)
        if tagged(default) or expected is None or value is None:
            continue
        if got != expected and not (expected is str and isinstance(value, (int, float))):
            raise ConfigError(f"{source}: key '{key}' expects a {expected.__name__} like {default!r}, "
                              f"got {value!r} ({type(value).__name__})")


def include_of(node):
    """The file a top-level ``!include:FILE`` node names, or None."""
    tag = tag_of(node)
    return tag[len("!include:"):] if tag.startswith("!include:") else None


def merged_tree(hparams_file):
    """The stage YAML's top level with its top-level ``!include:`` files' keys merged first (round-trip nodes);
    a key defined twice is an error; deeper includes keep HyperPyYAML's meaning."""
    path = pathlib.Path(hparams_file)
    tree, merged = _read_file(path), ruamel.yaml.comments.CommentedMap()
    for key, node in tree.items():
        included = include_of(node)
        if included is not None:
            shared, given = _read_file(path.parent / included), dict(node) if isinstance(node, dict) else {}
            unknown = sorted(set(given) - set(shared))
            if unknown:
                raise ConfigError(f"{path}: '{key}' sets {unknown}, which {included} does not define")
            shared.update(given)
            merged.update(shared)
    for key, node in tree.items():
        if include_of(node) is None:
            if key in merged:
                raise ConfigError(f"{path}: key '{key}' is also defined by an included file: define it once")
            merged[key] = node
    return merged


def resolve(hparams_file, overrides=None):
    """The YAML's top level, overrides applied and references resolved, every key checked; nothing built
    (nodes stay tagged; a tagged override replaces the key's node whole)."""
    path = pathlib.Path(hparams_file)
    overrides, tree = parse_overrides(overrides), merged_tree(path)
    check_override_types(tree, overrides, str(path))
    defaults = dict(tree)
    tree.update({key: value for key, value in overrides.items() if tagged(value)})
    stream = io.StringIO(dump(tree))
    stream.name = str(path)  # !include nodes left in it resolve beside the file
    try:
        text = resolve_references(stream, {k: v for k, v in overrides.items() if not tagged(v)}).getvalue()
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        raise ConfigError(f"{path}: cannot resolve the hyperparameters: {type(err).__name__}: {err}") from err
    resolved = _read_yaml(text, str(path))
    check_values(resolved, defaults, str(path))
    return resolved


def build(resolved, hparams_file):
    """A tree from :func:`resolve`, instantiated (``load_hyperpyyaml``), naming the file or folder on failure."""
    try:
        return load_hyperpyyaml(io.StringIO(dump(resolved)))
    except OSError as err:  # e.g. the Checkpointer creating an output folder it cannot write
        raise ConfigError(f"output_folder: cannot write to {err.filename} ({err.strerror}); "
                          f"check output_base / output_folder in {hparams_file} or on the command line") from err
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as err:
        raise ConfigError(f"{hparams_file}: cannot build the hyperparameters: {type(err).__name__}: {err}") from err


def load_hparams(hparams_file, overrides=None):
    """A stage YAML with overrides (a string or a dict), every key checked, then built once."""
    return build(resolve(hparams_file, overrides), hparams_file)


def plain_values(tree):
    """``{key: value}`` of a resolved tree's untagged entries as plain Python values."""
    return {str(key): plain(value) for key, value in tree.items() if not tagged(value) and not str(key).startswith("__")}


def dump(tree):
    """The YAML text of a (resolved) tree."""
    stream = io.StringIO()
    ruamel.yaml.YAML(typ="rt").dump(tree, stream)
    return stream.getvalue()


def model_nodes(yaml_file, keys):
    """``{key: node}`` of a SpeechBrain YAML's ``keys``, references resolved, tags intact (nothing built)."""
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


def keys_of(hparams_file):
    """Top-level keys of a YAML file, its included files' too (nothing built)."""
    return set(merged_tree(hparams_file))


def overrides_for(hparams_file, overrides):
    """The subset of ``overrides`` whose keys ``hparams_file`` defines."""
    keys = keys_of(hparams_file)
    return {k: v for k, v in parse_overrides(overrides).items() if k in keys}


def check_writable(folder, key="output_folder"):
    """Creates ``folder`` and writes a probe file in it, or raises :class:`ConfigError` naming ``key``."""
    folder = pathlib.Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{key}: cannot write to {folder} ({err.strerror or err})") from err
