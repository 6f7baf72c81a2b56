"""The three trainers: stage 1, stage 2 (fixed anchors) and the joint baseline.

All three share one forward path (:meth:`SpeakerBrain.compute_embeddings`)::

    wavs (B, T) -> [Augmenter: clean + K noisy copies] -> Fbank -> InputNormalization
         -> embedding_model -> emb (B', 1, D) -> classifier -> AAM-softmax

and differ only in the extra term added to the AAM loss (:meth:`extra_objective`):

- :class:`SpeakerBrain` (stage 1): none.
- :class:`AnchorRegBrain` (stage 2): ``λ(t) · d(emb, fixed anchor of the row)``.
- :class:`JointBrain` (baseline): ``λ · d(noisy emb, clean emb of the same crop)``,
  the clean embedding computed online by the same network.
"""
import logging

import speechbrain as sb
import torch

from anchor_reg.data.batching import random_crops

logger = logging.getLogger(__name__)


def embed(modules, wavs, lens):
    """The embedding of a batch: Fbank -> InputNormalization -> embedding model.

    The one forward path of training, anchor extraction and the base model.

    Arguments
    ---------
    modules : mapping
        ``compute_features``, ``mean_var_norm``, ``embedding_model``.
    wavs : torch.Tensor
        (B, T) waveforms.
    lens : torch.Tensor
        (B,) relative lengths.

    Returns
    -------
    torch.Tensor
        (B, 1, D) embeddings.
    """
    feats = modules["compute_features"](wavs)
    feats = modules["mean_var_norm"](feats, lens)
    return modules["embedding_model"](feats, lens)


class SpeakerBrain(sb.core.Brain):
    """Stage 1: a speaker-embedding model trained with AAM-softmax.

    Expected ``modules``: ``compute_features``, ``mean_var_norm``,
    ``embedding_model``, ``classifier``. Expected ``hparams``: ``compute_cost``,
    ``error_stats``, ``lr_annealing``, ``epoch_counter``, ``train_logger``;
    optional ``wav_augment`` (an ``Augmenter``), ``crop_dur`` (random training crops
    of that many seconds, with ``sample_rate``), ``frozen_parameters``
    (name prefixes such as ``classifier`` or ``embedding_model.blocks.0``) and
    ``freeze_norm_stats`` (BatchNorm layers keep their running statistics).
    """

    def compute_embeddings(self, wavs, lens):
        """(B, T) waveforms, (B,) relative lengths -> (B, 1, D) embeddings (:func:`embed`)."""
        return embed(self.modules, wavs, lens)

    @property
    def augmenter(self):
        """The training ``Augmenter`` or None."""
        return getattr(self.hparams, "wav_augment", None)

    def replicate(self, rows, stage, batch):
        """Aligns per-row tensors (labels, anchors) with the augmented batch.

        Training batches follow the ``Augmenter``; development batches with
        noisy copies (``sig_noisy``, see :mod:`anchor_reg.data.dev_copies`) are
        clean rows followed by their noisy copies.
        """
        if stage == sb.Stage.TRAIN and self.augmenter is not None:
            return self.augmenter.replicate_labels(rows)
        if stage != sb.Stage.TRAIN and hasattr(batch, "sig_noisy"):
            return torch.cat([rows, rows])
        return rows

    def compute_forward(self, batch, stage):
        """Returns ``{"emb": (B', 1, D), "logits": (B', 1, S), "lens": (B',)}``."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        crop_dur = getattr(self.hparams, "crop_dur", None)
        if stage == sb.Stage.TRAIN and crop_dur:
            wavs, lens = random_crops(wavs, lens, int(crop_dur * self.hparams.sample_rate))
        if stage == sb.Stage.TRAIN and self.augmenter is not None:
            wavs, lens = self.augmenter(wavs, lens)
        elif stage != sb.Stage.TRAIN and hasattr(batch, "sig_noisy"):
            wavs, lens = torch.cat([wavs, batch.sig_noisy.data]), torch.cat([lens, batch.sig_noisy.lengths])
        emb = self.compute_embeddings(wavs, lens)
        return {"emb": emb, "logits": self.modules.classifier(emb), "lens": lens}

    def compute_objectives(self, predictions, batch, stage):
        """AAM-softmax plus the subclass's extra term."""
        spkid, _ = batch.spk_id_encoded
        spkid = self.replicate(spkid, stage, batch)
        loss = self.hparams.compute_cost(predictions["logits"], spkid, predictions["lens"])
        self._accumulate("aam", loss)
        if stage == sb.Stage.TRAIN:
            extra = self.extra_objective(predictions, batch)
            if extra is not None:
                self._accumulate(self.extra_name, extra)
                loss = loss + extra
        else:
            ids = list(batch.id)
            if hasattr(batch, "sig_noisy"):
                ids += [f"{row_id}/noisy" for row_id in batch.id]
            self.error_metrics.append(ids, predictions["logits"], spkid, predictions["lens"])
        return loss

    extra_name = "extra"

    def extra_objective(self, predictions, batch):
        """Extra training term; None for stage 1."""
        return None

    def _accumulate(self, name, value):
        total, count = self.loss_terms.get(name, (0.0, 0))
        self.loss_terms[name] = (total + float(value.detach()), count + 1)

    def on_stage_start(self, stage, epoch=None):
        """Resets the per-epoch statistics."""
        self.loss_terms = {}
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.hparams.error_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs train/valid statistics, anneals the learning rate, checkpoints."""
        terms = {name: round(total / max(count, 1), 4) for name, (total, count) in self.loss_terms.items()}
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss, **{f"loss_{k}": v for k, v in terms.items()}}
            return
        stage_stats = {"loss": stage_loss, "ErrorRate": self.error_metrics.summarize("average")}
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(epoch)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            counter = self.hparams.epoch_counter
            if hasattr(counter, "update_metric"):  # EpochCounterWithStopper: early stopping
                counter.update_metric(stage_stats["ErrorRate"])
            stopped = bool(getattr(counter, "should_stop", False))
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr, **({"stopped_early": True} if stopped else {})},
                train_stats=self.train_stats,
                valid_stats=stage_stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"ErrorRate": stage_stats["ErrorRate"], "epoch": epoch, "stopped_early": stopped},
                num_to_keep=getattr(self.hparams, "keep_checkpoints", 1),
                min_keys=["ErrorRate"],  # the best epoch is kept beside the latest
            )
        else:
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stage_stats
            )

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
                    module, find_unused_parameters=self.find_unused_parameters
                )

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
                    raise ValueError(
                        f"frozen_parameters: '{prefix}' matches no parameter "
                        f"(names look like {names[:2]})"
                    )
            for name, param in self.modules.named_parameters():
                if name.startswith(frozen):
                    param.requires_grad_(False)
            logger.info("frozen parameters: %s", ", ".join(frozen))
        super().init_optimizers()

class AnchorRegBrain(SpeakerBrain):
    """Stage 2: fine-tunes a copy of the base model towards fixed anchors.

    ``anchors`` is the :class:`anchor_reg.anchors.AnchorStore` of the base
    model's embeddings. Extra ``hparams``: ``anchor_type`` (``utterance`` | ``speaker``), ``anchor_loss`` (an
    :class:`anchor_reg.losses.AnchorDistanceLoss` pull or a
    :class:`anchor_reg.losses.ContrastiveAnchorLoss`), ``anchor_weight_schedule``
    (a :class:`anchor_reg.losses.WeightSchedule`) and optionally
    ``classifier_head: anchor_centroids`` (the head fixed at the base's
    centroids, see :mod:`anchor_reg.heads`).
    """

    extra_name = "anchor"
    batches_per_epoch = None  # set by make_dataloader

    def __init__(self, *args, anchors, **kwargs):
        super().__init__(*args, **kwargs)
        self.anchors = anchors

    def frozen_prefixes(self):
        """``frozen_parameters``, and the classifier with ``classifier_head: anchor_centroids``."""
        head = ("classifier",) if getattr(self.hparams, "classifier_head", "trainable") == "anchor_centroids" else ()
        return super().frozen_prefixes() + head  # the head holds the base's centroids (anchor_reg.heads)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """Brain's loader; records the number of training batches per epoch (the λ schedule's progress)."""
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            try:
                self.batches_per_epoch = len(loader)
            except TypeError as err:  # a schedule's within-epoch progress needs it
                raise ValueError(
                    "the training loader has no length (an IterableDataset?): the anchor-weight "
                    "schedule needs the number of batches per epoch"
                ) from err
        return loader

    def extra_objective(self, predictions, batch):
        """``λ(t) · objective(emb, anchors)`` over clean and noisy copies alike."""
        store, kind = self.anchors, self.hparams.anchor_type
        # within-epoch progress of the schedule; 0 for a batch fed outside fit() (no training loader)
        progress = min(1.0, self.step / self.batches_per_epoch) if self.batches_per_epoch else 0.0
        scale = self.hparams.anchor_weight_schedule(self.hparams.epoch_counter.current, progress)
        loss = self.hparams.anchor_loss
        anchors = self.replicate(store.lookup(batch.id, kind, self.device), sb.Stage.TRAIN, batch)
        if not hasattr(loss, "num_negatives"):  # a pull towards the anchor
            return loss(predictions["emb"], anchors, scale)
        speakers = store.speaker_index(batch.id, self.device)
        bank, bank_speakers = store.sample_negatives(speakers, loss.num_negatives, kind, self.device)
        speakers = self.replicate(speakers, sb.Stage.TRAIN, batch)
        return loss(predictions["emb"], anchors, speakers, bank, bank_speakers, scale)


class JointBrain(SpeakerBrain):
    """Conventional joint optimisation: clean + noisy copies from scratch.

    The ``Augmenter`` must keep the clean batch first (``concat_original``);
    the extra term pulls each noisy embedding towards the clean embedding of
    the same crop computed in the same forward pass. Extra ``hparams``:
    ``consistency_loss`` (an ``AnchorDistanceLoss``; with
    ``detach_target: False`` the gradient flows through both branches, as in
    conventional joint training).
    """

    extra_name = "consistency"

    def extra_objective(self, predictions, batch):
        """``λ · mean d(noisy emb, clean emb)``; None when the batch was not augmented."""
        augmenter = self.augmenter
        if augmenter is None or not augmenter.do_augment or augmenter.skip_concat:
            return None
        emb = predictions["emb"]
        batch_size = len(batch.id)
        clean, noisy = emb[:batch_size], emb[batch_size:]
        if noisy.shape[0] == 0:
            return None
        target = clean.repeat(noisy.shape[0] // batch_size, *([1] * (clean.dim() - 1)))
        return self.hparams.consistency_loss(noisy, target)
