"""The three Brains on one hand-made batch: what each trains, freezes and adds to the loss."""
import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from anchor_reg.anchors import AnchorStore
from anchor_reg.brains import AnchorRegBrain, JointBrain, SpeakerBrain
from anchor_reg.config import load_hparams
from tiny import REPO

IDS = [f"spk{k % 2}--s1--u{k}_0_8000" for k in range(4)]


def make_hparams(yaml_name, tmp_path, **overrides):
    options = {
        "output_base": str(tmp_path), "channels": 16, "emb_dim": 8, "num_train_speakers": 2,
        "train_noise_csv": "unused.csv", "train_babble_csv": "unused.csv", "train_rir_csv": "unused.csv",
    }
    options.update(overrides)
    hparams = load_hparams(REPO / "hparams" / yaml_name, options)
    hparams["wav_augment"] = sb.augment.augmenter.Augmenter(
        concat_original=True, min_augmentations=1, max_augmentations=1,
        augmentations=[sb.augment.time_domain.DropChunk(drop_length_low=100, drop_length_high=200)],
    )
    return hparams


def make_batch():
    gen = torch.Generator().manual_seed(0)
    return PaddedBatch([
        {"id": i, "sig": torch.randn(8000, generator=gen), "spk_id_encoded": torch.tensor([k % 2])}
        for k, i in enumerate(IDS)
    ])


def make_brain(cls, hparams, **options):
    brain = cls(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                run_opts={"device": "cpu", "noprogressbar": True}, **options)
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    return brain


def store_for(hparams):
    return AnchorStore.from_embeddings(IDS, [i[:4] for i in IDS], torch.randn(4, 8), {"base_fingerprint": "x"})


def test_stage1_loss_is_aam_only(tmp_path):
    brain = make_brain(SpeakerBrain, make_hparams("stage1.yaml", tmp_path))
    brain.fit_batch(make_batch())
    assert set(brain.loss_terms) == {"aam"}


def test_stage2_adds_the_anchor_term_aligned_with_the_augmented_batch(tmp_path):
    hparams = make_hparams("stage2.yaml", tmp_path, anchor_objective="pull", anchor_weight=2.0)
    store = store_for(hparams)
    brain = make_brain(AnchorRegBrain, hparams, anchors=store)
    batch = make_batch()
    predictions = brain.compute_forward(batch, sb.Stage.TRAIN)
    assert predictions["emb"].shape[0] == 8  # clean + 1 augmented copy
    term = brain.extra_objective(predictions, batch)
    anchors = store.lookup(IDS).repeat(2, 1)
    expected = 2.0 * (1 - torch.nn.functional.cosine_similarity(predictions["emb"].squeeze(1), anchors)).mean()
    assert torch.allclose(term, expected, atol=1e-6)
    brain.fit_batch(batch)
    assert set(brain.loss_terms) == {"aam", "anchor"}


def test_crop_dur_crops_training_rows_but_not_dev_rows(tmp_path):
    hparams = make_hparams("stage2.yaml", tmp_path, crop_dur=0.25)  # 4000 of the rows' 8000 samples
    brain = make_brain(AnchorRegBrain, hparams, anchors=store_for(hparams))
    seen = []
    embed_rows = brain.compute_embeddings
    brain.compute_embeddings = lambda wavs, lens: seen.append(wavs.shape) or embed_rows(wavs, lens)
    brain.compute_forward(make_batch(), sb.Stage.TRAIN)
    brain.compute_forward(make_batch(), sb.Stage.VALID)
    assert seen == [(8, 4000), (4, 8000)]  # clean + augmented copy of each 0.25 s crop; dev rows whole


def test_frozen_parameters_and_norm_stats_do_not_move(tmp_path):
    hparams = make_hparams("stage2.yaml", tmp_path, frozen_parameters=["classifier"], freeze_norm_stats=True)
    brain = make_brain(AnchorRegBrain, hparams, anchors=store_for(hparams))
    classifier = hparams["classifier"].weight.detach().clone()
    bn = [m for m in hparams["embedding_model"].modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
    running = bn.running_mean.clone()
    first_conv = next(hparams["embedding_model"].parameters()).detach().clone()
    brain.fit_batch(make_batch())
    assert torch.equal(hparams["classifier"].weight, classifier)
    assert torch.equal(bn.running_mean, running)
    assert not torch.equal(next(hparams["embedding_model"].parameters()), first_conv)


def test_unknown_frozen_prefix_is_named(tmp_path):
    hparams = make_hparams("stage2.yaml", tmp_path, frozen_parameters=["clasifier"])
    with pytest.raises(ValueError, match="frozen_parameters: 'clasifier' matches no parameter"):
        make_brain(AnchorRegBrain, hparams, anchors=store_for(hparams))


def test_joint_pulls_noisy_towards_online_clean_embedding(tmp_path):
    hparams = make_hparams("joint.yaml", tmp_path, consistency_weight=1.0)
    brain = make_brain(JointBrain, hparams)
    batch = make_batch()
    predictions = brain.compute_forward(batch, sb.Stage.TRAIN)
    term = brain.extra_objective(predictions, batch)
    emb = predictions["emb"].squeeze(1)
    expected = (1 - torch.nn.functional.cosine_similarity(emb[4:], emb[:4])).mean()
    assert torch.allclose(term, expected, atol=1e-6)
    term.backward()  # the gradient reaches the clean branch too (not detached)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hparams["embedding_model"].parameters())
    flat = {"emb": predictions["emb"].squeeze(1).detach()}  # (B, D) backbones such as ResNet
    assert brain.extra_objective(flat, batch).shape == ()


def test_stage2_contrastive_term_uses_replicated_anchors_and_a_bank_of_other_speakers(tmp_path):
    hparams = make_hparams("stage2.yaml", tmp_path, anchor_objective="contrastive", contrastive_negatives=4,
                           contrastive_scale=10.0, contrastive_margin=0.2)
    ids = IDS + [f"spk{k}--s1--u9_0_8000" for k in (2, 3, 4)]  # three speakers outside the batch
    store = AnchorStore.from_embeddings(ids, [i[:4] for i in ids], torch.randn(7, 8), {"base_fingerprint": "x"})
    brain = make_brain(AnchorRegBrain, hparams, anchors=store)
    batch = make_batch()
    predictions = brain.compute_forward(batch, sb.Stage.TRAIN)
    torch.manual_seed(5)
    term = brain.extra_objective(predictions, batch)
    torch.manual_seed(5)  # the same bank, drawn again by hand
    speakers = store.speaker_index(IDS)
    bank, bank_speakers = store.sample_negatives(speakers, 4)
    assert set(bank_speakers.tolist()) == {2, 3, 4}  # only 3 eligible rows: all of them, no batch speaker
    emb = torch.nn.functional.normalize(predictions["emb"].squeeze(1), dim=-1)
    candidates = torch.cat([store.lookup(IDS).repeat(2, 1), bank])  # clean + noisy copies share an anchor
    cand_speakers = torch.cat([speakers.repeat(2), bank_speakers])
    logits = 10.0 * emb @ candidates.T
    rows = torch.arange(8)
    logits[rows, rows] -= 10.0 * 0.2
    mask = (speakers.repeat(2)[:, None] == cand_speakers[None, :])
    mask[rows, rows] = False
    expected = torch.nn.functional.cross_entropy(logits.masked_fill(mask, float("-inf")), rows)
    assert torch.allclose(term, expected, atol=1e-5)


def test_head_fixed_at_centroids_stays_there_after_a_step(tmp_path):
    from anchor_reg.heads import set_head_to_centroids

    hparams = make_hparams("stage2.yaml", tmp_path, classifier_head="anchor_centroids")
    store = store_for(hparams)
    encoder = sb.dataio.encoder.CategoricalEncoder()
    encoder.update_from_iterable(["spk1", "spk0"])  # class order differs from the store's sorted speakers
    set_head_to_centroids(hparams["classifier"], store, encoder)
    expected = torch.stack([store.centroids[store.speakers.index(s)] for s in ("spk1", "spk0")])
    assert torch.equal(hparams["classifier"].weight.detach(), expected)
    brain = make_brain(AnchorRegBrain, hparams, anchors=store)
    first_conv = next(hparams["embedding_model"].parameters()).detach().clone()
    brain.fit_batch(make_batch())
    assert torch.equal(hparams["classifier"].weight.detach(), expected)
    assert not torch.equal(next(hparams["embedding_model"].parameters()), first_conv)


def test_dev_error_scores_the_clean_rows_and_their_noisy_copies(tmp_path):
    brain = make_brain(SpeakerBrain, make_hparams("stage1.yaml", tmp_path))
    brain.on_stage_start(sb.Stage.VALID, 1)
    rows = make_batch()
    gen = torch.Generator().manual_seed(1)
    batch = PaddedBatch([
        {"id": i, "sig": rows.sig.data[k], "sig_noisy": torch.randn(8000, generator=gen),
         "spk_id_encoded": torch.tensor([k % 2])}
        for k, i in enumerate(IDS)
    ])
    brain.modules.eval()
    with torch.no_grad():
        predictions = brain.compute_forward(batch, sb.Stage.VALID)
        brain.compute_objectives(predictions, batch, sb.Stage.VALID)
        clean = brain.compute_forward(make_batch(), sb.Stage.VALID)
    assert predictions["emb"].shape[0] == 8
    assert torch.allclose(predictions["emb"][:4], clean["emb"], atol=1e-5)  # clean rows first
    predicted = predictions["logits"].squeeze(1).argmax(-1)
    labels = torch.tensor([k % 2 for k in range(4)] * 2)
    expected = float((predicted != labels).float().mean())
    assert brain.error_metrics.summarize("average") == pytest.approx(expected)
    assert len(brain.error_metrics.ids) == 8
