"""The expected errors: bad input that the command lines print as one ``error:`` line naming the file or key
(any other exception is a bug and keeps its traceback)."""


class ConfigError(ValueError):
    """A configuration problem: bad YAML, unknown, ill-typed or out-of-range key, unwritable folder."""


class StageLockedError(ConfigError):
    """Another process is training in the stage folder (``output_folder`` is taken)."""


class AudioError(ValueError):
    """A bad audio file; ``problems`` is ``{path: problem}`` of every bad file the message is about."""

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
    """An exception (or message) on one line, cut after ``limit`` characters (None: not cut)."""
    return " ".join(str(err).split())[:limit]
