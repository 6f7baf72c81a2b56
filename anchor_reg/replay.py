"""Replay: rows of a broader audio set tied to their own fixed anchors in every stage-2 step, or held out for dev."""
import bisect
import collections
import itertools
import pathlib

import torch
from speechbrain.dataio.batch import PaddedBatch

from anchor_reg.corruption import stable_seed
from anchor_reg.data.cache import read_csv
from anchor_reg.errors import ConfigError


def broad_dev_ids(values):
    """IDs of the replay rows held out as broad dev rows: whole source files of ``replay.csv``, in an order seeded
    by ``data_seed``, until at least ``replay_dev_rows`` rows (none without replay or anchor_retrieval)."""
    wanted = values.get("replay_dev_rows", 0)
    if min(wanted, values.get("replay_rows", 0)) <= 0 or values.get("dev_criterion") != "anchor_retrieval":
        return []
    rows = read_csv(pathlib.Path(str(values["prep_folder"])) / "replay.csv")
    per_file = collections.Counter(row["spk_id"] for row in rows)
    order = sorted(per_file, key=lambda name: (stable_seed("replay_dev", values["data_seed"], name), name))
    held = set(order[:bisect.bisect_left(list(itertools.accumulate(per_file[f] for f in order)), wanted) + 1])
    if len(held) == len(order):
        raise ConfigError(f"replay_dev_rows: {wanted} would hold out every replay row ({len(rows)}): lower it")
    return [row["ID"] for row in rows if row["spk_id"] in held]


class ReplaySet:
    """The replay ``dataset`` (rows with ``id``, ``sig``) and their anchors ``store`` (speaker: the source file);
    each step draws ``rows`` of them, seeded by (seed, rank, epoch, step) so a resume draws the same, never one of
    the set ``dev_ids`` (broad dev rows; ``dev``: their indices, ``dev_copies(wav, id)``: their noisy copies)."""

    def __init__(self, dataset, store, rows, seed, rank=0, dev_ids=frozenset(), dev_copies=None):
        if len(dataset) == 0:
            raise ValueError("replay_folders: no replay rows were prepared")
        self.dataset, self.store, self.dev_copies = dataset, store, dev_copies
        self.rows, self.seed, self.rank = int(rows), int(seed), int(rank)
        self.dev = [k for k, row_id in enumerate(dataset.data_ids) if row_id in dev_ids] if dev_ids else []
        self.pool = torch.tensor(sorted(set(range(len(dataset))).difference(self.dev)))

    def indices(self, epoch, step):
        """(rows,) indices into the replay dataset drawn for this step (with replacement, never a dev row)."""
        generator = torch.Generator().manual_seed(stable_seed("replay", self.seed, self.rank, epoch, step))
        return self.pool[torch.randint(len(self.pool), (self.rows,), generator=generator)]

    def draw(self, epoch, step):
        """The step's replay rows as a ``PaddedBatch`` (``id``, ``sig``); None if all were unreadable (skipped)."""
        examples = [self.dataset[int(index)] for index in self.indices(epoch, step)]
        examples = [{"id": e["id"], "sig": e["sig"]} for e in examples if e["sig"] is not None]
        return PaddedBatch(examples) if examples else None
