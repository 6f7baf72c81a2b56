"""Loading HyperPyYAML files with errors that name the file and the key.

HyperPyYAML already rejects unknown override keys; this adds the YAML file
and line for syntax errors, a type check of overrides against the file's
defaults (``--number_of_epochs=abc`` is an error, not a string), a range
check of every key's value (the table in :mod:`anchor_reg.checks`) before
anything is built, and an early check that the output folder can be written.
"""
import io
import os
import pathlib
import re

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

from anchor_reg.checks import ORDERED, RANGES, implied_conflict, label_free_conflict, plain, tagged


class ConfigError(ValueError):
    """A configuration problem: bad YAML, unknown or ill-typed key, unwritable folder."""


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


def yaml_stream(hparams_file, model_file=None):
    """The YAML text as a stream named after the file (``!include`` resolves beside it).

    Arguments
    ---------
    hparams_file : str | pathlib.Path
        The YAML file.
    model_file : str | pathlib.Path
        Include this file as ``model:`` instead of the one the YAML names
        (a base model's own definition, see :mod:`anchor_reg.base`).
    """
    path = pathlib.Path(hparams_file)
    text = path.read_text(encoding="utf-8")
    if model_file is not None:
        text = re.sub(r"^model: *!include:\S+", f"model: !include:{pathlib.Path(model_file).resolve()}", text,
                      flags=re.M)
    stream = io.StringIO(text)
    stream.name = str(path)
    return stream


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
    if isinstance(values.get("stage1_overrides"), dict):  # stage 2 passes them to stage 1: check them now
        check_values(values["stage1_overrides"], f"{source} (stage1_overrides)")


def check_label_free(defaults, values, source):
    """Refuses a classifier-only key (``classifier_head``, ``aam_margin`` ...) set away from the YAML's
    default in a label-free stage (``supervision: none``), which has no classifier."""
    key = label_free_conflict(defaults, values)
    if key is not None:
        raise ConfigError(
            f"{source}: key '{key}' shapes the classifier, but supervision is none (no classifier, no AAM): "
            f"drop --{key} (got {plain(values[key])!r}, default {plain(defaults[key])!r})"
        )


def load_hparams(hparams_file, overrides=None, model_file=None):
    """Loads a HyperPyYAML file with overrides, naming the file/key on any error.

    Arguments
    ---------
    hparams_file : str | pathlib.Path
        The YAML file.
    overrides : str | dict
        Overrides (``sb.parse_arguments``'s YAML string, or a dict).
    model_file : str | pathlib.Path
        See :func:`yaml_stream`.

    Returns
    -------
    dict
        The instantiated hyperparameters.
    """
    path = pathlib.Path(hparams_file)
    if not path.is_file():
        raise ConfigError(f"hyperparameter file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    defaults = _read_yaml(text, str(path)) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    overrides = parse_overrides(overrides)
    check_override_types(defaults, overrides, str(path))
    try:
        resolved = resolve_references(yaml_stream(path, model_file), overrides).getvalue()
        values = _read_yaml(resolved, str(path))
        check_values(values, str(path))
        check_label_free(defaults, values, str(path))
        return load_hyperpyyaml(yaml_stream(path, model_file), overrides)
    except ConfigError:
        raise
    except OSError as err:  # e.g. the Checkpointer creating an output folder it cannot write
        raise ConfigError(
            f"output_folder: cannot write to {err.filename} ({err.strerror}); "
            f"check output_base / output_folder in {path} or on the command line"
        ) from err
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as err:
        raise ConfigError(f"{path}: cannot build the hyperparameters: {type(err).__name__}: {err}") from err


def keys_of(hparams_file):
    """Top-level keys of a YAML file (without instantiating it)."""
    path = pathlib.Path(hparams_file)
    return set(_read_yaml(path.read_text(encoding="utf-8"), str(path)) or {})


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
