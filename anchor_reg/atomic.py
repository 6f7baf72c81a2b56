"""Atomic file writes: a kill never leaves a half-written file behind.

Everything is written to a temporary file in the destination's folder and
renamed onto the destination (``os.replace``) only once complete.
"""
import contextlib
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to ``path``, renamed onto ``path`` if the block succeeds.

    Example
    -------
    >>> target = getfixture("tmp_path") / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield pathlib.Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text):
    """Writes ``text`` (UTF-8, newlines untranslated) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
