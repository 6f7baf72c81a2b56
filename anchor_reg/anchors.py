"""Fixed anchors: the frozen base model's embeddings of every training row.

An :class:`AnchorStore` holds one contiguous ``(N, D)`` float32 tensor of
L2-normalised per-row anchors, an ID index made of two flat arrays (sorted
64-bit ID hashes and the fixed-width IDs to confirm each hit; no dict of
strings: VoxCeleb2 dev cut into 3 s rows has ~3 M), the row → speaker map and
the per-speaker centroids ``(S, D)`` (mean of normalised anchors,
renormalised). It records what it was made from (base-checkpoint fingerprint,
embedding size, counts, extraction options). It is written atomically and
never modified after extraction; stage 2 loads it from the anchors folder on
every (re)start (:func:`load_or_extract`) and keeps only its
:meth:`AnchorStore.digest` in its checkpoints (:mod:`anchor_reg.provenance`).

A loaded store is memory-mapped (``torch.load(..., mmap=True)``): its arrays
are views of the file's pages, so the ranks of a node share one copy in the
page cache instead of each holding a private one (~2.3 GB at VoxCeleb2 scale).
No method copies a whole array: lookups and negative draws gather only their
rows, checking a training CSV works in blocks.
"""
import hashlib
import logging
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
import speechbrain as sb

from anchor_reg.atomic import atomic_path
from anchor_reg.digest import content_digest
from anchor_reg.errors import AnchorStoreError
from anchor_reg.random_state import preserved_random_state

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: speaker labels stored as a byte tensor (an unpickled list of strings cost ~30 ms)
ANCHOR_TYPES = ("utterance", "speaker")
BASE_MODULES = ("embedding_model", "classifier", "normalizer")
CHECK_BLOCK = 1 << 16  # IDs hashed and compared at a time when a whole training CSV is checked


def checkpoint_fingerprint(ckpt_dir, names=BASE_MODULES):
    """sha256 over the names and bytes of a checkpoint's model files.

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
    files = {name: pathlib.Path(ckpt_dir) / f"{name}.ckpt" for name in names}
    return content_digest(part for name, path in files.items() if path.is_file() for part in (name, path))


def id_hashes(encoded_ids):
    """(N,) uint64 blake2b hashes of byte IDs (stable across runs and machines)."""
    digests = b"".join([hashlib.blake2b(i, digest_size=8).digest() for i in encoded_ids])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)  # each digest read little-endian


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
        self._rows_per_speaker = None  # (S,) int64, counted on the first negative draw
        self._capped_negatives = False  # whether a too large bank was reported

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
        rows = embeddings[order_t]  # the one copy: normalised in place (3 M rows x 192 are 2.3 GB)
        store.embeddings = rows.div_(rows.norm(dim=-1, keepdim=True).clamp_min(1e-12))  # = F.normalize
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

    def _found(self, ids):
        """(N,) bool: whether each of ``ids`` has an anchor, in blocks of :data:`CHECK_BLOCK` IDs.

        A 3 M-row training CSV then needs no 3 M-row temporaries (encoded IDs, hashes, gathered IDs).
        """
        blocks = [self._find(ids[k:k + CHECK_BLOCK])[1] for k in range(0, len(ids), CHECK_BLOCK)]
        return np.concatenate(blocks) if blocks else np.zeros(0, bool)

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

    def speaker_index(self, ids, device=None):
        """(B,) index in :attr:`speakers` of each row's speaker (int64)."""
        out = self.row_speaker[self.rows(ids)].long()
        return out.to(device) if device is not None else out

    def sample_negatives(self, exclude, num, anchor_type="utterance", device=None):
        """Anchors of ``num`` random rows (or centroids) of speakers not in ``exclude``.

        Draws with the global torch RNG (seeded by the recipe), without looking
        at the whole store: O(num) per call, so a bank of 1024 negatives costs
        the same at 3 M rows as at 3 k.

        Arguments
        ---------
        exclude : torch.Tensor
            (B,) speaker indices never to draw (the batch's speakers).
        num : int
            K, how many to draw; at most the eligible entries (the other
            speakers' rows or centroids) are drawn, whatever K asks for
            (reported once), so a huge K allocates nothing larger.
        anchor_type : str
            ``utterance`` draws rows' anchors, ``speaker`` draws centroids.
        device : torch.device
            Where to put the result.

        Returns
        -------
        tuple of torch.Tensor
            (K', D) anchors and (K',) their speaker indices, K' <= K, no repeats.
        """
        exclude = exclude.detach().cpu().long()
        if anchor_type == "speaker":
            pool = self.centroids

            def speaker_of(entries):
                return entries
        elif anchor_type == "utterance":
            pool = self.embeddings

            def speaker_of(entries):  # only the drawn rows: the (N,) map stays in the (shared) file pages
                return self.row_speaker[entries].long()
        else:
            raise AnchorStoreError(f"unknown anchor_type '{anchor_type}', expected one of {ANCHOR_TYPES}")
        size = pool.shape[0]
        available = self._eligible(exclude, anchor_type)
        if num > available and not self._capped_negatives:
            self._capped_negatives = True
            logger.info("contrastive_negatives: %d asked for, but a batch's other speakers have at most %d "
                        "%s anchors in the store; drawing those", num, available, anchor_type)
        num = min(num, available)
        chosen = torch.empty(0, dtype=torch.long)
        for _ in range(4):  # rejection sampling; falls back to the full list below
            draw = torch.randint(size, (2 * num + 16,))
            draw = draw[~torch.isin(speaker_of(draw), exclude)]
            chosen = torch.unique(torch.cat([chosen, draw]))
            if len(chosen) >= num:
                chosen = chosen[torch.randperm(len(chosen))[:num]]
                break
        else:
            eligible = torch.nonzero(~torch.isin(speaker_of(torch.arange(size)), exclude)).flatten()
            chosen = eligible[torch.randperm(len(eligible))[:num]]
        anchors, speakers = pool[chosen], speaker_of(chosen)
        if device is not None:
            anchors, speakers = anchors.to(device), speakers.to(device)
        return anchors, speakers

    def _eligible(self, exclude, anchor_type):
        """How many rows (``utterance``) or centroids (``speaker``) belong to speakers not in ``exclude``."""
        excluded = torch.unique(exclude[(exclude >= 0) & (exclude < len(self.speakers))])
        if anchor_type == "speaker":
            return len(self.speakers) - len(excluded)
        if self._rows_per_speaker is None:  # one pass over the (N,) map, then (S,) counts
            self._rows_per_speaker = torch.bincount(self.row_speaker.long(), minlength=len(self.speakers))
        return len(self) - int(self._rows_per_speaker[excluded].sum())

    def check_compatible(self, *, base_fingerprint=None, row_ids=None, emb_dim=None, source=""):
        """Raises :class:`AnchorStoreError` if these anchors do not fit the run.

        Arguments
        ---------
        base_fingerprint : str
            Fingerprint of the base model stage 2 starts from (``Base.fingerprint``).
        row_ids : list of str
            Training row IDs that need an anchor.
        emb_dim : int
            Embedding size of the base model.
        source : str
            Where the store came from (for the message).
        """
        where = f" ({source})" if source else ""
        redo = "delete the anchors folder (or pass --reextract_anchors=True) to re-extract"
        made_from = self.provenance.get("base_fingerprint")
        if base_fingerprint is not None and made_from != base_fingerprint:
            made_by = self.provenance.get("base_source", self.provenance.get("base_checkpoint"))
            raise AnchorStoreError(
                f"anchors{where} were made from the base model {made_by} (fingerprint {str(made_from)[:12]}), "
                f"but stage 2 starts from a base with fingerprint {base_fingerprint[:12]}: "
                f"they are stale; {redo}"
            )
        if emb_dim is not None and emb_dim != self.emb_dim:
            raise AnchorStoreError(
                f"anchors{where} have embedding size {self.emb_dim} but the base model "
                f"embeds in {emb_dim} dimensions; {redo}"
            )
        if row_ids is not None:
            row_ids = list(row_ids)
            found = self._found(row_ids)
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
        About 1 s per GB of anchors; reads a loaded store's pages through its
        mapping (page cache, shared by the ranks), copying nothing.
        """
        arrays = [np.ascontiguousarray(a) for a in (self.ids, self.embeddings.numpy(), self.row_speaker.numpy())]
        return content_digest([*arrays, "\n".join(self.speakers)], "blake2b")  # no copy: every array is contiguous

    # ------------------------------------------------------------ save / load
    def save(self, path):
        """Writes the store to ``path`` atomically (temp file + rename)."""
        path = pathlib.Path(path)
        speakers = np.array([s.encode("utf-8") for s in self.speakers], dtype=bytes)
        payload = {
            "embeddings": self.embeddings,
            "ids": byte_matrix(self.ids),
            "hashes": torch.from_numpy(self.hashes.view(np.int64)),
            "row_speaker": self.row_speaker,
            "speakers": byte_matrix(speakers),
            "centroids": self.centroids,
            "provenance": dict(self.provenance),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def load(self, path):
        """Loads a store written by :meth:`save`, memory-mapped; clear error if unreadable.

        The arrays (embeddings, IDs, hashes, speaker map, centroids) are views
        of the file's pages (``torch.load(..., mmap=True)``, copy-on-write, never
        written): nothing is read until used, and every process that loads the
        file shares the same page-cache copy.
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise AnchorStoreError(f"anchor store {path} does not exist; extract the anchors first")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
            ids = byte_strings(payload["ids"].numpy())  # (N,) fixed-width bytes, the file's pages
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
        self.speakers = [label.decode("utf-8") for label in byte_strings(payload["speakers"].numpy())]
        self.centroids = payload["centroids"]
        self.provenance = provenance
        self._rows_per_speaker = None
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


def byte_matrix(strings):
    """(N,) fixed-width byte strings (numpy ``S`` dtype) -> (N, W) uint8 tensor, W >= 1, as stored."""
    width = max(1, strings.itemsize)
    padded = strings.astype(f"S{width}")  # a new contiguous array: the one copy
    return torch.from_numpy(padded.view(np.uint8).reshape(len(strings), width))


def byte_strings(matrix):
    """(N, W) uint8 array -> (N,) fixed-width byte strings viewing the same memory (no copy)."""
    return matrix.view(f"S{matrix.shape[1]}").reshape(-1)


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
@preserved_random_state()
def extract_anchors(embed, dataloader, provenance=None, progressbar=True):
    """Embeds every row once with a frozen model and builds an :class:`AnchorStore`.

    Under DDP each rank embeds its own shard (the dataloader's sampler splits
    the rows) and sends it to rank 0 (``gather_object``), which alone builds
    the store, so every row gets exactly one anchor and no other rank ever
    holds all the shards. The global random generators are left as they were
    found (iterating a loader draws from torch's), so what trains next does not
    depend on whether the anchors were extracted in the same process.

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
    AnchorStore or None
        The store on rank 0 (or without DDP), None on the other ranks.
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
        main = torch.distributed.get_rank() == 0
        gathered = [None] * torch.distributed.get_world_size() if main else None
        torch.distributed.gather_object((ids, speakers, embeddings), gathered, dst=0)
        if not main:
            return None
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


def load_or_extract(base, dataset, anchors_file, *, row_ids=None, batch_size=32, num_workers=0,
                    collate_fn=None, reextract=False, device="cpu", progressbar=True, extra_provenance=None):
    """The anchors of every training row: the stored store if it fits this base, else extracted.

    The frozen base embeds each row once (``base.embedder(device)``, in eval
    mode); under DDP each rank embeds a shard and rank 0 gathers them,
    checks and writes the store atomically while the others wait; every rank
    then maps the same file (:meth:`AnchorStore.load`), so a node's ranks share
    one copy. Whatever fails while rank 0 checks and writes the store (a check, a full disk) is raised
    on every rank.

    Arguments
    ---------
    base : anchor_reg.base.Base
        The base model: ``embedder(device)`` (its embedding callable),
        ``fingerprint``, ``emb_dim``, ``source``, ``provenance``.
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        Training rows with ``id``, ``sig``, ``spk_id``.
    anchors_file : str | pathlib.Path
        Where the store lives.
    row_ids : list of str
        Rows that must have an anchor (None: do not check, e.g. bad files skipped).
    batch_size, num_workers, collate_fn
        Extraction loader options.
    reextract : bool
        Extract even if a fitting store exists (it is replaced atomically).
    device : str
        Where the base runs.
    progressbar : bool
        Show tqdm.
    extra_provenance : dict
        More to record (training CSV, ...).

    Returns
    -------
    AnchorStore
    """
    anchors_file = pathlib.Path(anchors_file)
    if anchors_file.is_file() and not reextract:
        store = AnchorStore.from_file(anchors_file)
        store.check_compatible(base_fingerprint=base.fingerprint, row_ids=row_ids, emb_dim=base.emb_dim,
                               source=str(anchors_file))
        logger.info("anchors: reusing %s (%d rows, %d speakers)", anchors_file, len(store), len(store.speakers))
        return store
    logger.info("anchors: extracting with the frozen base model %s", base.source)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False) if distributed else None
    loader = sb.dataio.dataloader.make_dataloader(
        dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers,
        **({"collate_fn": collate_fn} if collate_fn is not None else {}),
    )
    provenance = {"base_fingerprint": base.fingerprint, "base_source": base.source, **base.provenance,
                  "batch_size": batch_size, "normalised": True, **(extra_provenance or {})}
    store = extract_anchors(base.embedder(device), loader, provenance=provenance, progressbar=progressbar)
    failure = None
    if store is not None:  # rank 0
        try:
            store.check_compatible(row_ids=row_ids, emb_dim=base.emb_dim)
            anchors_file.parent.mkdir(parents=True, exist_ok=True)
            store.save(anchors_file)
            logger.info("anchors: wrote %s (%d rows, %d speakers)", anchors_file, len(store), len(store.speakers))
        except Exception as err:  # any failure (a full disk too) must reach the ranks waiting below
            failure = err
    del store  # rank 0 too keeps the mapped file, not its private copy
    message = None
    if isinstance(failure, AnchorStoreError):
        message = str(failure)
    elif failure is not None:
        message = f"rank 0 could not write the anchors to {anchors_file} ({type(failure).__name__}: {failure})"
    message = _from_rank_zero(message)  # the other ranks wait here until the file is written
    if failure is not None:
        raise failure  # rank 0 (or no DDP): the original exception, for train.py's error report
    if message is not None:
        raise AnchorStoreError(message)
    return AnchorStore.from_file(anchors_file)  # every rank maps the same file


def _from_rank_zero(value):
    """Rank 0's ``value`` on every rank (a barrier under DDP; ``value`` itself without)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
