"""The random state a resumed run continues from, and each stage's own seed.

A run killed at a checkpoint and resumed with the same command ends
bit-identical to the run that was not killed (CPU, one process). What a
training step draws comes from:

- torch's global generator (CPU, and CUDA where used): the ``Augmenter``'s
  choices, SNRs, drop masks and noise offsets, random crops, negative anchors;
- Python's ``random``: the ``Augmenter``'s ``augment_prob`` and order;
- numpy's global generator (for any pipeline that draws from it);
- the noise and RIR loaders that SpeechBrain's ``AddNoise`` / ``AddReverb``
  keep open over their CSVs, which shuffle each pass with a seed drawn from
  torch's global generator when the pass starts.

The training rows' order needs nothing: ``Brain.make_dataloader`` turns
``shuffle: True`` into a ``ReproducibleRandomSampler`` seeded with
``SB_GLOBAL_SEED`` (the YAML's ``seed``) + epoch, and its ``SaveableDataLoader``
resumes a mid-epoch checkpoint at its position.

:class:`RandomState` covers the rest:

- :meth:`RandomState.seed_stage` (when ``fit`` starts) seeds the generators
  from (``seed``, ``stage``), so a stage never depends on what ran before it in
  the process (stage 1, anchor extraction);
- the training loader draws its per-epoch base seed (the worker seeds) from
  :attr:`RandomState.loader_generator`, reseeded from (``seed``, ``stage``,
  epoch) as each epoch starts, never from the global generator, so opening an
  epoch's loader in a resumed run does not shift the global draws;
- saving records the generators' states and closes the augmenter's noise and
  RIR loaders, so the next batch reopens them from the saved state, in the
  run that goes on and in the run that resumes alike; recovering restores the
  states.

``SpeakerBrain`` (every stage's Brain) adds it to the stage's checkpointer, as
``Brain`` adds itself, so the YAMLs and the stages' records are unchanged; it
is optional on recovery, so checkpoints saved before it existed still resume
(not bit-identically).

Since each checkpoint reopens the noise lists, where the checkpoints fall is
part of the run: ``--ckpt_interval_steps`` (a fixed step) repeats exactly,
SpeechBrain's ``--ckpt_interval_minutes`` (the clock) does not.
"""
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


def seed_all(seed):
    """Seeds torch (CPU and every CUDA device), numpy's and Python's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    """Recoverable: seeds a stage from (``seed``, ``stage``) and carries its random state across a resume.

    Arguments
    ---------
    seed : int
        The run's seed (the YAML's ``seed``).
    stage : str
        The stage's name (``stage1``, ``stage2``, ``joint``).
    augmenter : speechbrain.augment.augmenter.Augmenter
        The training augmenter, whose noise loaders close at each checkpoint (None: none).

    Its saver runs on every process (each closes its noise loaders); the main one writes the file.
    """

    def __init__(self, seed, stage, augmenter=None):
        self.seed = seed
        self.stage = stage
        self.augmenter = augmenter
        self.loader_generator = torch.Generator()

    def seed_stage(self):
        """Seeds the global generators from (seed, stage) and closes the noise loaders (``fit`` starting)."""
        seed_all(derived_seed(self.seed, self.stage))
        close_noise_loaders(self.augmenter)

    def start_epoch(self, epoch):
        """Reseeds :attr:`loader_generator` from (seed, stage, epoch) (before the epoch's loader opens)."""
        self.loader_generator.manual_seed(derived_seed(self.seed, self.stage, epoch))

    @mark_as_saver
    def _save(self, path):
        close_noise_loaders(self.augmenter)  # on every process, so that all go on alike
        if if_main_process():
            torch.save(capture(), path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        del end_of_epoch  # the state is the same either way: that of the step after the checkpoint
        restore(torch.load(path, weights_only=True))


register_checkpoint_hooks(RandomState, save_on_main_only=False)
