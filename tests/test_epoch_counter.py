"""The early-stopping counter survives a checkpoint: a resumed run remembers its best score and its stop,
and a resumed run given a larger patience trains on as an uninterrupted run with that patience would."""
import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.epoch_counter import EpochCounterWithStopper


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


def test_the_pipeline_counts_a_stage_stopped_early_as_finished_under_its_patience_only(tmp_path):
    from anchor_reg.pipeline import is_finished

    # a run stopped early after epoch 4 with patience 2 (its best epoch 2), its counter saved as common.yaml names it
    stopped = EpochCounterWithStopper(limit=10, limit_to_stop=2, limit_warmup=0, direction="min")
    assert run(stopped, [0.5, 0.4, 0.45, 0.46]) == [1, 2, 3, 4]
    checkpointer = Checkpointer(tmp_path, recoverables={"counter": stopped, "other": torch.nn.Linear(2, 2)})
    checkpointer.save_checkpoint(meta={"epoch": 4, "stopped_early": True}, end_of_epoch=True)

    def finished(patience, epochs=10):
        return is_finished({"save_folder": tmp_path, "number_of_epochs": epochs, "early_stop_patience": patience})

    assert finished(2)  # stops there again: finished
    assert finished(1)  # a smaller patience would have stopped it too
    assert not finished(3)  # epochs 3, 4 are 2 without improvement < 3: a larger patience trains on
    assert finished(3, epochs=4)  # at its epoch limit whatever the patience


def test_a_finished_stage_refuses_a_smaller_patience_and_takes_a_larger_one(tmp_path):
    from anchor_reg.config import ConfigError
    from anchor_reg.pipeline import Step, refuse_changed

    def step(patience):
        return Step(2, "stage 1", tmp_path, {"stage": "stage1", "settings": {"early_stop_patience": patience, "lr": 1}},
                    [], None)

    refuse_changed(step(5), step(2).inputs)  # the larger patience: the finished stage is the same
    with pytest.raises(ConfigError, match=r"stage1 in .* finished training with other settings "
                                          r"\(early_stop_patience: 2 then, 1 now\)"):
        refuse_changed(step(1), step(2).inputs)
