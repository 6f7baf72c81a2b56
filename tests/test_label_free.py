"""Label-free stage 2: its objective, its negatives, its dev criterion and its configuration checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from anchor_reg.anchors import AnchorStore
from anchor_reg.checks import implied_conflict, label_free_conflict
from anchor_reg.losses import AnchorDistanceLoss, ContrastiveAnchorLoss
from anchor_reg.retrieval import AnchorRetrievalStats, retrieval_error

# three rows: rows 0 and 1 are cut from source file A, row 2 from file B
EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
ANCHORS = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
FILES = torch.tensor([0, 0, 1])


def test_label_free_contrastive_value_masks_same_file_rows():
    loss = ContrastiveAnchorLoss(weight=1.0, scale=2.0, margin=0.0, num_negatives=0)
    c = 1.4 / math.sqrt(2)  # cos(e2, a1) = cos(e2, a2)
    row0 = -math.log(math.exp(2 * 1.0) / (math.exp(2 * 1.0) + math.exp(2 * 0.8)))  # a1 masked (same file)
    row1 = -math.log(math.exp(2 * 0.8) / (math.exp(2 * 0.8) + math.exp(2 * 0.6)))  # a0 masked
    row2 = -math.log(math.exp(2 * c) / (math.exp(2 * c) + math.exp(2 / math.sqrt(2)) + math.exp(2 * c)))
    value = loss(EMB, ANCHORS, FILES)
    assert float(value) == pytest.approx((row0 + row1 + row2) / 3, abs=1e-6)


def test_label_free_contrastive_gradient_is_the_softmax_residual_through_the_normalisation():
    loss = ContrastiveAnchorLoss(weight=1.0, scale=2.0, margin=0.0, num_negatives=0)
    emb = EMB.clone().requires_grad_(True)
    loss(emb, ANCHORS, FILES).backward()
    unit, anchors = F.normalize(EMB, dim=-1), F.normalize(ANCHORS, dim=-1)
    mask = FILES[:, None] == FILES[None, :]
    expected = []
    for i in range(3):
        allowed = [j for j in range(3) if j == i or not mask[i, j]]
        logits = torch.tensor([2.0 * float(unit[i] @ anchors[j]) for j in allowed])
        residual = torch.softmax(logits, 0) - torch.tensor([1.0 if j == i else 0.0 for j in allowed])
        d_unit = sum(r * 2.0 * anchors[j] for r, j in zip(residual, allowed)) / 3  # mean over rows
        projection = (torch.eye(2) - torch.outer(unit[i], unit[i])) / EMB[i].norm()
        expected.append(projection @ d_unit)
    assert torch.allclose(emb.grad, torch.stack(expected), atol=1e-6)


def test_label_free_pull_value_and_gradient():
    emb = torch.tensor([[2.0, 0.0]], requires_grad=True)
    anchor = torch.tensor([[1.0, 1.0]])
    value = AnchorDistanceLoss(weight=3.0)(emb, anchor)
    assert float(value.detach()) == pytest.approx(3.0 * (1 - 1 / math.sqrt(2)))
    value.backward()
    # d(1 - e.a/|e||a|)/de = -(a/(|e||a|) - (e.a) e/(|e|^3 |a|)) = -([1, 1] - [1, 0]) / (2 sqrt 2) at e = [2, 0]
    assert torch.allclose(emb.grad, 3.0 * torch.tensor([[0.0, -1 / (2 * math.sqrt(2))]]), atol=1e-6)


def test_negatives_never_include_the_row_itself_or_rows_of_the_same_source_file():
    ids = [f"f{k // 3}_{k}" for k in range(30)]  # ten files of three rows
    store = AnchorStore.from_embeddings(ids, [i.split("_")[0] for i in ids], torch.randn(30, 4), {})
    batch = ["f0_0", "f3_9", "f3_10"]
    files = store.speaker_index(batch)
    torch.manual_seed(0)
    for _ in range(50):
        bank, bank_files = store.sample_negatives(files, 8)
        assert not set(bank_files.tolist()) & {store.speakers.index("f0"), store.speakers.index("f3")}
        batch_anchors = store.lookup(batch)
        assert not any(torch.equal(b, a) for b in bank for a in batch_anchors)
    # in the loss, a bank entry of the rows' own file is neither positive nor negative: adding it changes nothing
    loss = ContrastiveAnchorLoss(scale=5.0, margin=0.1, num_negatives=1)
    batch, files = ["f3_9", "f3_10"], store.speaker_index(["f3_9", "f3_10"])
    emb, anchors = torch.randn(2, 4), store.lookup(batch)
    alone = loss(emb, anchors, files)
    same_file = store.lookup(["f3_11"])  # a third row of f3, not in the batch
    assert torch.isclose(loss(emb, anchors, files, same_file, store.speaker_index(["f3_11"])), alone)
    other_file = store.lookup(["f5_15"])
    assert not torch.isclose(loss(emb, anchors, files, other_file, store.speaker_index(["f5_15"])), alone)


def test_anchor_retrieval_error_on_hand_made_embeddings():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = torch.tensor([[0.9, 0.1], [0.8, 0.3], [-1.0, 0.2]])  # row 1's noisy copy lands nearer row 0's anchor
    assert retrieval_error(queries, torch.tensor([0, 1, 2]), gallery) == pytest.approx(1 / 3)
    ids = ["a", "b", "c"]
    store = AnchorStore.from_embeddings(ids, ids, gallery, {})
    stats = AnchorRetrievalStats(store)
    stats.append(["c", "a"], queries[[2, 0]])
    stats.append(["b"], queries[[1]].unsqueeze(1))
    assert stats.summarize("average") == pytest.approx(1 / 3)


def test_label_free_keys_are_checked_together():
    assert label_free_conflict({"classifier_head": "trainable"}, {"supervision": "none",
                                                                 "classifier_head": "anchor_centroids"}) == "classifier_head"
    assert label_free_conflict({"aam_margin": 0.5}, {"supervision": "labelled", "aam_margin": 0.2}) is None
    assert implied_conflict({"supervision": "none", "anchor_weight": 0.0, "dev_criterion": "anchor_retrieval"})[1] \
        == "anchor_weight"
    assert implied_conflict({"supervision": "none", "anchor_weight": 1.0, "dev_criterion": "classification"})[1] \
        == "dev_criterion"
    assert implied_conflict({"dataset": "unlabelled"})[1] == "supervision"  # stage 1 has no label-free mode
    assert implied_conflict({"replay_rows": 4, "replay_folders": []})[1] == "replay_folders"
    assert implied_conflict({"replay_rows": 0, "replay_folders": []}) is None


def test_adapt_yaml_loads_with_its_data_and_refuses_what_it_cannot_run(tmp_path):
    from anchor_reg.config import ConfigError, load_hparams
    from tiny import REPO

    adapt = REPO / "hparams" / "adapt.yaml"
    options = {"output_base": str(tmp_path), "data_folders": [str(tmp_path / "speech")], "channels": 16,
               "replay_folders": [str(tmp_path / "broad")]}
    hparams = load_hparams(adapt, options)
    assert (hparams["dev_criterion"], hparams["replay_rows"], hparams["replay_dev_rows"],
            hparams["anchor_objective"]) == ("anchor_retrieval", 16, 200, "contrastive")
    with pytest.raises(ConfigError, match="replay_dev_rows"):
        load_hparams(adapt, dict(options, replay_dev_rows=-1))
    with pytest.raises(ConfigError, match="key 'replay_folders' must be at least one folder of audio when replay_rows is 16"):
        load_hparams(adapt, dict(options, replay_folders=[]))
    with pytest.raises(ConfigError, match="key 'base_model' must be a base model"):
        load_hparams(adapt, dict(options, base_model=None))
    with pytest.raises(ConfigError, match="key 'aam_margin' shapes the classifier"):
        load_hparams(adapt, dict(options, dataset="unlabelled", supervision="none", verification_folders=["v"],
                                 aam_margin=0.3))
