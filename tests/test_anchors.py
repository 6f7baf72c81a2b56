"""AnchorStore: lookup, centroids, Augmenter alignment, save/load, and the checks stage 2 relies on."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from speechbrain.augment.augmenter import Augmenter
from speechbrain.augment.time_domain import DropChunk

from anchor_reg.anchors import AnchorStore, checkpoint_fingerprint, id_hashes, speaker_centroids
from anchor_reg.benchmark.timing import mapped_file, memory_counters
from anchor_reg.errors import AnchorStoreError


def make_store(n=12, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = [f"spk{i % 3}--s1--u{i:02d}_0_48000" for i in range(n)][::-1]  # unsorted on purpose
    speakers = [i.split("--")[0] for i in ids]
    emb = torch.randn(n, dim, generator=gen)
    return AnchorStore.from_embeddings(ids, speakers, emb, {"base_fingerprint": "abc"}), ids, speakers, emb


def test_lookup_returns_each_rows_normalised_anchor():
    store, ids, _, emb = make_store()
    query = [ids[5], ids[0], ids[5]]
    expected = F.normalize(emb[[5, 0, 5]], dim=-1)
    assert torch.allclose(store.lookup(query), expected, atol=1e-6)
    assert not store.lookup(query).requires_grad


def test_a_long_shuffled_query_gets_its_anchors_in_its_own_order():
    store, ids, _, emb = make_store(n=500, seed=3)
    picks = torch.randint(0, 500, (300,), generator=torch.Generator().manual_seed(1))  # repeats included
    expected = F.normalize(emb[picks], dim=-1)
    assert torch.allclose(store.lookup([ids[i] for i in picks]), expected, atol=1e-6)
    missing = [ids[7], "spk9--s1--nope", ids[3], "spk8--s1--none"]
    with pytest.raises(AnchorStoreError, match=r"2 of 4 IDs have no anchor \(e.g. \['spk9--s1--nope', 'spk8--s1--none'\]"):
        store.lookup(missing)


def test_speaker_centroids_are_renormalised_means():
    store, ids, speakers, emb = make_store()
    normed = F.normalize(emb, dim=-1)
    for spk in set(speakers):
        rows = [k for k, s in enumerate(speakers) if s == spk]
        expected = F.normalize(normed[rows].mean(0), dim=0)
        got = store.lookup([ids[rows[0]]], anchor_type="speaker")[0]
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(got.norm(), torch.tensor(1.0))
    assert store.centroids.shape == (3, 8)


def test_speaker_centroids_function():
    emb = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0]])
    cent = speaker_centroids(emb, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(cent, torch.tensor([[0.7071, 0.7071], [0.0, -1.0]]), atol=1e-4)


def test_anchors_stay_aligned_with_augmenter_replicated_batch():
    store, ids, _, _ = make_store()
    batch_ids = ids[:4]
    augment = Augmenter(
        concat_original=True, repeat_augment=2, min_augmentations=1, max_augmentations=1,
        augmentations=[DropChunk(drop_length_low=10, drop_length_high=20)],
    )
    wavs = torch.randn(4, 1600)
    out, _ = augment(wavs, torch.ones(4))
    anchors = augment.replicate_labels(store.lookup(batch_ids))
    assert out.shape[0] == anchors.shape[0] == 12  # clean + 2 noisy copies
    for copy in range(3):  # every copy block lines up with the original row order
        assert torch.equal(anchors[copy * 4:(copy + 1) * 4], store.lookup(batch_ids))
    assert torch.equal(out[:4], wavs)  # the clean originals come first


def test_unknown_ids_are_counted_and_named():
    store, ids, _, _ = make_store()
    with pytest.raises(AnchorStoreError, match=r"2 of 3 IDs have no anchor.*nope"):
        store.lookup([ids[0], "nope", "a-much-longer-id-than-any-stored-one-in-the-index-xxxxxxxx"])
    with pytest.raises(AnchorStoreError, match="2 of 14 training rows have no anchor"):
        store.check_compatible(row_ids=ids + ["x", "y"])


def test_fingerprint_and_dim_mismatch_are_refused():
    store, ids, _, _ = make_store()
    store.check_compatible(base_fingerprint="abc", row_ids=ids, emb_dim=8)
    with pytest.raises(AnchorStoreError, match="stale.*re-extract"):
        store.check_compatible(base_fingerprint="def")
    with pytest.raises(AnchorStoreError, match="embedding size 8 but the base model embeds in 192"):
        store.check_compatible(emb_dim=192)


def test_save_load_roundtrip_and_provenance(tmp_path):
    store, ids, _, _ = make_store()
    store.save(tmp_path / "anchors.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["anchors.pt"]  # no temp file left
    loaded = AnchorStore.from_file(tmp_path / "anchors.pt")
    assert torch.equal(loaded.embeddings, store.embeddings)
    assert torch.equal(loaded.lookup(ids, "speaker"), store.lookup(ids, "speaker"))
    assert loaded.provenance["num_rows"] == 12 and loaded.provenance["num_speakers"] == 3
    assert loaded.provenance["emb_dim"] == 8 and loaded.provenance["base_fingerprint"] == "abc"
    assert loaded.embeddings.is_contiguous() and loaded.embeddings.dtype == torch.float32


def test_corrupt_and_truncated_files_give_clear_errors(tmp_path):
    store, _, _, _ = make_store()
    path = tmp_path / "anchors.pt"
    store.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AnchorStoreError, match="unreadable or corrupt.*re-extract"):
        AnchorStore.from_file(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(AnchorStoreError, match=str(path)):
        AnchorStore.from_file(path)
    with pytest.raises(AnchorStoreError, match="does not exist"):
        AnchorStore.from_file(tmp_path / "missing.pt")


def test_checkpoint_fingerprint_tracks_model_files(tmp_path):
    for name in ("embedding_model", "classifier", "normalizer"):
        (tmp_path / f"{name}.ckpt").write_bytes(name.encode())
    first = checkpoint_fingerprint(tmp_path)
    (tmp_path / "optimizer.ckpt").write_bytes(b"ignored")
    assert checkpoint_fingerprint(tmp_path) == first
    (tmp_path / "classifier.ckpt").write_bytes(b"changed")
    assert checkpoint_fingerprint(tmp_path) != first


def test_store_of_another_format_version_is_named(tmp_path):
    store, _, _, _ = make_store()
    store.provenance["format_version"] = 2  # format 2 stored the speaker labels as a list
    store.save(tmp_path / "old.pt")
    with pytest.raises(AnchorStoreError, match="has format 2.*reads format 3.*re-extract"):
        AnchorStore.from_file(tmp_path / "old.pt")


def test_speaker_labels_survive_the_byte_tensor_they_are_stored_as(tmp_path):
    labels = ["id10001", "spk\u00e9", "a"]  # non-ASCII and of different lengths
    store = AnchorStore.from_embeddings(["r0", "r1", "r2"], labels, torch.eye(3), {"base_fingerprint": "x"})
    store.save(tmp_path / "a.pt")
    loaded = AnchorStore.from_file(tmp_path / "a.pt")
    assert loaded.speakers == sorted(labels)
    assert torch.equal(loaded.lookup(["r1"], anchor_type="speaker"), store.lookup(["r1"], anchor_type="speaker"))


def test_id_hashes_are_the_stored_format():
    """Saved stores index rows by these values: they must not change between versions or machines."""
    ids = ["id10001--1zcIwhmdeo4--00001_0_48000", "spk\u00e9/u1"]
    hashes = id_hashes([i.encode("utf-8") for i in ids])
    assert hashes.dtype == np.uint64 and hashes.tolist() == [13600694152428524435, 5665688703609894703]
    assert len(id_hashes([])) == 0


def test_negative_bank_is_drawn_only_from_other_speakers_without_repeats():
    store, ids, speakers, _ = make_store(n=30)
    exclude = store.speaker_index([ids[0], ids[1]])  # two of the three speakers
    torch.manual_seed(0)
    bank, bank_speakers = store.sample_negatives(exclude, 6)
    remaining = set(range(3)) - set(exclude.tolist())
    assert set(bank_speakers.tolist()) <= remaining and len(bank) == 6
    rows_of_remaining = store.embeddings[torch.isin(store.row_speaker.long(), torch.tensor(sorted(remaining)))]
    for anchor in bank:  # each drawn anchor is one of those speakers' rows, none twice
        assert (rows_of_remaining == anchor).all(dim=1).sum() == 1
    assert len({tuple(a.tolist()) for a in bank}) == 6
    everything, _ = store.sample_negatives(exclude, 1000)  # more than exist: every eligible row once
    assert len(everything) == len(rows_of_remaining)


def test_a_huge_negative_bank_is_bounded_by_the_store(monkeypatch, caplog):
    """--contrastive_negatives=1000000000 draws every other-speaker row once and allocates nothing larger."""
    store, ids, _, _ = make_store(n=30)
    exclude = store.speaker_index([ids[0]])
    eligible = int((~torch.isin(store.row_speaker.long(), exclude)).sum())  # counted independently
    randint = torch.randint

    def bounded_randint(high, size, *args, **kwargs):
        assert size[0] <= 4 * len(store) + 16, f"draws {size[0]} indices from a store of {len(store)} rows"
        return randint(high, size, *args, **kwargs)

    monkeypatch.setattr(torch, "randint", bounded_randint)
    caplog.set_level("INFO", logger="anchor_reg.anchors")
    for _ in range(2):
        bank, bank_speakers = store.sample_negatives(exclude, 1_000_000_000)
        assert bank.shape == (eligible, store.emb_dim) and not torch.isin(bank_speakers, exclude).any()
    centroids, _ = store.sample_negatives(exclude, 1_000_000_000, anchor_type="speaker")
    assert len(centroids) == len(store.speakers) - 1
    reports = [r.getMessage() for r in caplog.records if "contrastive_negatives" in r.getMessage()]
    assert len(reports) == 1 and f"at most {eligible} utterance anchors" in reports[0]


def test_negative_bank_of_speaker_anchors_draws_other_centroids():
    store, ids, _, _ = make_store(n=30)
    exclude = store.speaker_index([ids[0]])
    bank, bank_speakers = store.sample_negatives(exclude, 5, anchor_type="speaker")
    assert sorted(bank_speakers.tolist()) == sorted(set(range(3)) - set(exclude.tolist()))
    assert torch.equal(bank, store.centroids[bank_speakers])


def test_speaker_index_follows_the_rows():
    store, ids, speakers, _ = make_store()
    got = store.speaker_index(ids[:5])
    assert [store.speakers[k] for k in got.tolist()] == speakers[:5]


def test_a_loaded_store_is_mapped_and_answers_as_the_one_it_was_saved_from(tmp_path):
    store, ids, _, _ = make_store(n=60)
    path = tmp_path / "anchors.pt"
    store.save(path)
    loaded = AnchorStore.from_file(path)
    for array in (loaded.embeddings.numpy(), loaded.ids, loaded.hashes, loaded.row_speaker.numpy(),
                  loaded.centroids.numpy()):  # views of the file's pages, not private copies
        assert mapped_file(array.ctypes.data) == str(path)
    assert mapped_file(store.embeddings.numpy().ctypes.data) != str(path)  # the probe tells them apart
    for kind in ("utterance", "speaker"):
        assert torch.equal(loaded.lookup(ids[::-1], kind), store.lookup(ids[::-1], kind))
    assert torch.equal(loaded.speaker_index(ids), store.speaker_index(ids))
    exclude = store.speaker_index(ids[:1])
    for kind in ("utterance", "speaker"):
        torch.manual_seed(3)
        expected = store.sample_negatives(exclude, 7, kind)
        torch.manual_seed(3)
        got = loaded.sample_negatives(exclude, 7, kind)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert loaded.digest() == store.digest()
    loaded.check_compatible(base_fingerprint="abc", row_ids=ids, emb_dim=8)
    with pytest.raises(AnchorStoreError, match="1 of 61 training rows have no anchor"):
        loaded.check_compatible(row_ids=ids + ["x"])


def test_loading_a_large_store_allocates_no_private_copy(tmp_path):
    """A 200 MB store: load, digest, lookups and the CSV check map its pages but copy almost nothing."""
    n, dim = 262_144, 192
    ids = [f"r{i}" for i in range(n)]
    store = AnchorStore.from_embeddings(ids, [f"s{i % 100}" for i in range(n)], torch.randn(n, dim))
    path = tmp_path / "anchors.pt"
    store.save(path)
    expected_digest, size = store.digest(), n * dim * 4
    del store
    before = memory_counters()
    loaded = AnchorStore.from_file(path)
    assert loaded.digest() == expected_digest  # reads every page of the embeddings
    for k in range(20):
        loaded.lookup(ids[k * 1000:k * 1000 + 512])
        loaded.sample_negatives(loaded.speaker_index(ids[:32]), 1024)
    loaded.check_compatible(row_ids=ids)
    after = memory_counters()
    assert after["Rss"] - before["Rss"] > 0.9 * size  # the pages are resident, through the mapping
    assert after["Anonymous"] - before["Anonymous"] < 0.1 * size  # and not copied
