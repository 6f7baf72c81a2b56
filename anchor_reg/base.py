"""The base model stage 2 starts from, loaded one way (``EncoderClassifier``): a stage folder of this project
(its best checkpoint exported into ``<pretrained_folder>/``, the stage only read), a SpeechBrain inference folder
(``hyperparams.yaml`` + ``*.ckpt``) or a hub ID (cached there too; offline once cached)."""
import dataclasses
import logging
import pathlib
import re

import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier
from speechbrain.utils.fetching import fetch

from anchor_reg.checkpointer import best_checkpoint
from anchor_reg.checks import tag_of
from anchor_reg.config import check_writable, model_nodes, resolve
from anchor_reg.embedding import embed
from anchor_reg.errors import ConfigError, ExportError, ProvenanceError, one_line
from anchor_reg.export import export_model
from anchor_reg.heads import set_head_to_centroids
from anchor_reg.lock import waiting_lock
from anchor_reg.model_folder import folder_fingerprint, savedir_of
from anchor_reg.provenance import read_provenance

logger = logging.getLogger(__name__)

EMBEDDING_KEYS = ("compute_features", "mean_var_norm", "embedding_model")
STAGE_NAMES = {"stage1": "stage 1", "joint": "the joint model", "stage2": "stage 2"}


@dataclasses.dataclass
class Base:
    """A frozen base speaker model: its loaded ``modules``, ``fingerprint`` (of its weights), ``provenance``
    (``base_kind``, ``base_model``[, ``base_revision``]), ``architecture`` (``n_mels``, ``channels``,
    ``emb_dim``; None when unknown) and its own :data:`EMBEDDING_KEYS` YAML ``nodes``."""

    modules: torch.nn.ModuleDict
    label_encoder: CategoricalEncoder
    label_file: pathlib.Path
    source: str
    fingerprint: str
    provenance: dict
    architecture: dict
    nodes: dict

    @property
    def emb_dim(self):
        """Embedding size D."""
        return self.architecture["emb_dim"]

    def embedder(self, device="cpu"):
        """The frozen base's ``embed(wavs (B, T), lens (B,)) -> (B, 1, D)`` on ``device``, in eval mode."""
        modules = self.modules.to(device).eval()
        return lambda wavs, lens: embed(modules, wavs.to(device), lens.to(device))

    def covers_exactly(self, speakers):
        """Whether the base's classifier has one output per training speaker, and no other."""
        labels = set(self.label_encoder.lab2ind)
        weight = getattr(self.modules["classifier"], "weight", None)
        return labels == set(speakers) and (weight is None or weight.shape[0] == len(labels))


def check_trained_on(stage_folder, stage, train_speakers, train_rows_digest):
    """Raises :class:`ProvenanceError` when a stage's best checkpoint was trained on other data than this
    run's training CSV (other speakers, or another recorded training-rows digest)."""
    folder = pathlib.Path(stage_folder)
    ckpt = best_checkpoint(folder / "save")
    labels = CategoricalEncoder()
    labels.load(folder / "save" / "label_encoder.txt")
    recorded = read_provenance(pathlib.Path(ckpt.path) / "provenance.ckpt").get("train_rows_digest")
    trained_on = set(labels.lab2ind)
    if trained_on != set(train_speakers) or recorded not in (None, train_rows_digest):
        added, gone = sorted(set(train_speakers) - trained_on), sorted(trained_on - set(train_speakers))
        raise ProvenanceError(
            f"{STAGE_NAMES.get(stage, stage)} in {folder} was trained on other data than "
            f"this run's training CSV ({len(trained_on)} speakers then, {len(set(train_speakers))} now; "
            f"new: {added[:3]}, gone: {gone[:3]}): retrain it by moving {folder.parent} away (its stages "
            "and anchors are then made again), or use another experiment folder (--experiment_name=NEW)"
        )


def load_base(source, pretrained_folder):
    """The :class:`Base` in a stage folder, an inference folder or the hub (``owner/name``); its SpeechBrain
    folder is ``<pretrained_folder>/<source>`` (:func:`anchor_reg.model_folder.savedir_of`)."""
    source = str(source)
    folder = pathlib.Path(source)
    is_stage = (folder / "hyperparams.yaml").is_file() and (folder / "save").is_dir()
    kind = "stage" if is_stage else "folder" if folder.is_dir() else "hub"
    savedir = savedir_of(source, pretrained_folder)
    if kind != "hub":
        source = str(folder.resolve())
    check_writable(savedir.parent, key="pretrained_folder")
    with waiting_lock(savedir.parent / f".{savedir.name}.lock"):  # runs started at once share the savedir
        return _load_into(source, kind, folder, savedir)


def _load_into(source, kind, folder, savedir):
    """:func:`load_base` once ``savedir`` is this process's to write."""
    if kind == "stage":
        try:
            export_model(source, savedir, overwrite=True)
        except ExportError as err:
            raise ConfigError(f"base_model: {source}: {err}") from err
    elif kind == "folder" and not (folder / "hyperparams.yaml").is_file():
        raise ConfigError(
            f"base_model: {source} has no hyperparams.yaml: not a SpeechBrain inference model folder "
            "(make one from a trained stage with python -m anchor_reg.export STAGE_FOLDER OUT_FOLDER)"
        )
    elif kind == "hub" and not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise ConfigError(f"base_model: {source} is neither a folder nor a hub ID like speechbrain/spkrec-ecapa-voxceleb")
    origin = str(savedir) if kind == "stage" else source
    try:
        hyperparams = pathlib.Path(fetch("hyperparams.yaml", source=origin, savedir=savedir))
    except Exception as err:  # offline and not cached, unknown repo, no network ...
        raise ConfigError(f"base_model: cannot fetch {source}/hyperparams.yaml ({one_line(err)})") from err
    try:
        nodes = model_nodes(hyperparams, EMBEDDING_KEYS)
    except ConfigError as err:
        raise ConfigError(f"base_model: {source}: {err} (a SpeechBrain speaker model defines "
                          "compute_features, mean_var_norm, embedding_model and classifier)") from err
    try:
        encoder = EncoderClassifier.from_hparams(source=origin, savedir=str(savedir), run_opts={"device": "cpu"})
    except Exception as err:
        raise ConfigError(f"base_model: {source} does not load as a SpeechBrain speaker model ({one_line(err)})") from err
    modules = encoder.mods.eval()
    architecture = measure_architecture(modules)
    provenance = {"base_kind": kind, "base_model": source}
    if kind == "hub":
        revision = re.search(r"snapshots/([0-9a-f]+)/", str(hyperparams.resolve()))
        provenance["base_revision"] = revision.group(1) if revision else None
    if "mean_var_norm_emb" in modules:
        logger.info("base model: %s has mean_var_norm_emb; like its encode_batch(), anchors and stage 2 "
                    "use the embeddings before it", source)
    logger.info("base model: %s (%s), C=%s, emb_dim=%s, cached in %s", source, provenance.get("base_revision", kind),
                architecture["channels"], architecture["emb_dim"], savedir)
    return Base(modules, encoder.hparams.label_encoder, savedir / "label_encoder.ckpt", source,
                folder_fingerprint(savedir), provenance, architecture, nodes)


def measure_architecture(modules):
    """``n_mels``, ``channels`` (ECAPA-TDNN width) and ``emb_dim`` of a loaded base (None where unknown)."""
    fbank = getattr(modules["compute_features"], "compute_fbanks", None)
    first = getattr(getattr(modules["embedding_model"], "blocks", [None])[0], "conv", None)
    with torch.no_grad():
        emb = embed(modules, torch.randn(1, 8000), torch.ones(1))
    channels = getattr(getattr(first, "conv", None), "out_channels", None)
    return {"n_mels": getattr(fbank, "n_mels", None), "channels": channels, "emb_dim": int(emb.shape[-1])}


def architecture_overrides(base, hparams_file, overrides):
    """Stage-2 overrides that build the base's architecture (its sizes, and each of its model nodes the stage
    YAML would build otherwise); ConfigError for an override contradicting it."""
    decided = {key: value for key, value in base.architecture.items() if value is not None}
    for key, value in decided.items():
        if key in overrides and overrides[key] != value:
            raise ConfigError(
                f"--{key}={overrides[key]} contradicts the base model {base.source}, which has {key} {value}: "
                f"drop --{key} (the base decides the architecture of stage 2)"
            )
    overrides = dict(overrides, **decided)
    own = resolve(hparams_file, overrides)
    return dict(overrides, **{key: node for key, node in base.nodes.items() if node_value(own[key]) != node_value(node)})


def node_value(node):
    """A YAML node as comparable plain data: (tag, content), recursively."""
    if isinstance(node, dict):
        return tag_of(node), {str(key): node_value(value) for key, value in node.items()}
    if isinstance(node, list):
        return tag_of(node), [node_value(value) for value in node]
    return tag_of(node), str(getattr(node, "value", node))


def copy_module(src, dst):
    """Copies weights and buffers (and an ``InputNormalization``'s statistics) from ``src`` into ``dst``."""
    dst.load_state_dict(src.state_dict(), strict=True)
    if hasattr(src, "_statistics_dict"):
        dst._load_statistics_dict(src._statistics_dict())


def start_from_base(hparams, base, store, label_encoder):
    """Fills stage 2's fresh modules with a copy of the base; returns its classifier's start: ``"reused"`` (the
    base's own, same speakers) or ``"centroids"`` (the anchors' normalised speaker centroids)."""
    for key in EMBEDDING_KEYS:
        copy_module(base.modules[key], hparams[key])
    if hparams.get("classifier_head") != "anchor_centroids" and base.covers_exactly(label_encoder.lab2ind):
        copy_module(base.modules["classifier"], hparams["classifier"])
        return "reused"
    set_head_to_centroids(hparams["classifier"], store, label_encoder)
    return "centroids"
