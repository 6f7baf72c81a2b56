"""The trainers (stage 1, stage 2 with fixed anchors, the joint baseline): one forward path (Augmenter -> Fbank ->
InputNormalization -> embedding_model -> classifier -> AAM), different terms beside AAM (``extra_terms``)."""
import logging

import speechbrain as sb
import torch
import yaml

from anchor_reg.data.batching import random_crops
from anchor_reg.embedding import embed
from anchor_reg.forgetting import L2SP
from anchor_reg.losses import anchor_distance
from anchor_reg.retrieval import AnchorRetrievalStats, own_rows_error
from anchor_reg.random_state import RandomState

logger = logging.getLogger(__name__)


@sb.utils.checkpoints.register_checkpoint_hooks
class SpeakerBrain(sb.core.Brain):
    """Stage 1: a speaker-embedding model trained with AAM-softmax; with a checkpointer the stage is seeded
    from (``seed``, ``stage``) and resumes bit-identically (:class:`RandomState`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.random_state = None
        if self.checkpointer is not None:
            self.random_state = RandomState(self.hparams.seed, self.hparams.stage, self.augmenter)
            # optional: checkpoints saved before stages kept their random state still resume (not bit-identically)
            self.checkpointer.add_recoverable("random_state", self.random_state, optional_load=True)

    def compute_embeddings(self, wavs, lens):
        """(B, T) waveforms, (B,) relative lengths -> (B, 1, D) embeddings."""
        return embed(self.modules, wavs, lens)

    @property
    def augmenter(self):
        """The training ``Augmenter`` or None."""
        return getattr(self.hparams, "wav_augment", None)

    def replicate(self, rows, stage, batch):
        """Aligns per-row tensors with the augmented batch (dev: clean rows, then ``sig_noisy`` copies)."""
        if stage == sb.Stage.TRAIN and self.augmenter is not None:
            return self.augmenter.replicate_labels(rows)
        if stage != sb.Stage.TRAIN and hasattr(batch, "sig_noisy"):
            return torch.cat([rows, rows])
        return rows

    @property
    def labelled(self):
        """False for ``supervision: none``: no classifier, no AAM loss."""
        return getattr(self.hparams, "supervision", "labelled") == "labelled"

    def training_inputs(self, wavs, lens):
        """Training crops (``crop_dur``) and the ``Augmenter``'s clean + noisy copies of (B, T) waveforms."""
        crop_dur = getattr(self.hparams, "crop_dur", None)
        if crop_dur:
            wavs, lens = random_crops(wavs, lens, int(crop_dur * self.hparams.sample_rate))
        if self.augmenter is not None:
            wavs, lens = self.augmenter(wavs, lens)
        return wavs, lens

    def compute_forward(self, batch, stage):
        """``{"emb": (B', 1, D), "logits": (B', 1, S) or None (label-free), "lens": (B',)}``."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        if stage == sb.Stage.TRAIN:
            wavs, lens = self.training_inputs(wavs, lens)
        elif hasattr(batch, "sig_noisy"):
            wavs, lens = torch.cat([wavs, batch.sig_noisy.data]), torch.cat([lens, batch.sig_noisy.lengths])
        emb = self.compute_embeddings(wavs, lens)
        logits = self.modules.classifier(emb) if self.labelled else None
        return {"emb": emb, "logits": logits, "lens": lens}

    def compute_objectives(self, predictions, batch, stage):
        """AAM-softmax (when labelled) plus the extra training terms or the dev statistics' loss."""
        loss = torch.zeros((), device=self.device)
        if self.labelled:
            spkid = self.replicate(batch.spk_id_encoded.data, stage, batch)
            loss = self.hparams.compute_cost(predictions["logits"], spkid, predictions["lens"])
            self._accumulate("aam", loss)
        if stage != sb.Stage.TRAIN:
            return loss + self.dev_statistics(predictions, batch)
        extra = self.extra_objective(predictions, batch)
        return loss if extra is None else loss + extra

    def dev_statistics(self, predictions, batch):
        """Adds a dev batch to ``error_metrics``; returns an extra dev loss (0 here)."""
        spkid = self.replicate(batch.spk_id_encoded.data, sb.Stage.VALID, batch)
        ids = list(batch.id)
        if hasattr(batch, "sig_noisy"):
            ids += [f"{row_id}/noisy" for row_id in batch.id]
        self.error_metrics.append(ids, predictions["logits"], spkid, predictions["lens"])
        return 0.0

    def extra_objective(self, predictions, batch):
        """Sum of :meth:`extra_terms`, each logged under its name; None when there is none."""
        terms = self.extra_terms(predictions, batch)
        for name, value in terms.items():
            self._accumulate(name, value)
        return sum(terms.values()) if terms else None

    def extra_terms(self, predictions, batch):
        """``{name: scalar}`` training terms beside AAM; none for stage 1."""
        return {}

    def consistency_term(self, predictions, batch):
        """``{"consistency": consistency_loss(noisy emb, clean emb of its crop)}`` (clean first); {} if none."""
        augmenter = self.augmenter
        if augmenter is None or not augmenter.do_augment or augmenter.skip_concat:
            return {}
        batch_size = len(batch.id)
        clean, noisy = predictions["emb"][:batch_size], predictions["emb"][batch_size:]
        if noisy.shape[0] == 0:
            return {}
        target = clean.repeat(noisy.shape[0] // batch_size, *([1] * (clean.dim() - 1)))
        return {"consistency": self.hparams.consistency_loss(noisy, target)}

    def _accumulate(self, name, value):
        total, count = self.loss_terms.get(name, (0.0, 0))
        self.loss_terms[name] = (total + float(value.detach()), count + 1)

    def on_fit_start(self):
        """Seeds the stage from (seed, stage), then Brain's start (a recovered checkpoint restores its state)."""
        if self.random_state is not None:
            self.random_state.seed_stage()
        super().on_fit_start()

    def on_stage_start(self, stage, epoch=None):
        """Resets the per-epoch statistics (kept when resuming within a training epoch)."""
        if stage != sb.Stage.TRAIN or self.step == 0:
            self.loss_terms = {}
        if stage == sb.Stage.TRAIN and self.random_state is not None:
            self.random_state.start_epoch(epoch)
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.dev_criterion()

    def dev_criterion(self):
        """The dev statistics whose ``summarize("average")`` is the epoch's ``ErrorRate``."""
        return self.hparams.error_stats()

    def dev_summary(self):
        """``{"ErrorRate": the dev criterion}`` of the epoch (and its parts, if any); called under no_grad."""
        return {"ErrorRate": self.error_metrics.summarize("average")}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs train/valid statistics, anneals the learning rate, checkpoints (the best and the latest)."""
        terms = {name: round(total / max(count, 1), 4) for name, (total, count) in self.loss_terms.items()}
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss, **{f"loss_{k}": v for k, v in terms.items()}}
            return
        stage_stats = {"loss": stage_loss, **self.dev_summary()}
        if stage != sb.Stage.VALID:
            self.hparams.train_logger.log_stats({"Epoch loaded": self.hparams.epoch_counter.current},
                                                test_stats=stage_stats)
            return
        old_lr, new_lr = self.hparams.lr_annealing(epoch)
        sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
        counter = self.hparams.epoch_counter
        if hasattr(counter, "update_metric"):  # EpochCounterWithStopper: early stopping
            counter.update_metric(stage_stats["ErrorRate"])
        stopped = bool(getattr(counter, "should_stop", False))
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": old_lr, **({"stopped_early": True} if stopped else {})},
            train_stats=self.train_stats, valid_stats=stage_stats)
        self.checkpointer.save_and_keep_only(
            meta={"ErrorRate": stage_stats["ErrorRate"], "epoch": epoch, "stopped_early": stopped},
            num_to_keep=getattr(self.hparams, "keep_checkpoints", 1), min_keys=["ErrorRate"])

    def on_fit_batch_start(self, batch, should_step):
        """Keeps BatchNorm statistics at their loaded values when ``freeze_norm_stats`` is set."""
        if getattr(self.hparams, "freeze_norm_stats", False):
            for module in self.modules.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _wrap_distributed(self):
        """Brain's DDP wrapping, without SyncBatchNorm on CPU (DDP refuses it there)."""
        if not (self.distributed_launch and torch.device(self.device).type == "cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, find_unused_parameters=self.find_unused_parameters)

    def frozen_prefixes(self):
        """Name prefixes of the parameters kept fixed: ``frozen_parameters``."""
        return tuple(getattr(self.hparams, "frozen_parameters", None) or ())

    def init_optimizers(self):
        """Optimises every parameter except those matching :meth:`frozen_prefixes`."""
        frozen = self.frozen_prefixes()
        if frozen:
            names = [n for n, _ in self.modules.named_parameters()]
            for prefix in frozen:
                if not any(n.startswith(prefix) for n in names):
                    raise ValueError(f"frozen_parameters: '{prefix}' matches no parameter "
                                     f"(names look like {names[:2]})")
            for name, param in self.modules.named_parameters():
                if name.startswith(frozen):
                    param.requires_grad_(False)
            logger.info("frozen parameters: %s", ", ".join(frozen))
        super().init_optimizers()

    @sb.utils.checkpoints.mark_as_saver
    def _save(self, path):
        """Brain's step and running loss, and the loss terms (a mid-epoch resume logs the whole epoch's)."""
        super()._save(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(yaml.dump({"loss_terms": {name: list(value) for name, value in self.loss_terms.items()}}))

    @sb.utils.checkpoints.mark_as_loader
    def _recover(self, path, end_of_epoch):
        super()._recover(path, end_of_epoch)
        with open(path, encoding="utf-8") as f:
            self.loss_terms = {name: tuple(value) for name, value in yaml.safe_load(f).get("loss_terms", {}).items()}

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """Brain's loader; the training loader draws its worker seeds from the ``random_state``'s generator."""
        if stage == sb.Stage.TRAIN and self.random_state is not None:
            loader_kwargs.setdefault("generator", self.random_state.loader_generator)
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)


class AnchorRegBrain(SpeakerBrain):
    """Stage 2: fine-tunes a copy of the base model towards the fixed ``anchors`` (an ``AnchorStore``);
    ``dev_criterion: anchor_retrieval`` needs ``dev_anchors``, ``l2sp_weight`` the ``base_embedding`` model."""

    batches_per_epoch = None  # set by make_dataloader

    def __init__(self, *args, anchors, dev_anchors=None, replay=None, base_embedding=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.anchors = anchors
        self.dev_anchors = dev_anchors
        self.replay = replay
        l2sp_weight = getattr(self.hparams, "l2sp_weight", 0.0)
        if l2sp_weight > 0 and base_embedding is None:
            raise ValueError("l2sp_weight > 0 needs the base's embedding model (base_embedding)")
        self.l2sp = L2SP(l2sp_weight, base_embedding) if l2sp_weight > 0 else None
        if self.retrieval_criterion and dev_anchors is None:
            raise ValueError("dev_criterion: anchor_retrieval needs the dev rows' anchors (dev_anchors)")

    @property
    def retrieval_criterion(self):
        """Whether the dev criterion is noisy -> anchor retrieval."""
        return getattr(self.hparams, "dev_criterion", "classification") == "anchor_retrieval"

    def frozen_prefixes(self):
        """``frozen_parameters``, and the classifier when it holds the base's centroids or is unused."""
        centroids = getattr(self.hparams, "classifier_head", "trainable") == "anchor_centroids"
        return super().frozen_prefixes() + (("classifier",) if centroids or not self.labelled else ())

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """Brain's loader; records the number of training batches per epoch (the λ schedule's progress)."""
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            try:
                self.batches_per_epoch = len(loader)
            except TypeError as err:
                raise ValueError("the training loader has no length (an IterableDataset?): the anchor-weight "
                                 "schedule needs the number of batches per epoch") from err
        return loader

    def extra_terms(self, predictions, batch):
        """``anchor`` (``λ(t) · objective(emb, anchor)``), and if asked ``consistency``, ``l2sp``, ``replay``."""
        # within-epoch progress of the schedule; 0 for a batch fed outside fit() (no training loader)
        progress = min(1.0, self.step / self.batches_per_epoch) if self.batches_per_epoch else 0.0
        scale = self.hparams.anchor_weight_schedule(self.hparams.epoch_counter.current, progress)
        terms = {"anchor": self.anchor_term(self.hparams.anchor_loss, predictions["emb"], batch.id, scale,
                                            self.anchors, self.replay.store if self.replay else None)}
        if getattr(self.hparams, "consistency_weight", 0) > 0:
            terms.update(self.consistency_term(predictions, batch))
        if self.l2sp is not None:
            terms["l2sp"] = self.l2sp(self.modules.embedding_model)
        replay = self.replay_term() if self.replay is not None else None
        if replay is not None:
            terms["replay"] = replay
        return terms

    def anchor_term(self, loss, emb, ids, scale, store, extra_negatives=None):
        """``loss`` of (B', 1, D) embeddings of the augmented rows ``ids`` against their anchors in ``store``;
        contrastive negatives come from ``store`` and ``extra_negatives`` (speakers shifted past ``store``'s)."""
        kind = self.hparams.anchor_type
        anchors = self.replicate(store.lookup(ids, kind, self.device), sb.Stage.TRAIN, None)
        if not hasattr(loss, "num_negatives"):  # a pull towards the anchor
            return loss(emb, anchors, scale)
        speakers = store.speaker_index(ids, self.device)
        bank, bank_speakers = store.sample_negatives(speakers, loss.num_negatives, kind, self.device)
        if extra_negatives is not None:
            nobody = torch.empty(0, dtype=torch.long)
            more, more_speakers = extra_negatives.sample_negatives(nobody, loss.num_negatives, kind, self.device)
            bank = torch.cat([bank, more])
            bank_speakers = torch.cat([bank_speakers, more_speakers + len(store.speakers)])
        speakers = self.replicate(speakers, sb.Stage.TRAIN, None)
        return loss(emb, anchors, speakers, bank, bank_speakers, scale)

    def replay_term(self):
        """``replay_loss`` of this step's replay rows against their own anchors; None if none could be read."""
        batch = self.replay.draw(self.hparams.epoch_counter.current, self.step)
        if batch is None:
            return None
        batch = batch.to(self.device)
        emb = self.compute_embeddings(*self.training_inputs(*batch.sig))
        return self.anchor_term(self.hparams.replay_loss, emb, batch.id, 1.0, self.replay.store)

    def dev_criterion(self):
        """Classification error, or the noisy -> anchor retrieval error (:mod:`anchor_reg.retrieval`)."""
        return AnchorRetrievalStats(self.dev_anchors) if self.retrieval_criterion else super().dev_criterion()

    def dev_summary(self):
        """With broad dev rows (the replay set's ``dev``), the retrieval ErrorRate is the mean of the dev rows' error
        and the broad rows' (their fixed noisy copies among their own anchors alone), both logged."""
        summary = super().dev_summary()
        if not (self.retrieval_criterion and self.replay is not None and self.replay.dev):
            return summary
        rows = [row for row in map(self.replay.dataset.__getitem__, self.replay.dev) if row["sig"] is not None]
        noisy = [self.compute_embeddings(self.replay.dev_copies(row["sig"], row["id"])[None].to(self.device),
                                         torch.ones(1, device=self.device)) for row in rows]
        dev, broad = summary["ErrorRate"], own_rows_error(torch.cat(noisy), [r["id"] for r in rows], self.replay.store)
        return {"ErrorRate": (dev + broad) / 2, "retrieval_dev": dev, "retrieval_broad": broad}

    def dev_statistics(self, predictions, batch):
        """Retrieval queries are the dev batch's noisy copies; label-free, the loss is the mean anchor distance."""
        if not self.retrieval_criterion:
            return super().dev_statistics(predictions, batch)
        batch_size = len(batch.id)
        self.error_metrics.append(list(batch.id), predictions["emb"][batch_size:2 * batch_size])
        if self.labelled:
            return 0.0
        anchors = self.replicate(self.dev_anchors.lookup(batch.id, device=self.device), sb.Stage.VALID, batch)
        return anchor_distance(predictions["emb"], anchors).mean()


class JointBrain(SpeakerBrain):
    """Joint optimisation from scratch: each noisy embedding pulled towards the clean embedding of the
    same crop in the same pass (``consistency_loss``; ``detach_target: False`` trains both branches)."""

    def extra_terms(self, predictions, batch):
        """``consistency``: ``λ · mean d(noisy emb, clean emb)``; nothing when the batch was not augmented."""
        return self.consistency_term(predictions, batch)
