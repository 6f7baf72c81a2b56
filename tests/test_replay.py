"""Replay: rows drawn only from the replay set, deterministically, tied to their own anchors."""
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from anchor_reg.anchors import AnchorStore
from anchor_reg.brains import AnchorRegBrain
from anchor_reg.replay import ReplaySet
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
