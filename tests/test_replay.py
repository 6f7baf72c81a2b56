"""Replay: rows drawn only from the replay set, deterministically, tied to their own anchors."""
import types

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from anchor_reg.anchors import AnchorStore
from anchor_reg.brains import AnchorRegBrain
from anchor_reg.corruption import stable_seed
from anchor_reg.errors import ConfigError
from anchor_reg.replay import ReplaySet, broad_dev_ids
from anchor_reg.retrieval import retrieval_error
from test_brains import IDS, make_batch, make_brain, make_hparams

REPLAY_IDS = [f"broad--file{k // 2}_{k}" for k in range(10)]


def replay_dataset():
    rows = {row_id: {"index": k} for k, row_id in enumerate(REPLAY_IDS)}

    @sb.utils.data_pipeline.takes("index")
    @sb.utils.data_pipeline.provides("sig")
    def sig(index):
        return torch.randn(8000, generator=torch.Generator().manual_seed(100 + index))

    return DynamicItemDataset(rows, dynamic_items=[sig], output_keys=["id", "sig"])


def stores():
    torch.manual_seed(0)
    main = AnchorStore.from_embeddings(IDS, [i[:4] for i in IDS], torch.randn(4, 8), {"base_fingerprint": "base"})
    replay = AnchorStore.from_embeddings(REPLAY_IDS, [i.split("_")[0] for i in REPLAY_IDS], torch.randn(10, 8),
                                         {"base_fingerprint": "base"})
    return main, replay


def test_replay_draws_are_rows_of_the_replay_set_and_repeat_for_the_same_step():
    replay = ReplaySet(replay_dataset(), stores()[1], rows=6, seed=3)
    first = replay.draw(epoch=2, step=5)
    assert set(first.id) <= set(REPLAY_IDS) and len(first.id) == 6
    again = replay.draw(epoch=2, step=5)
    assert first.id == again.id and torch.equal(first.sig.data, again.sig.data)
    draws = {tuple(replay.draw(epoch=2, step=s).id) for s in range(6)}
    assert len(draws) > 1  # another step, other rows
    assert tuple(ReplaySet(replay_dataset(), stores()[1], rows=6, seed=4).draw(2, 5).id) != tuple(first.id)


def test_replay_term_pulls_the_drawn_rows_to_their_own_anchors_from_the_same_base(tmp_path):
    hparams = make_hparams("stage2.yaml", tmp_path, anchor_objective="pull", replay_rows=3, replay_weight=0.5,
                           replay_objective="pull", replay_folders=["unused"])
    main, replay_store = stores()
    assert replay_store.provenance["base_fingerprint"] == main.provenance["base_fingerprint"]
    replay = ReplaySet(replay_dataset(), replay_store, rows=3, seed=1)
    brain = make_brain(AnchorRegBrain, hparams, anchors=main, replay=replay)
    brain.step = 4
    seen = []
    embed_rows = brain.compute_embeddings
    brain.compute_embeddings = lambda wavs, lens: seen.append(embed_rows(wavs, lens)) or seen[-1]
    term = brain.replay_term()
    drawn = replay.draw(brain.hparams.epoch_counter.current, 4).id
    assert set(drawn) <= set(REPLAY_IDS)
    emb = seen[0].squeeze(1)
    anchors = replay_store.lookup(drawn).repeat(2, 1)  # clean + augmented copy of each replay row
    expected = 0.5 * (1 - torch.nn.functional.cosine_similarity(emb, anchors)).mean()
    assert torch.allclose(term, expected, atol=1e-6)
    brain.compute_embeddings = embed_rows
    brain.fit_batch(make_batch())
    assert set(brain.loss_terms) == {"aam", "anchor", "replay"}


def test_the_replay_store_lends_negatives_to_the_main_contrastive_objective(tmp_path):
    hparams = make_hparams("stage2.yaml", tmp_path, anchor_objective="contrastive", contrastive_negatives=2)
    main, replay_store = stores()
    brain = make_brain(AnchorRegBrain, hparams, anchors=main, replay=ReplaySet(replay_dataset(), replay_store, 2, 1))
    calls = []
    for store in (main, replay_store):
        draw = store.sample_negatives
        store.sample_negatives = lambda *a, _draw=draw, _s=store, **k: calls.append(_s) or _draw(*a, **k)
    predictions = brain.compute_forward(make_batch(), sb.Stage.TRAIN)
    brain.extra_terms(predictions, make_batch())
    assert calls[:2] == [main, replay_store]  # the main objective's bank: K from each store


def write_replay_csv(prep, files):
    """replay.csv with ``files`` {source file: number of rows}; returns the row IDs by file."""
    prep.mkdir(parents=True, exist_ok=True)
    rows = {name: [f"{name}_{k}" for k in range(count)] for name, count in files.items()}
    lines = ["ID,duration,wav,start,stop,spk_id"] + [f"{i},1.0,{name}.wav,0,16000,{name}"
                                                       for name, ids in rows.items() for i in ids]
    (prep / "replay.csv").write_text("\n".join(lines) + "\n")
    return rows


def test_broad_dev_rows_are_whole_files_held_out_by_seed_and_never_drawn(tmp_path):
    files = write_replay_csv(tmp_path, {f"file{k}": 1 + k % 3 for k in range(12)})
    values = {"prep_folder": str(tmp_path), "data_seed": 7, "replay_rows": 2, "replay_dev_rows": 5,
              "dev_criterion": "anchor_retrieval"}
    held = broad_dev_ids(values)
    held_files = {name for name, ids in files.items() if set(ids) & set(held)}
    assert set(held) == {i for name in held_files for i in files[name]}  # whole source files only
    largest = max(len(files[name]) for name in held_files)
    assert 5 <= len(held) < 5 + largest  # at least the rows asked, stopping at the first file that reaches them
    assert broad_dev_ids(values) == held and broad_dev_ids(dict(values, data_seed=8)) != held
    for off in ({"replay_dev_rows": 0}, {"replay_rows": 0}, {"dev_criterion": "classification"}):
        assert broad_dev_ids(dict(values, **off)) == []
    with pytest.raises(ConfigError, match="replay_dev_rows"):
        broad_dev_ids(dict(values, replay_dev_rows=24))  # 24 rows in all: nothing left to train on

    dataset = replay_dataset()
    dev_ids = {"broad--file1_2", "broad--file1_3", "broad--file4_9"}
    replay = ReplaySet(dataset, stores()[1], rows=4, seed=3, dev_ids=dev_ids)
    assert [REPLAY_IDS[k] for k in replay.dev] == sorted(dev_ids)
    drawn = {i for step in range(100) for i in replay.draw(epoch=1, step=step).id}
    assert drawn == set(REPLAY_IDS) - dev_ids


def test_replay_draws_without_held_out_rows_follow_the_documented_seeding():
    replay = ReplaySet(replay_dataset(), stores()[1], rows=6, seed=3, rank=1)
    generator = torch.Generator().manual_seed(stable_seed("replay", 3, 1, 2, 5))
    expected = [REPLAY_IDS[k] for k in torch.randint(len(REPLAY_IDS), (6,), generator=generator)]
    assert replay.draw(epoch=2, step=5).id == expected


# hand-made 2-D embeddings: dev rows a, b, c (row b's noisy copy is nearer a's anchor: 1/3 wrong) ...
DEV_ANCHORS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
DEV_QUERIES = torch.tensor([[0.9, 0.1], [0.8, 0.3], [-1.0, 0.2]])
# ... and broad dev rows file0 and file1 (rows 0-3) among replay rows 0-9: row 2's noisy copy is nearer row 3's
# anchor (1/4 wrong); row 3's is nearest the anchor of row 5, which is no broad dev row and so not in the gallery
BROAD = ["broad--file0_0", "broad--file0_1", "broad--file1_2", "broad--file1_3"]
REPLAY_ANCHORS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.5, 0.5], [0.3, -1.0],
                               [0.5, -0.5], [-0.5, 0.5], [-0.5, -0.5], [0.2, 0.7]])
BROAD_QUERIES = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.1, -0.9], [0.3, -1.0]])


def criterion_brain(tmp_path, dev_ids):
    hparams = make_hparams("stage2.yaml", tmp_path, dev_criterion="anchor_retrieval", replay_rows=2,
                           replay_folders=["unused"], replay_dev_rows=4)
    dev = AnchorStore.from_embeddings(["a", "b", "c"], ["a", "b", "c"], DEV_ANCHORS, {})
    replay_store = AnchorStore.from_embeddings(REPLAY_IDS, REPLAY_IDS, REPLAY_ANCHORS, {})
    tag = {row_id: k for k, row_id in enumerate(REPLAY_IDS)}  # each noisy copy carries its row's index
    replay = ReplaySet(replay_dataset(), replay_store, 2, 1, dev_ids=dev_ids,
                       dev_copies=lambda wav, row_id: torch.full((400,), float(tag[row_id])))
    brain = make_brain(AnchorRegBrain, hparams, anchors=stores()[0], dev_anchors=dev, replay=replay)
    brain.compute_embeddings = lambda wavs, lens: BROAD_QUERIES[int(wavs[0, 0])].reshape(1, 1, 2)
    brain.on_stage_start(sb.Stage.VALID, 1)
    brain.error_metrics.append(["a", "b", "c"], DEV_QUERIES)
    logged, saved = [], []
    brain.hparams.train_logger = types.SimpleNamespace(log_stats=lambda **k: logged.append(k["valid_stats"]))
    brain.checkpointer = types.SimpleNamespace(save_and_keep_only=lambda **k: saved.append(k["meta"]["ErrorRate"]))
    brain.train_stats = {"loss": 0.0}
    brain.on_stage_end(sb.Stage.VALID, 0.5, epoch=1)
    return logged[0], saved[0]


def test_with_broad_dev_rows_the_criterion_is_the_mean_of_both_retrieval_errors(tmp_path):
    stats, best = criterion_brain(tmp_path, set(BROAD))
    assert stats == {"loss": 0.5, "ErrorRate": pytest.approx((1 / 3 + 1 / 4) / 2),
                     "retrieval_dev": pytest.approx(1 / 3), "retrieval_broad": pytest.approx(1 / 4)}
    assert best == stats["ErrorRate"]  # early stopping and the best checkpoint follow the mean


def test_without_broad_dev_rows_the_criterion_and_its_log_are_the_dev_rows_alone(tmp_path):
    stats, best = criterion_brain(tmp_path, frozenset())
    assert list(stats) == ["loss", "ErrorRate"] and stats["ErrorRate"] == best
    assert stats["ErrorRate"] == retrieval_error(DEV_QUERIES, torch.tensor([0, 1, 2]), DEV_ANCHORS)
