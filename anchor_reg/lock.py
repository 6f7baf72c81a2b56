"""Exclusive ``flock``s, dropped by the kernel however their holder exits (SIGKILL too): one run per stage
folder (``<folder>/.stage.lock``, refused while held); one writer at a time of a shared folder (waited for)."""
import contextlib
import fcntl
import os
import pathlib

from speechbrain.utils.distributed import if_main_process

from anchor_reg.errors import StageLockedError

LOCK_FILE = ".stage.lock"


@contextlib.contextmanager
def stage_lock(folder):
    """Holds ``folder``'s lock (the file holds our PID) for the block; StageLockedError naming the holder."""
    if not if_main_process():
        yield
        return
    path = pathlib.Path(folder) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiting run then opens a new file
        os.close(fd)  # releases the lock


def _acquire(path):
    """An open descriptor of the file now at ``path``, holding its exclusive flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()  # '' until the holder writes it
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


@contextlib.contextmanager
def waiting_lock(path):
    """Holds an exclusive ``flock`` on the file ``path`` (in an existing folder), waiting while another holds it."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
