"""Replay: rows of a broader audio set tied to their own fixed anchors in every stage-2 step."""
import torch
from speechbrain.dataio.batch import PaddedBatch

from anchor_reg.corruption import stable_seed


class ReplaySet:
    """The replay ``dataset`` (rows with ``id``, ``sig``) and their anchors ``store`` (speaker: the source
    file); each step draws ``rows`` of them, seeded by (seed, rank, epoch, step) so a resume draws the same."""

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
        """The step's replay rows as a ``PaddedBatch`` (``id``, ``sig``); None if all were unreadable (skipped)."""
        examples = [self.dataset[int(index)] for index in self.indices(epoch, step)]
        examples = [{"id": e["id"], "sig": e["sig"]} for e in examples if e["sig"] is not None]
        return PaddedBatch(examples) if examples else None
