"""The expected errors of anchor_reg: bad input that stops a run with one clear line.

Command lines turn each of these into a single ``error:`` line naming the file
or key (``train.py``'s ``cli()``, ``python -m anchor_reg.export``, ``python -m
anchor_reg.evaluate``); anything else is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A configuration problem: bad YAML, unknown or ill-typed key, unwritable folder."""


class StageLockedError(ConfigError):
    """Another process is training in the stage folder (``output_folder`` is taken)."""


class AudioError(ValueError):
    """A bad audio file; the message names the file(s) and the problem(s).

    Arguments
    ---------
    message : str
        The full message.
    problems : dict, optional
        ``{path: problem}`` for every bad file the message is about.
    """

    def __init__(self, message, problems=None):
        super().__init__(message)
        self.problems = dict(problems or {})


class AnchorStoreError(RuntimeError):
    """An anchor store that is unreadable, stale or does not match the run."""


class ProvenanceError(RuntimeError):
    """Checkpoints (or a base model) that were made from something else than this run uses."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only folder ...)."""


class ResultsError(ValueError):
    """A results file that cannot be read or does not look like results."""


class ExportError(Exception):
    """An expected failure of an export (bad input, refused overwrite)."""


class WiseError(ValueError):
    """A stage that cannot be interpolated with its base (no base, another base, no dev anchors)."""


class HubError(Exception):
    """An expected failure of a push: no token, existing repository, hub unreachable."""


def one_line(err, limit=300):
    """An exception (or message) squeezed onto one line, cut after ``limit`` characters (None: not cut).

    Example
    -------
    >>> one_line(ValueError("bad\\n  value"))
    'bad value'
    """
    return " ".join(str(err).split())[:limit]
