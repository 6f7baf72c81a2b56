"""What the benchmark measures, built from the project's own pieces.

The data is prepared by :func:`anchor_reg.data.prepare.prepare_data` (the
synthetic corpus, or ``--data``'s folder of speakers with synthetic noises);
the trainers are the Brains of :mod:`anchor_reg.brains` on the modules of the
recipe's YAMLs; the anchor store is an :class:`anchor_reg.anchors.AnchorStore`
of random unit vectors with VoxCeleb2-shaped row IDs.
"""
import copy
import pathlib

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from anchor_reg import recipe_hparams
from anchor_reg.anchors import AnchorStore
from anchor_reg.brains import AnchorRegBrain, JointBrain, SpeakerBrain
from anchor_reg.config import load_hparams, overrides_for
from anchor_reg.data.audio import read_audio_checked
from anchor_reg.data.prepare import prepare_data
from anchor_reg.data.synthetic import NOISE_DIR, RIR_DIR, generate_corpus
from anchor_reg.replay import ReplaySet

EMB_DIM = 192
VOXCELEB2_SPEAKERS = 5994
VOXCELEB2_UTTERANCES = 1_092_009  # VoxCeleb2 dev
VOXCELEB2_HOURS = 2300  # of speech in those utterances


def segment_rows(hours, utterances, seg_dur=3.0, min_utt_dur=1.0):
    """Training rows the preparation cuts from ``utterances`` lasting ``hours`` in all.

    :func:`anchor_reg.data.folder.segment_bounds` cuts each utterance into
    consecutive ``seg_dur`` segments and keeps the remainder as one more row if
    it lasts at least ``min_utt_dur`` (stage2.yaml's ``seg_dur: 3.0``; the
    preparation's default ``min_utt_dur=1.0``). With the
    remainders spread evenly over [0, seg_dur), an utterance of d seconds gives
    on average ``d / seg_dur + 1/2 - min_utt_dur / seg_dur`` rows.

    Example
    -------
    >>> segment_rows(hours=1, utterances=0)  # 3600 s of full 3 s segments
    1200
    """
    full = hours * 3600 / seg_dur
    return round(full + utterances * (0.5 - min_utt_dur / seg_dur))


# VoxCeleb2 dev as the recipe prepares it (3 s segments, remainders of >= 1 s kept): ~2.94 M rows, a 2.26 GB store
VOXCELEB2_ROWS = segment_rows(VOXCELEB2_HOURS, VOXCELEB2_UTTERANCES)


def hparams_folder(given=None):
    """The folder of stage1.yaml / stage2.yaml / joint.yaml: ``given``, the checkout's, or the installed copy."""
    folder = recipe_hparams() if given is None else pathlib.Path(given)
    missing = [name for name in ("stage1.yaml", "stage2.yaml", "joint.yaml") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"--hparams_folder {folder}: no {', '.join(missing)}")
    return folder


def prepare(work_folder, options, sizes):
    """Prepares the benchmark's data with the recipe's preparation; returns the YAML overrides that use it.

    Arguments
    ---------
    work_folder : pathlib.Path
        Scratch folder (corpus, prepared CSVs, outputs nothing else reads).
    options : argparse.Namespace
        ``channels``, ``speakers``, ``crop``, ``data`` (a folder of speakers or None).
    sizes : dict
        ``corpus_speakers``, ``corpus_utterances``, ``eval_speakers``.
    """
    work_folder = pathlib.Path(work_folder)
    overrides = {
        "output_base": str(work_folder / "results"),
        "data_folder": str(work_folder / "corpus"),
        "synthetic_speakers": sizes["corpus_speakers"],
        "synthetic_utts_per_speaker": sizes["corpus_utterances"],
        "synthetic_noises": 4,
        "babble_mixtures": 8,
        "verification_speakers": sizes["eval_speakers"],
        "seg_dur": options.crop,
        "channels": options.channels,
        "emb_dim": EMB_DIM,
        "num_workers": 0,
    }
    if options.data:
        noise_corpus = work_folder / "noise_corpus"
        generate_corpus(noise_corpus, num_speakers=2, utts_per_speaker=2, num_noises=4)
        overrides.update(
            dataset="folder",
            data_folder=str(options.data),
            noise_folders={kind: str(noise_corpus / NOISE_DIR / kind) for kind in ("noise", "music")},
            rir_folder=str(noise_corpus / RIR_DIR),
        )
    prepare_data(load_hparams(hparams_folder(options.hparams_folder) / "stage2.yaml", overrides))
    return dict(overrides, num_train_speakers=options.speakers)


def load_yaml(folder, name, overrides, **extra):
    """A recipe YAML with the overrides it defines (plus ``extra``)."""
    path = pathlib.Path(folder) / name
    return load_hparams(path, {**overrides_for(path, overrides), **extra})


def training_dataset(train_csv, sample_rate, num_speakers):
    """The prepared train.csv as a ``DynamicItemDataset`` of ``id``, ``sig``, ``spk_id_encoded``.

    Audio is read as training reads it (:func:`anchor_reg.data.audio.read_audio_checked`);
    labels are the prepared speakers' indices, below ``num_speakers``.
    """
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(train_csv))
    labels = sb.dataio.encoder.CategoricalEncoder()
    labels.update_from_didataset(dataset, "spk_id")
    if len(labels) > num_speakers:
        raise ValueError(f"--speakers {num_speakers}: the prepared data has {len(labels)} speakers")

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        return read_audio_checked(wav, sample_rate, int(start), int(stop))

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return labels.encode_sequence_torch([spk_id])

    sb.dataio.dataset.add_dynamic_item([dataset], audio_pipeline)
    sb.dataio.dataset.add_dynamic_item([dataset], label_pipeline)
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig", "spk_id_encoded"])
    return dataset


def full_crop_rows(dataset, crop_seconds):
    """Indices of the rows of ``dataset`` that last the full crop (the rows a training epoch is made of)."""
    return [i for i, row in enumerate(dataset.data.values()) if abs(float(row["duration"]) - crop_seconds) < 1e-3]


def training_batch(dataset, batch_size, crop_seconds):
    """A ``PaddedBatch`` of ``batch_size`` rows of the full crop length."""
    full = full_crop_rows(dataset, crop_seconds)
    if len(full) < batch_size:
        raise ValueError(f"--batch_size {batch_size}: the prepared data has {len(full)} rows of {crop_seconds} s")
    return sb.dataio.batch.PaddedBatch([dataset[i] for i in full[:batch_size]])


def make_brain(cls, hparams, device, precision, anchors=None, brain_options=None, **replace):
    """A Brain ready for ``fit_batch``: optimiser built, train mode, epoch 1 (as in training).

    ``anchors`` (a store, or a stand-in with its ``lookup``) and ``brain_options``
    (e.g. ``dev_anchors``, ``replay``) go to ``AnchorRegBrain``; ``replace`` replaces hparams entries.
    """
    hparams = dict(hparams, **replace)
    brain = cls(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts={"device": device, "precision": precision, "noprogressbar": True},
        **({"anchors": anchors} if anchors is not None else {}), **(brain_options or {}),
    )
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    brain.hparams.epoch_counter.current = 1
    return brain


def rows_through_network(brain, batch):
    """Rows the Brain's training forward embeds for ``batch`` (clean and noisy copies)."""
    with torch.no_grad():
        return int(brain.compute_forward(batch, sb.Stage.TRAIN)["emb"].shape[0])


class LiveTeacher:
    """Stands in for the anchor store: every lookup re-embeds the rows' clean crops with a frozen base.

    Arguments
    ---------
    modules : dict
        ``compute_features``, ``mean_var_norm``, ``embedding_model`` (copied and frozen).
    batch : PaddedBatch
        The rows it can be asked for (``id``, ``sig``).
    device : str
        Where the teacher runs.
    """

    def __init__(self, modules, batch, device):
        frozen = copy.deepcopy({k: modules[k] for k in ("compute_features", "mean_var_norm", "embedding_model")})
        for module in frozen.values():
            module.eval().requires_grad_(False)
        self.brain = SpeakerBrain(modules=frozen, run_opts={"device": device, "noprogressbar": True})
        wavs, lens = batch.sig
        self.rows = {utt_id: (wavs[i], lens[i]) for i, utt_id in enumerate(batch.id)}

    def lookup(self, ids, anchor_type="utterance", device=None):
        """(B, D) unit embeddings of the clean crops of ``ids``, as :meth:`AnchorStore.lookup` returns anchors."""
        wavs = torch.stack([self.rows[i][0] for i in ids]).to(self.brain.device)
        lens = torch.stack([self.rows[i][1] for i in ids]).to(self.brain.device)
        with torch.no_grad():
            emb = self.brain.compute_embeddings(wavs, lens)
        return F.normalize(emb.reshape(len(ids), -1).float(), dim=1).to(device or self.brain.device)


def voxceleb2_ids(num_rows, seed=0, speakers=VOXCELEB2_SPEAKERS):
    """Row IDs shaped like VoxCeleb2 training rows, e.g. ``id00012--21Uxsk56VDQ--00001_0_48000``."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
    num_videos = max(1, num_rows // 7)
    videos = ["".join(chars) for chars in alphabet[rng.integers(0, len(alphabet), size=(num_videos, 11))]]
    return [
        f"id{(row % num_videos) % speakers:05d}--{videos[row % num_videos]}--{row // num_videos + 1:05d}_0_48000"
        for row in range(num_rows)
    ]


def random_store(ids, seed=0):
    """An AnchorStore of random unit anchors for ``ids`` (speaker = the part before the first ``--``)."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(len(ids), EMB_DIM, generator=generator)
    return AnchorStore.from_embeddings(
        ids, [i.split("--", 1)[0] for i in ids], embeddings, {"base_fingerprint": "benchmark"}
    )


class Workload:
    """The prepared data, the batch, the store and the Brains the figures time.

    Arguments
    ---------
    overrides : dict
        From :func:`prepare`.
    options : argparse.Namespace
        ``device``, ``precision``, ``batch_size``, ``crop``, ``speakers``, ``hparams_folder``.
    scratch : str or pathlib.Path, optional
        A folder the figures may write to (the anchor store file).
    """

    def __init__(self, overrides, options, scratch=None):
        self.options = options
        self.scratch = scratch
        self.device = options.device
        self.overrides = overrides
        self.folder = hparams_folder(options.hparams_folder)
        # figures 1 and 2 time the plain pull (lookup + distance); figure 9 the contrastive objective
        self.hparams = load_yaml(self.folder, "stage2.yaml", overrides, anchor_objective="pull")
        self.prep_folder = pathlib.Path(self.hparams["prep_folder"])
        self.dataset = training_dataset(self.prep_folder / "train.csv", self.hparams["sample_rate"], options.speakers)
        self.batch = training_batch(self.dataset, options.batch_size, options.crop)
        self.store = random_store(list(self.dataset.data_ids) + voxceleb2_ids(50_000, seed=1))
        self.stage2 = self.brain(AnchorRegBrain, anchors=self.store)
        self.stage2_without_anchor = self.brain(SpeakerBrain)

    def brain(self, cls, hparams=None, **replace):
        """A Brain on ``hparams`` (default: stage 2's, sharing its modules) with entries replaced."""
        return make_brain(cls, self.hparams if hparams is None else hparams, self.device, self.options.precision,
                          **replace)

    def yaml(self, name, **extra):
        """Another recipe YAML on the same data and model size (its own modules)."""
        return load_yaml(self.folder, name, self.overrides, **extra)

    def label_free_brains(self, replay_rows):
        """Two label-free stage-2 Brains (``supervision: none``, pull objective), with and without replay.

        Both run stage2.yaml's label-free hparams with ``replay_rows`` replay rows
        per step on the same modules; only the first is given the replay set, so
        the second's step is the same step without replay. The replay rows are the
        prepared rows of the full crop (as long as the batch's), their anchors a
        random store of their own (as ``replay_anchors.pt`` is).
        """
        hparams = self.yaml("stage2.yaml", supervision="none", dev_criterion="anchor_retrieval", anchor_objective="pull",
                            replay_rows=replay_rows, replay_folders=[self.overrides["data_folder"]])
        rows = Subset(self.dataset, full_crop_rows(self.dataset, self.options.crop))
        ids = list(self.dataset.data_ids)
        replay = ReplaySet(rows, random_store([ids[i] for i in rows.indices], seed=2), replay_rows, hparams["seed"])
        return tuple(self.brain(AnchorRegBrain, hparams, anchors=self.store,
                                brain_options={"dev_anchors": self.store, "replay": r}) for r in (replay, None))

    def joint_brain(self):
        """The joint baseline's Brain on joint.yaml."""
        return self.brain(JointBrain, self.yaml("joint.yaml"))

    def stage1_brain(self):
        """Stage 1's Brain on stage1.yaml (its own Augmenter)."""
        return self.brain(SpeakerBrain, self.yaml("stage1.yaml"))

    def encoder(self):
        """A frozen ``EncoderClassifier`` on a copy of the stage-2 modules, as evaluation loads a model."""
        from speechbrain.inference.speaker import EncoderClassifier

        modules = {k: self.hparams[k] for k in ("compute_features", "mean_var_norm", "embedding_model", "classifier")}
        return EncoderClassifier(
            modules=copy.deepcopy(torch.nn.ModuleDict(modules)), hparams={}, run_opts={"device": str(self.device)}
        )
