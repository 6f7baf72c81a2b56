"""A SpeechBrain ``Checkpointer`` whose checkpoints appear only when complete.

SpeechBrain 1.1.2 writes ``CKPT.yaml`` (the file that marks a folder as a
checkpoint) *before* the parameter files, so a kill during a save leaves a
"checkpoint" with missing or truncated files, and the next run crashes while
recovering it. Here ``CKPT.yaml`` is written last and atomically: an
interrupted save leaves a folder that is not a checkpoint, and recovery picks
the previous complete one (which ``save_and_keep_only`` only deletes after the
new save finished).
"""
import time

import yaml
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import if_main_process

from anchor_reg.atomic import write_text_atomic


class AtomicCheckpointer(Checkpointer):
    """``Checkpointer`` that writes the checkpoint's meta file last, atomically."""

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
        """Defers the meta file until every parameter file is written."""
        meta = {"unixtime": time.time(), "end-of-epoch": end_of_epoch}
        meta.update(meta_to_include)
        self._pending_meta = (fpath, meta)
        return meta

    def save_checkpoint(self, *args, **kwargs):
        """Saves the parameter files, then marks the folder as a checkpoint."""
        self._pending_meta = None
        checkpoint = super().save_checkpoint(*args, **kwargs)
        if if_main_process() and self._pending_meta is not None:
            fpath, meta = self._pending_meta
            write_text_atomic(fpath, "# yamllint disable\n" + yaml.dump(meta))
        return checkpoint
