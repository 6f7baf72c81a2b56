"""One training run per stage folder: an exclusive ``flock`` held while a stage trains.

Two runs writing one stage folder would prune each other's checkpoints. The
first run holds ``<folder>/.stage.lock`` (an exclusive ``flock``, with its
process ID written in the file); a second run finds it taken and stops at once,
naming the folder and the other process. The kernel drops a ``flock`` when its
holder exits, however it exits (a SIGKILL included), so a killed run never
leaves a folder locked: the next run takes the lock over. A run that ends
normally removes the file.

Only the main process of a multi-GPU run takes the lock (the other ranks are
the same run).

Example
-------
>>> folder = getfixture("tmp_path") / "stage1"
>>> with stage_lock(folder):
...     (folder / ".stage.lock").read_text().strip() == str(os.getpid())
True
>>> (folder / ".stage.lock").exists()
False
"""
import contextlib
import fcntl
import os
import pathlib

from speechbrain.utils.distributed import if_main_process

from anchor_reg.errors import StageLockedError

LOCK_FILE = ".stage.lock"


@contextlib.contextmanager
def stage_lock(folder):
    """Holds the stage folder's lock for the block; raises :class:`StageLockedError` if another run holds it.

    Arguments
    ---------
    folder : str or pathlib.Path
        The stage's ``output_folder`` (made if missing).
    """
    if not if_main_process():
        yield
        return
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = _acquire(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiting run then opens a new file
        os.close(fd)  # releases the lock


def _acquire(path):
    """An open descriptor of ``path`` holding its exclusive flock (the file is the one at ``path`` now)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StageLockedError(
                f"output_folder: {path.parent} is in use by another run "
                f"(process {holder or 'unknown'}, lock file {path}); wait for that run to finish or stop it "
                f"(kill {holder or 'PID'}), or train into another folder (--experiment_name=NEW or --output_folder=NEW)"
            ) from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # removed by the holder that just finished
            same_file = False
        if same_file:
            return fd
        os.close(fd)  # locked a file its holder had already removed: lock the new one


def _read_pid(fd):
    """The process ID written in the lock file ('' when it is not written yet)."""
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
