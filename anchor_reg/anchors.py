"""Fixed anchors: the frozen base model's embeddings of every training row, with their provenance, written
once and memory-mapped on load (a node's ranks share one page-cache copy; no method copies a whole array)."""
import hashlib
import logging
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
import speechbrain as sb
from tqdm import tqdm

from anchor_reg.atomic import atomic_path
from anchor_reg.digest import content_digest
from anchor_reg.errors import AnchorStoreError
from anchor_reg.random_state import preserved_random_state

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: speaker labels stored as a byte tensor (an unpickled list of strings cost ~30 ms)
ANCHOR_TYPES = ("utterance", "speaker")
BASE_MODULES = ("embedding_model", "classifier", "normalizer")
CHECK_BLOCK = 1 << 16  # IDs hashed and compared at a time when a whole training CSV is checked
REDO = "delete the anchors folder (or pass --reextract_anchors=True) to re-extract"


def checkpoint_fingerprint(ckpt_dir, names=BASE_MODULES):
    """sha256 over the names and bytes of the ``<name>.ckpt`` model files of a ``CKPT+...`` folder."""
    files = {name: pathlib.Path(ckpt_dir) / f"{name}.ckpt" for name in names}
    return content_digest(part for name, path in files.items() if path.is_file() for part in (name, path))


def id_hashes(encoded_ids):
    """(N,) uint64 blake2b hashes of byte IDs (stable across runs and machines)."""
    digests = b"".join([hashlib.blake2b(i, digest_size=8).digest() for i in encoded_ids])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)  # each digest read little-endian


def check_anchor_type(anchor_type):
    """Raises :class:`AnchorStoreError` unless ``anchor_type`` is one of :data:`ANCHOR_TYPES`."""
    if anchor_type not in ANCHOR_TYPES:
        raise AnchorStoreError(f"unknown anchor_type '{anchor_type}', expected one of {ANCHOR_TYPES}")


class AnchorStore:
    """(N, D) unit anchors of rows sorted by ID hash, (S, D) speaker centroids and provenance; a lookup is a
    binary search in the hashes, confirmed against the fixed-width ID bytes (no dict of 3 M strings)."""

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

    @classmethod
    def from_embeddings(cls, ids, speakers, embeddings, provenance=None):
        """A store of N unique row IDs, their N speaker labels and (N, D) or (N, 1, D) embeddings."""
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
        store.centroids = speaker_centroids(store.embeddings, store.row_speaker.long(), len(store.speakers))
        store.provenance = dict(provenance or {})
        store.provenance.update(format_version=FORMAT_VERSION, emb_dim=store.emb_dim, num_rows=len(store),
                                num_speakers=len(store.speakers))
        return store

    def __len__(self):
        return int(self.embeddings.shape[0])

    @property
    def emb_dim(self):
        """Embedding size D."""
        return int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0

    def _find(self, ids):
        """(positions, found) of ``ids`` in the index, vectorised."""
        encoded = [i.encode("utf-8") for i in ids]
        if not len(self.ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        hashes = id_hashes(encoded)
        order = np.argsort(hashes)  # ascending queries: each binary search starts where the last one ended
        pos = np.minimum(np.searchsorted(self.hashes, hashes[order]), len(self.ids) - 1)[np.argsort(order)]
        found = np.fromiter(map(bytes.__eq__, self.ids[pos].tolist(), encoded), bool, len(ids))
        return pos, found

    def rows(self, ids):
        """(B,) row indices of ``ids``; raises listing the IDs that have no anchor."""
        pos, found = self._find(ids)
        if not found.all():
            missing = [i for i, ok in zip(ids, found) if not ok]
            raise AnchorStoreError(f"{len(missing)} of {len(ids)} IDs have no anchor (e.g. {missing[:3]}); "
                                   "the training CSV changed after extraction: re-extract the anchors")
        return torch.from_numpy(pos.astype(np.int64))

    def lookup(self, ids, anchor_type="utterance", device=None):
        """(B, D) anchors of B row IDs: each row's own (``utterance``) or its speaker's centroid (``speaker``)."""
        rows = self.rows(ids).numpy()  # numpy gathers: single-threaded, no thread wake-up latency
        check_anchor_type(anchor_type)
        if anchor_type == "utterance":
            return torch.from_numpy(self.embeddings.numpy()[rows]).to(device)
        return torch.from_numpy(self.centroids.numpy()[self.row_speaker.numpy()[rows]]).to(device)

    def speaker_index(self, ids, device=None):
        """(B,) index in :attr:`speakers` of each row's speaker (int64)."""
        return self.row_speaker[self.rows(ids)].long().to(device)

    def _speaker_of(self, entries, anchor_type):
        """(K,) speaker indices of rows (``utterance``) or centroids (``speaker``), gathering only those."""
        return entries if anchor_type == "speaker" else self.row_speaker[entries].long()

    def sample_negatives(self, exclude, num, anchor_type="utterance", device=None):
        """(K', D) anchors and (K',) speakers of K' <= ``num`` distinct random rows (or centroids) of speakers
        not in the (B,) ``exclude``; O(num) draws from torch's generator, capped at the eligible (said once)."""
        exclude = exclude.detach().cpu().long()
        check_anchor_type(anchor_type)
        pool = self.centroids if anchor_type == "speaker" else self.embeddings
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
            draw = draw[~torch.isin(self._speaker_of(draw, anchor_type), exclude)]
            chosen = torch.unique(torch.cat([chosen, draw]))
            if len(chosen) >= num:
                chosen = chosen[torch.randperm(len(chosen))[:num]]
                break
        else:
            eligible = torch.nonzero(~torch.isin(self._speaker_of(torch.arange(size), anchor_type), exclude))
            chosen = eligible.flatten()[torch.randperm(len(eligible))[:num]]
        return pool[chosen].to(device), self._speaker_of(chosen, anchor_type).to(device)

    def _eligible(self, exclude, anchor_type):
        """How many rows (``utterance``) or centroids (``speaker``) belong to speakers not in ``exclude``."""
        excluded = torch.unique(exclude[(exclude >= 0) & (exclude < len(self.speakers))])
        if anchor_type == "speaker":
            return len(self.speakers) - len(excluded)
        if self._rows_per_speaker is None:  # one pass over the (N,) map, then (S,) counts
            self._rows_per_speaker = torch.bincount(self.row_speaker.long(), minlength=len(self.speakers))
        return len(self) - int(self._rows_per_speaker[excluded].sum())

    def check_compatible(self, *, base_fingerprint=None, row_ids=None, emb_dim=None, source=""):
        """Raises :class:`AnchorStoreError` unless the store was made from this base fingerprint, has
        this embedding size and an anchor for each of ``row_ids`` (None: not checked)."""
        where = f" ({source})" if source else ""
        made_from = self.provenance.get("base_fingerprint")
        if base_fingerprint is not None and made_from != base_fingerprint:
            made_by = self.provenance.get("base_source", self.provenance.get("base_checkpoint"))
            raise AnchorStoreError(
                f"anchors{where} were made from the base model {made_by} (fingerprint {str(made_from)[:12]}), "
                f"but stage 2 starts from a base with fingerprint {base_fingerprint[:12]}: they are stale; {REDO}"
            )
        if emb_dim is not None and emb_dim != self.emb_dim:
            raise AnchorStoreError(f"anchors{where} have embedding size {self.emb_dim} but the base model "
                                   f"embeds in {emb_dim} dimensions; {REDO}")
        if row_ids is not None:
            row_ids = list(row_ids)  # checked in blocks: 3 M IDs need no 3 M-row temporaries
            blocks = [self._find(row_ids[k:k + CHECK_BLOCK])[1] for k in range(0, len(row_ids), CHECK_BLOCK)]
            found = np.concatenate(blocks) if blocks else np.zeros(0, bool)
            if not found.all():
                missing = [i for i, ok in zip(row_ids, found) if not ok]
                raise AnchorStoreError(
                    f"{len(missing)} of {len(row_ids)} training rows have no anchor{where} "
                    f"(e.g. {missing[:3]}): the training CSV changed after extraction; {REDO}"
                )

    def digest(self):
        """Hex blake2b of the IDs, embeddings and speakers (stage 2's checkpoints record it, not the store)."""
        arrays = [np.ascontiguousarray(a) for a in (self.ids, self.embeddings.numpy(), self.row_speaker.numpy())]
        return content_digest([*arrays, "\n".join(self.speakers)], "blake2b")  # no copy: every array is contiguous

    def save(self, path):
        """Writes the store to ``path`` atomically."""
        speakers = np.array([s.encode("utf-8") for s in self.speakers], dtype=bytes)
        payload = {"embeddings": self.embeddings, "ids": byte_matrix(self.ids),
                   "hashes": torch.from_numpy(self.hashes.view(np.int64)), "row_speaker": self.row_speaker,
                   "speakers": byte_matrix(speakers), "centroids": self.centroids,
                   "provenance": dict(self.provenance)}
        with atomic_path(pathlib.Path(path)) as tmp:
            torch.save(payload, tmp)

    def load(self, path):
        """Maps a store written by :meth:`save` (copy-on-write views of the file's pages, never written)."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise AnchorStoreError(f"anchor store {path} does not exist; extract the anchors first")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            version = payload["provenance"].get("format_version")
        except Exception as err:  # corrupt, truncated, or not an anchor store (torch's text is not for users)
            raise unreadable(path, type(err).__name__) from err
        if version != FORMAT_VERSION:
            raise AnchorStoreError(f"anchor store {path} has format {version}, this version of anchor_reg reads "
                                   f"format {FORMAT_VERSION}; delete it (or pass --reextract_anchors=True) to re-extract")
        try:
            ids = byte_strings(payload["ids"].numpy())  # (N,) fixed-width bytes, the file's pages
            hashes = payload["hashes"].numpy().view(np.uint64)
            embeddings = payload["embeddings"]
        except Exception as err:
            raise unreadable(path, f"{type(err).__name__}: {err}") from err
        if embeddings.shape[0] != len(ids) or hashes.shape[0] != len(ids):
            raise AnchorStoreError(f"anchor store {path} has inconsistent sizes; delete it and re-run to re-extract")
        self.ids, self.hashes, self.embeddings, self.provenance = ids, hashes, embeddings, payload["provenance"]
        self.row_speaker, self.centroids = payload["row_speaker"], payload["centroids"]
        self.speakers = [label.decode("utf-8") for label in byte_strings(payload["speakers"].numpy())]
        self._rows_per_speaker = None
        return self

    @classmethod
    def from_file(cls, path):
        """A store read from ``path``."""
        return cls().load(path)

    def nbytes(self):
        """Bytes held by the arrays (embeddings, index, speaker map, centroids)."""
        tensors = (self.embeddings, self.row_speaker, self.centroids)
        return sum(t.element_size() * t.nelement() for t in tensors) + self.ids.nbytes + self.hashes.nbytes


def unreadable(path, reason):
    """The error for an anchor store that does not load."""
    return AnchorStoreError(f"anchor store {path} is unreadable or corrupt ({reason}); "
                            "delete it and re-run to re-extract the anchors")


def byte_matrix(strings):
    """(N,) fixed-width byte strings (numpy ``S`` dtype) -> (N, W) uint8 tensor, W >= 1, as stored."""
    width = max(1, strings.itemsize)
    padded = strings.astype(f"S{width}")  # a new contiguous array: the one copy
    return torch.from_numpy(padded.view(np.uint8).reshape(len(strings), width))


def byte_strings(matrix):
    """(N, W) uint8 array -> (N,) fixed-width byte strings viewing the same memory (no copy)."""
    return matrix.view(f"S{matrix.shape[1]}").reshape(-1)


def speaker_centroids(embeddings, row_speaker, num_speakers):
    """(S, D) unit means of the normalised (N, D) rows of each speaker; ``row_speaker`` (N,) in [0, S)."""
    normed = F.normalize(embeddings.float(), dim=-1)
    sums = torch.zeros(num_speakers, normed.shape[1]).index_add_(0, row_speaker, normed)
    return F.normalize(sums, dim=-1)


def ddp_active():
    """Whether this process is one of a DDP group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@torch.no_grad()
@preserved_random_state()
def extract_anchors(embed, dataloader, provenance=None, progressbar=True):
    """The :class:`AnchorStore` of ``dataloader``'s rows by ``embed(wavs (B, T), lens (B,)) -> (B, 1, D)``, built
    by rank 0 alone under DDP (None elsewhere); the global generators are left as they were found."""
    start = time.time()
    ids, speakers, chunks = [], [], []
    for batch in tqdm(dataloader, desc="anchors", disable=not progressbar, dynamic_ncols=True):
        wavs, lens = batch.sig
        chunks.append(embed(wavs, lens).reshape(len(batch.id), -1).float().cpu())
        ids.extend(batch.id)
        speakers.extend(batch.spk_id)
    embeddings = torch.cat(chunks) if chunks else torch.empty(0, 0)
    if ddp_active():
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
        ids, speakers = [ids[k] for k in keep], [speakers[k] for k in keep]
        embeddings = embeddings[torch.from_numpy(keep)]
    provenance = dict(provenance or {})
    provenance["extraction_seconds"] = round(time.time() - start, 2)
    return AnchorStore.from_embeddings(ids, speakers, embeddings, provenance)


def load_or_extract(base, dataset, anchors_file, *, row_ids=None, batch_size=32, num_workers=0,
                    collate_fn=None, reextract=False, device="cpu", progressbar=True, extra_provenance=None):
    """The anchors of ``dataset``'s rows (``row_ids`` must all have one): stored if they fit ``base``, else
    extracted by it; under DDP rank 0 writes them, its failure is raised on every rank, all map the file."""
    anchors_file = pathlib.Path(anchors_file)
    if anchors_file.is_file() and not reextract:
        store = AnchorStore.from_file(anchors_file)
        store.check_compatible(base_fingerprint=base.fingerprint, row_ids=row_ids, emb_dim=base.emb_dim,
                               source=str(anchors_file))
        logger.info("anchors: reusing %s (%d rows, %d speakers)", anchors_file, len(store), len(store.speakers))
        return store
    logger.info("anchors: extracting with the frozen base model %s", base.source)
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False) if ddp_active() else None
    loader = sb.dataio.dataloader.make_dataloader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                                                  num_workers=num_workers,
                                                  **({"collate_fn": collate_fn} if collate_fn is not None else {}))
    provenance = {"base_fingerprint": base.fingerprint, "base_source": base.source, **base.provenance,
                  "batch_size": batch_size, "normalised": True, **(extra_provenance or {})}
    store = extract_anchors(base.embedder(device), loader, provenance=provenance, progressbar=progressbar)
    failure = message = None
    if store is not None:  # rank 0
        try:
            store.check_compatible(row_ids=row_ids, emb_dim=base.emb_dim)
            anchors_file.parent.mkdir(parents=True, exist_ok=True)
            store.save(anchors_file)
            logger.info("anchors: wrote %s (%d rows, %d speakers)", anchors_file, len(store), len(store.speakers))
        except Exception as err:  # any failure (a full disk too) must reach the ranks waiting below
            failure = err
            message = str(err) if isinstance(err, AnchorStoreError) else (
                f"rank 0 could not write the anchors to {anchors_file} ({type(err).__name__}: {err})")
    del store  # rank 0 too keeps the mapped file, not its private copy
    if ddp_active():  # the other ranks wait here until the file is written
        box = [message]
        torch.distributed.broadcast_object_list(box, src=0)
        message = box[0]
    if failure is not None:
        raise failure  # rank 0 (or no DDP): the original exception, for train.py's error report
    if message is not None:
        raise AnchorStoreError(message)
    return AnchorStore.from_file(anchors_file)  # every rank maps the same file
