"""The early-stopping counter survives a checkpoint: a resumed run remembers its best score and its stop,
and a resumed run given a larger patience trains on as an uninterrupted run with that patience would."""
import sys

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.epoch_counter import EpochCounterWithStopper
from tiny import REPO

sys.path.insert(0, str(REPO))
import train  # noqa: E402


def run(counter, metrics):
    seen = []
    for epoch in counter:
        seen.append(epoch)
        counter.update_metric(metrics[epoch - 1])
    return seen


def test_stopper_state_is_saved_and_recovered(tmp_path):
    counter = EpochCounterWithStopper(limit=10, limit_to_stop=2, limit_warmup=0, direction="min")
    checkpointer = Checkpointer(tmp_path, recoverables={"counter": counter})
    metrics = [0.5, 0.4, 0.45, 0.46, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1]
    assert run(counter, metrics) == [1, 2, 3, 4]  # epochs 3 and 4 do not beat 0.4: stop
    checkpointer.save_checkpoint(end_of_epoch=True)
    resumed = EpochCounterWithStopper(limit=10, limit_to_stop=2, limit_warmup=0, direction="min")
    Checkpointer(tmp_path, recoverables={"counter": resumed}).recover_if_possible()
    assert (resumed.current, resumed.best_limit, resumed.best_score, resumed.should_stop) == (4, 2, 0.4, True)
    assert run(resumed, metrics) == []  # a finished run does not train on


def test_a_larger_patience_continues_a_stopped_run_as_an_uninterrupted_run_would(tmp_path):
    metrics = [0.5, 0.4, 0.45, 0.46, 0.3, 0.2, 0.25, 0.26, 0.27, 0.28]
    stopped = EpochCounterWithStopper(limit=10, limit_to_stop=2, limit_warmup=0, direction="min")
    assert run(stopped, metrics) == [1, 2, 3, 4]
    Checkpointer(tmp_path, recoverables={"counter": stopped}).save_checkpoint(end_of_epoch=True)
    resumed = EpochCounterWithStopper(limit=10, limit_to_stop=3, limit_warmup=0, direction="min")
    Checkpointer(tmp_path, recoverables={"counter": resumed}).recover_if_possible()
    uninterrupted = EpochCounterWithStopper(limit=10, limit_to_stop=3, limit_warmup=0, direction="min")
    # patience 3 trains on after epoch 4; 0.3 and 0.2 improve, then 7, 8, 9 do not: stop after 9
    assert run(uninterrupted, metrics) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert run(resumed, metrics) == [5, 6, 7, 8, 9]
    assert (resumed.best_limit, resumed.best_score) == (uninterrupted.best_limit, uninterrupted.best_score) == (6, 0.2)


def test_a_checkpoint_of_the_plain_counter_still_loads(tmp_path):
    (tmp_path / "counter.ckpt").write_text("8")
    counter = EpochCounterWithStopper(limit=10, limit_to_stop=2, limit_warmup=0, direction="min")
    counter._recover(tmp_path / "counter.ckpt")
    assert counter.current == 8 and not counter.should_stop


@pytest.mark.parametrize("name", ["counter", "epochs"])
def test_finished_checkpoint_reads_the_counter_under_the_name_the_yaml_gives_it(tmp_path, name):
    # a run stopped early after epoch 4 with patience 2 (its best epoch 2), its counter saved as `name`
    stopped = EpochCounterWithStopper(limit=10, limit_to_stop=2, limit_warmup=0, direction="min")
    assert run(stopped, [0.5, 0.4, 0.45, 0.46]) == [1, 2, 3, 4]
    checkpointer = Checkpointer(tmp_path, recoverables={name: stopped, "other": torch.nn.Linear(2, 2)})
    checkpointer.save_checkpoint(meta={"epoch": 4, "stopped_early": True}, end_of_epoch=True)

    def finished(patience):
        return train.finished_checkpoint({
            "save_folder": tmp_path, "number_of_epochs": 10, "early_stop_patience": patience,
            "checkpointer": checkpointer, "epoch_counter": stopped,
        })

    assert finished(2) is not None and finished(2).meta["epoch"] == 4  # stops there again: finished
    assert finished(3) is None  # epochs 3, 4 are 2 without improvement < 3: a larger patience trains on
    assert train.recoverable_name(checkpointer, stopped) == name
    assert train.recoverable_name(checkpointer, object()) is None
