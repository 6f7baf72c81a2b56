"""Fixed anchors: the frozen base model's embeddings of every training row.

An :class:`AnchorStore` holds one contiguous ``(N, D)`` float32 tensor of
L2-normalised per-row anchors, an ID index made of two flat arrays (sorted
64-bit ID hashes and the fixed-width IDs to confirm each hit; no dict of
strings: VoxCeleb2 has ~1.1 M rows), the row → speaker map and the per-speaker
centroids ``(S, D)`` (mean of normalised anchors, renormalised). It records
what it was made from (base-checkpoint fingerprint, embedding size, counts,
extraction options). It is written atomically and never modified after
extraction; stage 2 loads it from the anchors folder on every (re)start and
keeps only its :meth:`AnchorStore.digest` in its checkpoints' meta. It also has
SpeechBrain checkpoint hooks, for recipes that do want a copy in a checkpoint.
"""
import hashlib
import logging
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from anchor_reg.atomic import atomic_path
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
ANCHOR_TYPES = ("utterance", "speaker")
BASE_MODULES = ("embedding_model", "classifier", "normalizer")


class AnchorStoreError(RuntimeError):
    """An anchor store that is unreadable, stale or does not match the run."""


def checkpoint_fingerprint(ckpt_dir, names=BASE_MODULES):
    """sha256 over the bytes of a checkpoint's model files.

    Arguments
    ---------
    ckpt_dir : str | pathlib.Path
        A SpeechBrain ``CKPT+...`` folder.
    names : tuple of str
        Recoverable names whose ``<name>.ckpt`` files define the model.

    Returns
    -------
    str
        Hex digest; changes whenever any of the files changes.
    """
    digest = hashlib.sha256()
    for name in names:
        path = pathlib.Path(ckpt_dir) / f"{name}.ckpt"
        if not path.is_file():
            continue
        digest.update(name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def id_hashes(encoded_ids):
    """(N,) uint64 blake2b hashes of byte IDs (stable across runs and machines)."""
    digests = b"".join([hashlib.blake2b(i, digest_size=8).digest() for i in encoded_ids])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)  # each digest read little-endian


@register_checkpoint_hooks
class AnchorStore:
    """Per-row anchors, per-speaker centroids, and their provenance.

    Rows are stored sorted by ID hash: a lookup is a binary search in the
    hash array, confirmed against the stored ID bytes.

    Example
    -------
    >>> store = AnchorStore.from_embeddings(
    ...     ids=["b", "a", "c"], speakers=["s1", "s1", "s2"],
    ...     embeddings=torch.eye(3), provenance={"base_fingerprint": "x"})
    >>> store.lookup(["a", "c"]).shape
    torch.Size([2, 3])
    >>> store.lookup(["a"], anchor_type="speaker").shape
    torch.Size([1, 3])
    """

    def __init__(self):
        self.ids = np.empty(0, dtype="S1")  # (N,) fixed-width bytes, in hash order
        self.hashes = np.empty(0, dtype=np.uint64)  # (N,) sorted
        self.embeddings = torch.empty(0, 0)  # (N, D) float32, L2-normalised
        self.row_speaker = torch.empty(0, dtype=torch.int32)  # (N,)
        self.speakers = []  # (S,) speaker labels
        self.centroids = torch.empty(0, 0)  # (S, D) float32, L2-normalised
        self.provenance = {}

    # ------------------------------------------------------------------ build
    @classmethod
    def from_embeddings(cls, ids, speakers, embeddings, provenance=None):
        """Builds a store from unsorted rows.

        Arguments
        ---------
        ids : list of str
            (N,) row IDs (the training CSV's ``ID`` column), unique.
        speakers : list of str
            (N,) speaker label of each row.
        embeddings : torch.Tensor
            (N, D) or (N, 1, D) base-model embeddings (normalised here).
        provenance : dict
            What the anchors were made from.
        """
        embeddings = embeddings.detach().reshape(len(ids), -1).float().cpu()
        if len(set(ids)) != len(ids):
            raise AnchorStoreError("AnchorStore: duplicate row IDs in the anchors")
        store = cls()
        encoded = [i.encode("utf-8") for i in ids]
        hashes = id_hashes(encoded)
        order = np.argsort(hashes, kind="stable")
        store.hashes = hashes[order]
        if len(order) > 1 and (np.diff(store.hashes) == 0).any():
            raise AnchorStoreError("AnchorStore: two row IDs share a 64-bit hash; rename one of them")
        store.ids = np.array(encoded, dtype=bytes)[order]
        order_t = torch.from_numpy(order)
        store.embeddings = F.normalize(embeddings[order_t], dim=-1).contiguous()
        store.speakers = sorted(set(speakers))
        spk_index = {s: k for k, s in enumerate(store.speakers)}
        row_speaker = torch.tensor([spk_index[s] for s in speakers], dtype=torch.int64)
        store.row_speaker = row_speaker[order_t].to(torch.int32)
        store.centroids = speaker_centroids(
            store.embeddings, store.row_speaker.long(), len(store.speakers)
        )
        store.provenance = dict(provenance or {})
        store.provenance.update(
            format_version=FORMAT_VERSION,
            emb_dim=store.emb_dim,
            num_rows=len(store),
            num_speakers=len(store.speakers),
        )
        return store

    def __len__(self):
        return int(self.embeddings.shape[0])

    @property
    def emb_dim(self):
        """Embedding size D."""
        return int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0

    # ----------------------------------------------------------------- lookup
    def _find(self, ids):
        """(positions, found) of ``ids`` in the index, vectorised."""
        encoded = [i.encode("utf-8") for i in ids]
        if not len(self.ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.hashes, id_hashes(encoded)), len(self.ids) - 1)
        query = np.array(encoded, dtype=bytes)
        fits = np.char.str_len(query) <= self.ids.itemsize
        found = fits & (self.ids[pos] == query.astype(self.ids.dtype))
        return pos, found

    def rows(self, ids):
        """(B,) row indices of ``ids``; raises listing the IDs that have no anchor."""
        pos, found = self._find(ids)
        if not found.all():
            missing = [i for i, ok in zip(ids, found) if not ok]
            raise AnchorStoreError(
                f"{len(missing)} of {len(ids)} IDs have no anchor (e.g. {missing[:3]}); "
                "the training CSV changed after extraction: re-extract the anchors"
            )
        return torch.from_numpy(pos.astype(np.int64))

    def lookup(self, ids, anchor_type="utterance", device=None):
        """Anchors of a batch.

        Arguments
        ---------
        ids : list of str
            (B,) row IDs (``batch.id``).
        anchor_type : str
            ``utterance`` (the row's own anchor) or ``speaker`` (its speaker's centroid).
        device : torch.device
            Where to put the result.

        Returns
        -------
        torch.Tensor
            (B, D) fixed anchors (no grad).
        """
        rows = self.rows(ids).numpy()  # numpy gathers: single-threaded, no thread wake-up latency
        if anchor_type == "utterance":
            out = torch.from_numpy(self.embeddings.numpy()[rows])
        elif anchor_type == "speaker":
            out = torch.from_numpy(self.centroids.numpy()[self.row_speaker.numpy()[rows]])
        else:
            raise AnchorStoreError(
                f"unknown anchor_type '{anchor_type}', expected one of {ANCHOR_TYPES}"
            )
        return out.to(device) if device is not None else out

    def check_compatible(self, *, base_fingerprint=None, row_ids=None, emb_dim=None, source=""):
        """Raises :class:`AnchorStoreError` if these anchors do not fit the run.

        Arguments
        ---------
        base_fingerprint : str
            :func:`checkpoint_fingerprint` of the base model stage 2 starts from.
        row_ids : list of str
            Training row IDs that need an anchor.
        emb_dim : int
            Embedding size of the model being trained.
        source : str
            Where the store came from (for the message).
        """
        where = f" ({source})" if source else ""
        redo = "delete the anchors folder (or pass --reextract_anchors=True) to re-extract"
        made_from = self.provenance.get("base_fingerprint")
        if base_fingerprint is not None and made_from != base_fingerprint:
            raise AnchorStoreError(
                f"anchors{where} were made from base checkpoint "
                f"{self.provenance.get('base_checkpoint')} (fingerprint {str(made_from)[:12]}), "
                f"but stage 2 starts from a base with fingerprint {base_fingerprint[:12]}: "
                f"they are stale; {redo}"
            )
        if emb_dim is not None and emb_dim != self.emb_dim:
            raise AnchorStoreError(
                f"anchors{where} have embedding size {self.emb_dim} but the model's "
                f"emb_dim is {emb_dim}; {redo}"
            )
        if row_ids is not None:
            _, found = self._find(list(row_ids))
            if not found.all():
                missing = [i for i, ok in zip(row_ids, found) if not ok]
                raise AnchorStoreError(
                    f"{len(missing)} of {len(row_ids)} training rows have no anchor{where} "
                    f"(e.g. {missing[:3]}): the training CSV changed after extraction; {redo}"
                )

    def digest(self):
        """Hex blake2b of the anchors' content (IDs, embeddings, speakers; not the provenance).

        Stage 2 records it in the meta of its checkpoints instead of copying the
        store into each of them, and refuses to resume with a different store.
        About 1 s per GB of anchors.
        """
        hasher = hashlib.blake2b(digest_size=16)
        for array in (self.ids, self.embeddings.numpy(), self.row_speaker.numpy()):
            hasher.update(np.ascontiguousarray(array))
        hasher.update("\n".join(self.speakers).encode("utf-8"))
        return hasher.hexdigest()

    # ------------------------------------------------------------ save / load
    @mark_as_saver
    def save(self, path):
        """Writes the store to ``path`` atomically (temp file + rename)."""
        path = pathlib.Path(path)
        width = max(1, self.ids.itemsize)
        id_bytes = np.frombuffer(self.ids.astype(f"S{width}").tobytes(), dtype=np.uint8)
        payload = {
            "embeddings": self.embeddings,
            "ids": torch.from_numpy(id_bytes.copy()).reshape(len(self.ids), width),
            "hashes": torch.from_numpy(self.hashes.view(np.int64)),
            "row_speaker": self.row_speaker,
            "speakers": list(self.speakers),
            "centroids": self.centroids,
            "provenance": dict(self.provenance),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Loads a store written by :meth:`save`; clear error if unreadable."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise AnchorStoreError(f"anchor store {path} does not exist; extract the anchors first")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            version = payload["provenance"].get("format_version")
        except Exception as err:  # corrupt, truncated, or not an anchor store (torch's text is not for users)
            raise AnchorStoreError(
                f"anchor store {path} is unreadable or corrupt ({type(err).__name__}); "
                "delete it and re-run to re-extract the anchors"
            ) from err
        if version != FORMAT_VERSION:
            raise AnchorStoreError(
                f"anchor store {path} has format {version}, this version of anchor_reg reads format "
                f"{FORMAT_VERSION}; delete it (or pass --reextract_anchors=True) to re-extract"
            )
        try:
            ids_u8 = payload["ids"].numpy()
            ids = np.frombuffer(ids_u8.tobytes(), dtype=f"S{ids_u8.shape[1]}")
            hashes = payload["hashes"].numpy().view(np.uint64)
            embeddings = payload["embeddings"]
            provenance = payload["provenance"]
        except Exception as err:  # corrupt, truncated, or not an anchor store
            raise AnchorStoreError(
                f"anchor store {path} is unreadable or corrupt ({type(err).__name__}: {err}); "
                "delete it and re-run to re-extract the anchors"
            ) from err
        if embeddings.shape[0] != len(ids) or hashes.shape[0] != len(ids):
            raise AnchorStoreError(
                f"anchor store {path} has inconsistent sizes; delete it and re-run to re-extract"
            )
        self.ids = ids
        self.hashes = hashes
        self.embeddings = embeddings
        self.row_speaker = payload["row_speaker"]
        self.speakers = list(payload["speakers"])
        self.centroids = payload["centroids"]
        self.provenance = provenance
        return self

    @classmethod
    def from_file(cls, path):
        """A store read from ``path``."""
        return cls().load(path)

    def nbytes(self):
        """Bytes held by the arrays (embeddings, index, speaker map, centroids)."""
        return (
            self.embeddings.element_size() * self.embeddings.nelement()
            + self.ids.nbytes
            + self.hashes.nbytes
            + self.row_speaker.element_size() * self.row_speaker.nelement()
            + self.centroids.element_size() * self.centroids.nelement()
        )


def speaker_centroids(embeddings, row_speaker, num_speakers):
    """Per-speaker mean of normalised rows, renormalised.

    Arguments
    ---------
    embeddings : torch.Tensor
        (N, D) embeddings.
    row_speaker : torch.Tensor
        (N,) speaker index of each row, in [0, S).
    num_speakers : int
        S.

    Returns
    -------
    torch.Tensor
        (S, D) unit-norm centroids.
    """
    normed = F.normalize(embeddings.float(), dim=-1)
    sums = torch.zeros(num_speakers, normed.shape[1]).index_add_(0, row_speaker, normed)
    return F.normalize(sums, dim=-1)


@torch.no_grad()
def extract_anchors(embed, dataloader, provenance=None, progressbar=True):
    """Embeds every row once with a frozen model and builds an :class:`AnchorStore`.

    Under DDP each rank embeds its own shard (the dataloader's sampler splits
    the rows); the shards are gathered so every row gets exactly one anchor.

    Arguments
    ---------
    embed : callable
        ``embed(wavs (B, T), lens (B,)) -> (B, 1, D)``, in eval mode.
    dataloader : iterable
        Batches with ``id``, ``sig`` and ``spk_id``.
    provenance : dict
        Stored with the anchors (base fingerprint, options...).
    progressbar : bool
        Show tqdm.

    Returns
    -------
    AnchorStore
    """
    from tqdm import tqdm

    start = time.time()
    ids, speakers, chunks = [], [], []
    for batch in tqdm(dataloader, desc="anchors", disable=not progressbar, dynamic_ncols=True):
        wavs, lens = batch.sig
        chunks.append(embed(wavs, lens).reshape(len(batch.id), -1).float().cpu())
        ids.extend(batch.id)
        speakers.extend(batch.spk_id)
    embeddings = torch.cat(chunks) if chunks else torch.empty(0, 0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (ids, speakers, embeddings))
        ids = [i for part in gathered for i in part[0]]
        speakers = [s for part in gathered for s in part[1]]
        embeddings = torch.cat([part[2] for part in gathered])
        # a DistributedSampler pads the last shard by repeating rows: drop repeats
        _, first = np.unique(np.array(ids, dtype=object), return_index=True)
        keep = np.sort(first)
        ids = [ids[k] for k in keep]
        speakers = [speakers[k] for k in keep]
        embeddings = embeddings[torch.from_numpy(keep)]
    provenance = dict(provenance or {})
    provenance["extraction_seconds"] = round(time.time() - start, 2)
    return AnchorStore.from_embeddings(ids, speakers, embeddings, provenance)
