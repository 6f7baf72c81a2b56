"""A SpeechBrain ``Checkpointer`` whose checkpoints appear only when complete: ``CKPT.yaml`` (SpeechBrain
writes it first) is written last, atomically, under a ``flock`` on the save folder; partial folders are
removed (a failed save raises one :class:`CheckpointError`)."""
import contextlib
import fcntl
import logging
import os
import pathlib
import shutil
import time

import torch
import yaml
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.checkpoints import CKPT_PREFIX, METAFNAME, Checkpointer
from speechbrain.utils.distributed import if_main_process

from anchor_reg.atomic import write_text_atomic
from anchor_reg.errors import CheckpointError

logger = logging.getLogger(__name__)

TENSOR_RECOVERABLES = (torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)


def end_of_epoch(ckpt):
    """Whether a checkpoint was saved at the end of an epoch (mid-epoch ones only serve to resume)."""
    return INTRA_EPOCH_CKPT_FLAG not in ckpt.meta


def best_checkpoint(save_folder):
    """The end-of-epoch checkpoint with the lowest ``ErrorRate``, the latest among equals (None if none)."""
    ckpts = [c for c in Checkpointer(save_folder).list_checkpoints() if end_of_epoch(c) and "ErrorRate" in c.meta]
    return min(ckpts, key=lambda c: (c.meta["ErrorRate"], -c.meta["unixtime"]), default=None)


def is_tensor_file(path):
    """Whether ``torch.load(path, weights_only=True)`` (SpeechBrain's way) reads the file; nothing in it runs."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unpickling refused, not a torch file, truncated
        return False
    return True


def unreadable_parameter_file(checkpoint, recoverables):
    """The first file of ``checkpoint`` saved from a torch object that is not saved tensors (None if none)."""
    for name, obj in recoverables.items():
        path = checkpoint.paramfiles.get(name)
        if path is not None and isinstance(obj, TENSOR_RECOVERABLES) and not is_tensor_file(path):
            return pathlib.Path(path)


def invalid_file_message(path):
    """The error text for a parameter file that is not saved tensors."""
    return f"{path} is not a valid checkpoint file (it does not load as saved tensors; nothing in it was run)"


class AtomicCheckpointer(Checkpointer):
    """``Checkpointer`` that writes the checkpoint's meta file last, atomically."""

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
        """Defers the meta file until every parameter file is written."""
        meta = {"unixtime": time.time(), "end-of-epoch": end_of_epoch, **meta_to_include}
        self._pending_meta = (fpath, meta)
        return meta

    def save_checkpoint(self, *args, **kwargs):
        """Saves the parameter files, then marks the folder as a checkpoint."""
        self._pending_meta = None
        try:
            with self._save_lock(blocking=True):
                checkpoint = super().save_checkpoint(*args, **kwargs)
                if if_main_process() and self._pending_meta is not None:
                    fpath, meta = self._pending_meta
                    write_text_atomic(fpath, "# yamllint disable\n" + yaml.dump(meta))
        except OSError as err:
            folder = self._pending_meta[0].parent if self._pending_meta else self.checkpoints_dir
            if self._pending_meta and not (folder / METAFNAME).exists():
                shutil.rmtree(folder, ignore_errors=True)  # ours, half written: never a checkpoint
            raise CheckpointError(
                f"save_folder: cannot write a checkpoint to {folder} ({err.strerror or err}); "
                "free disk space or make the folder writable (the last complete checkpoint is kept)"
            ) from err
        return checkpoint

    def _call_load_hooks(self, checkpoint):
        """Loads the checkpoint; a parameter file that is not saved tensors is one error naming it."""
        try:
            super()._call_load_hooks(checkpoint)
        except Exception as err:
            bad = unreadable_parameter_file(checkpoint, self.recoverables)
            if bad is None:
                raise
            raise CheckpointError(
                f"{invalid_file_message(bad)}: delete the folder {bad.parent} to resume from the checkpoint "
                "before it (from the start if there is none), or train again into a new folder"
            ) from err

    def recover_if_possible(self, *args, **kwargs):
        """Removes partial checkpoint folders left by earlier runs, then recovers."""
        self.remove_partial_checkpoints()
        return super().recover_if_possible(*args, **kwargs)

    def remove_partial_checkpoints(self):
        """Deletes and returns the ``CKPT+*`` folders without ``CKPT.yaml`` (main process, unless a save runs)."""
        if not if_main_process() or not self.checkpoints_dir.is_dir():
            return []
        removed = []
        with self._save_lock(blocking=False) as locked:
            if not locked:
                return []
            for folder in sorted(self.checkpoints_dir.glob(f"{CKPT_PREFIX}+*")):
                if folder.is_dir() and not (folder / METAFNAME).exists():
                    shutil.rmtree(folder)
                    removed.append(folder)
                    logger.info("removed the partial checkpoint %s (no %s: an interrupted save)", folder, METAFNAME)
        return removed

    @contextlib.contextmanager
    def _save_lock(self, blocking):
        """Exclusive flock on the save folder (main process); yields whether it is held."""
        if not if_main_process():
            yield False
            return
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.checkpoints_dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock
