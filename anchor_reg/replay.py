"""Replay: rows of a broader audio set mixed into every stage-2 step, each tied to its own fixed anchor.

The replay rows (``replay_folders``, prepared once into ``replay.csv``, see
:mod:`anchor_reg.data.unlabelled`) have their anchors extracted once by the
same frozen base as the training anchors (``replay_anchors.pt``). Each
training step draws ``replay_rows`` of them with a generator seeded by
(seed, rank, epoch, step), so a rerun or a resume draws the same rows; the Brain
sends them through the same augmentation and adds
``replay_weight * objective(their embeddings, their anchors)``. The replay store
also lends negatives to the main contrastive objective.
"""
import torch
from speechbrain.dataio.batch import PaddedBatch

from anchor_reg.corruption import stable_seed


class ReplaySet:
    """The replay rows and their anchors.

    Arguments
    ---------
    dataset : torch.utils.data.Dataset
        Replay rows as dicts with ``id`` and ``sig`` (a ``DynamicItemDataset`` of ``replay.csv``).
    store : anchor_reg.anchors.AnchorStore
        Their anchors (row "speaker": the source file).
    rows : int
        Rows drawn per training step (``replay_rows``).
    seed : int
        Seed of the draws (the run's ``seed``).
    rank : int
        The process's rank under DDP (each rank draws its own rows).
    """

    def __init__(self, dataset, store, rows, seed, rank=0):
        if len(dataset) == 0:
            raise ValueError("replay_folders: no replay rows were prepared")
        self.dataset = dataset
        self.store = store
        self.rows = int(rows)
        self.seed = int(seed)
        self.rank = int(rank)

    def indices(self, epoch, step):
        """(rows,) indices into the replay dataset drawn for this step (with replacement)."""
        generator = torch.Generator().manual_seed(stable_seed("replay", self.seed, self.rank, epoch, step))
        return torch.randint(len(self.dataset), (self.rows,), generator=generator)

    def draw(self, epoch, step):
        """The step's replay rows as a ``PaddedBatch`` (``id``, ``sig``); None if every drawn row was
        unreadable audio skipped under ``skip_bad_files``."""
        examples = [self.dataset[int(index)] for index in self.indices(epoch, step)]
        examples = [{"id": e["id"], "sig": e["sig"]} for e in examples if e["sig"] is not None]
        return PaddedBatch(examples) if examples else None
