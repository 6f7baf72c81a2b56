"""One training run per stage folder (anchor_reg.lock), held by another process."""
import os
import signal
import subprocess
import sys
import time

import pytest

from anchor_reg.errors import StageLockedError
from anchor_reg.lock import LOCK_FILE, stage_lock
from tests.tiny import REPO, refused

HOLD = """
import sys, time
from anchor_reg.lock import stage_lock
with stage_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Starts a process that holds a folder's lock; yields (folder, process), killed at the end."""
    started = []

    def start(folder):
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_second_run_stops_naming_folder_and_process(tmp_path, holder):
    folder = tmp_path / "my results" / "ñandú stage1"
    other = holder(folder)
    with pytest.raises(StageLockedError) as err:
        with stage_lock(folder):
            pytest.fail("the lock was taken twice")
    message = str(err.value)
    assert message.startswith(f"output_folder: {folder} is in use by another run (process {other.pid},")
    assert "\n" not in message


def test_a_killed_holder_leaves_the_folder_free(tmp_path, holder):
    folder = tmp_path / "stage2"
    other = holder(folder)
    os.kill(other.pid, signal.SIGKILL)  # no cleanup runs: the lock file stays, the kernel drops the flock
    other.wait()
    assert (folder / LOCK_FILE).read_text().strip() == str(other.pid)
    with stage_lock(folder):
        assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_FILE).exists()


def test_lock_is_released_when_the_block_raises(tmp_path):
    folder = tmp_path / "stage1"
    with pytest.raises(KeyError):
        with stage_lock(folder):
            raise KeyError("boom")
    with stage_lock(folder):  # not held any more
        pass


def test_train_refuses_a_stage_folder_in_use(tmp_path, holder):
    folder = tmp_path / "results" / "default" / "1986" / "stage1"  # <output_base>/<experiment_name>/<seed>/stage1
    other = holder(folder)
    start = time.monotonic()
    line = refused("stage1.yaml", tmp_path)
    assert line.startswith(f"error: output_folder: {folder} is in use by another run (process {other.pid},")
    assert not (folder / "hyperparams.yaml").exists() and not list(folder.glob("save/CKPT+*"))  # nothing trained
    assert time.monotonic() - start < 60


def test_a_shared_pipeline_step_waits_for_the_run_making_it(tmp_path):
    """The prepared data and a base's anchors are made by one run: a second run waits, then reuses them."""
    import threading

    from anchor_reg.pipeline import shared_step

    order, first_in = [], threading.Event()

    def make(name, hold):
        with shared_step(tmp_path / "anchors", "anchors"):
            order.append(f"{name} in")
            first_in.set()
            time.sleep(hold)
            order.append(f"{name} out")

    first = threading.Thread(target=make, args=("first", 0.5))
    first.start()
    first_in.wait(10)
    make("second", 0)  # blocks until the first has left
    first.join()
    assert order == ["first in", "first out", "second in", "second out"]
