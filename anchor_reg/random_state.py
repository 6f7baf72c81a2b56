"""Each stage's own seed, and the random state a resumed run continues from bit-identically (CPU, one
process): the global generators and ``AddNoise`` / ``AddReverb``'s loaders, reopened at each checkpoint
(so ``--ckpt_interval_steps`` repeats exactly, ``--ckpt_interval_minutes`` does not)."""
import contextlib
import hashlib
import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process

# what SpeechBrain 1.1.2's AddNoise / AddReverb keep between batches: the loader over the CSV and its iterator
NOISE_LOADER_ATTRIBUTES = ("data_loader", "noise_data", "rir_data")


def derived_seed(*parts):
    """A 32-bit seed from ``parts`` such as (seed, stage): the same in every process and Python version."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def capture():
    """The global generators' states: ``{"torch", "cuda", "numpy", "python"}`` (plain tensors, lists, ints)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
        "python": random.getstate(),
    }


def restore(state):
    """Sets the global generators to a :func:`capture` (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])


@contextlib.contextmanager
def preserved_random_state():
    """Runs the block, then puts the global generators back as they were (a decorator too)."""
    state = capture()
    try:
        yield
    finally:
        restore(state)


def close_noise_loaders(augmenter):
    """Drops the loaders the augmenter's ``AddNoise`` / ``AddReverb`` keep open; the next batch reopens them."""
    for augmentation in getattr(augmenter, "augmentations", {}).values():
        for name in NOISE_LOADER_ATTRIBUTES:
            if hasattr(augmentation, name):
                delattr(augmentation, name)


class RandomState:
    """Recoverable seeding a stage from (``seed``, ``stage``) and carrying its random state across a resume;
    each process's saver closes the ``augmenter``'s noise loaders, the main one writes the states."""

    def __init__(self, seed, stage, augmenter=None):
        self.seed = seed
        self.stage = stage
        self.augmenter = augmenter
        self.loader_generator = torch.Generator()  # the training loader's worker seeds, off the global generator

    def seed_stage(self):
        """Seeds the global generators from (seed, stage) and closes the noise loaders (``fit`` starting)."""
        seed = derived_seed(self.seed, self.stage)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        close_noise_loaders(self.augmenter)

    def start_epoch(self, epoch):
        """Reseeds :attr:`loader_generator` from (seed, stage, epoch) (before the epoch's loader opens)."""
        self.loader_generator.manual_seed(derived_seed(self.seed, self.stage, epoch))

    @mark_as_saver
    def _save(self, path):
        close_noise_loaders(self.augmenter)
        if if_main_process():
            torch.save(capture(), path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        del end_of_epoch  # the state is the same either way: that of the step after the checkpoint
        restore(torch.load(path, weights_only=True))


register_checkpoint_hooks(RandomState, save_on_main_only=False)
