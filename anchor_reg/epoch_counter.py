"""SpeechBrain's early-stopping epoch counter with its stopper state in checkpoints (1.1.2 keeps only the
epoch); on recovery the stop is decided again under the resumed run's ``limit_to_stop``."""
import yaml
from speechbrain.utils import epoch_loop
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


@register_checkpoint_hooks
class EpochCounterWithStopper(epoch_loop.EpochCounterWithStopper):
    """``speechbrain.utils.epoch_loop.EpochCounterWithStopper`` whose checkpoints hold the stopper's state."""

    @mark_as_saver
    def _save(self, path):
        super()._save(path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        if text.isdigit():  # written by the unregistered counter: only the epoch is known
            self.current = int(text) if end_of_epoch else int(text) - 1
            return
        super()._recover(path, end_of_epoch)
        if self.current > self.limit_warmup:  # as update_metric decides
            self.should_stop = patience_exhausted(self.current, self.best_limit, self.limit_to_stop)


def patience_exhausted(current_epoch, best_epoch, limit_to_stop):
    """SpeechBrain's stop rule: ``current_epoch - best_epoch`` epochs without improvement use up ``limit_to_stop``."""
    return current_epoch - best_epoch >= limit_to_stop


def stops_under(path, limit_to_stop):
    """Whether the stopper saved at ``path`` stops there under ``limit_to_stop`` (a plain counter's file: yes)."""
    with open(path, encoding="utf-8") as f:
        state = yaml.safe_load(f)
    if not isinstance(state, dict):
        return True
    return patience_exhausted(state["current_epoch"], state["best_epoch"], limit_to_stop)
