"""The base model stage 2 starts from: any SpeechBrain speaker model, loaded one way.

``base_model`` is one of

- a training stage folder of this project (``hyperparams.yaml`` + ``save/``):
  its best end-of-epoch checkpoint is exported (:mod:`anchor_reg.export`) into
  ``<pretrained_folder>/<folder>``, a SpeechBrain inference folder; the stage
  folder itself is only read;
- a local folder holding a SpeechBrain inference model (``hyperparams.yaml`` +
  ``*.ckpt``, e.g. an ``anchor_reg.export`` folder);
- a hub ID (``speechbrain/spkrec-ecapa-voxceleb``), fetched into the same
  cache (works offline once cached, ``HF_HUB_OFFLINE=1``).

All three load with ``EncoderClassifier.from_hparams``. :func:`load_base`
returns a :class:`Base`: the modules, the label encoder, what the base is (its
provenance), a fingerprint that changes whenever its weights do, and its own
model definition, which reaches the stage-2 YAML as overrides
(:func:`architecture_overrides`).
"""
import dataclasses
import logging
import pathlib
import re

import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from anchor_reg.checkpointer import best_checkpoint
from anchor_reg.config import model_nodes, resolve
from anchor_reg.embedding import embed
from anchor_reg.errors import ConfigError, ProvenanceError, one_line
from anchor_reg.heads import set_head_to_centroids
from anchor_reg.model_folder import folder_fingerprint, savedir_of
from anchor_reg.provenance import read_provenance

logger = logging.getLogger(__name__)

# Keys of the stage YAMLs that the base decides; an override that contradicts the base is refused.
ARCHITECTURE_KEYS = ("n_mels", "channels", "emb_dim")
EMBEDDING_KEYS = ("compute_features", "mean_var_norm", "embedding_model")


@dataclasses.dataclass
class Base:
    """A frozen base speaker model.

    Attributes
    ----------
    modules : torch.nn.ModuleDict
        ``compute_features``, ``mean_var_norm``, ``embedding_model``,
        ``classifier`` (and ``mean_var_norm_emb`` when the model has one).
    label_encoder : CategoricalEncoder
        The classifier's speakers.
    label_file : pathlib.Path
        Where the label encoder was read from.
    source : str
        What the base is, for logs and messages.
    fingerprint : str
        Changes whenever the base's weights do.
    provenance : dict
        ``base_kind`` (``stage`` | ``folder`` | ``hub``) and ``base_model``
        (folder or hub ID; for the hub also ``base_revision``).
    architecture : dict
        ``n_mels``, ``channels``, ``emb_dim`` of the base (None when unknown).
    nodes : dict
        The base's own ``compute_features``, ``mean_var_norm`` and
        ``embedding_model`` YAML nodes (resolved, tags intact).
    """

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


def is_stage_folder(source):
    """Whether ``source`` is a training stage folder (``hyperparams.yaml`` and ``save/``)."""
    folder = pathlib.Path(str(source))
    return (folder / "hyperparams.yaml").is_file() and (folder / "save").is_dir()


STAGE_NAMES = {"stage1": "stage 1", "joint": "the joint model", "stage2": "stage 2"}


def check_trained_on(stage_folder, stage, train_speakers, train_rows_digest):
    """Refuses a stage (its best checkpoint) trained on other data than this run's training CSV.

    Compares the stage's label set with ``train_speakers`` and the checkpoint's
    recorded training-rows digest with ``train_rows_digest``.
    """
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
    """A base speaker model from a stage folder, an inference folder or the hub, through ``EncoderClassifier``.

    Arguments
    ---------
    source : str
        Stage folder, inference folder or hub ID (``owner/name``).
    pretrained_folder : str | pathlib.Path
        Parent of the savedir (one sub-folder per source).

    Returns
    -------
    Base
    """
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.utils.fetching import fetch

    source = str(source)
    kind = "stage" if is_stage_folder(source) else "folder" if pathlib.Path(source).is_dir() else "hub"
    savedir = savedir_of(source, pretrained_folder)
    if kind == "stage":
        from anchor_reg.export import ExportError, export_model

        source = str(pathlib.Path(source).resolve())
        try:
            export_model(source, savedir, overwrite=True)
        except ExportError as err:
            raise ConfigError(f"base_model: {source}: {err}") from err
    elif kind == "folder":
        source = str(pathlib.Path(source).resolve())
        if not (pathlib.Path(source) / "hyperparams.yaml").is_file():
            raise ConfigError(
                f"base_model: {source} has no hyperparams.yaml: not a SpeechBrain inference model folder "
                "(make one from a trained stage with python -m anchor_reg.export STAGE_FOLDER OUT_FOLDER)"
            )
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise ConfigError(f"base_model: {source} is neither a folder nor a hub ID like speechbrain/spkrec-ecapa-voxceleb")
    origin = str(savedir) if kind == "stage" else source
    try:
        hyperparams = pathlib.Path(fetch("hyperparams.yaml", source=origin, savedir=savedir))
    except Exception as err:  # offline and not cached, unknown repo, no network ...
        raise ConfigError(f"base_model: cannot fetch {source}/hyperparams.yaml ({one_line(err)})") from err
    try:
        nodes = model_nodes(hyperparams, EMBEDDING_KEYS)
    except ConfigError as err:
        raise ConfigError(
            f"base_model: {source}: {err} (a SpeechBrain speaker model defines "
            "compute_features, mean_var_norm, embedding_model and classifier)"
        ) from err
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
    return Base(
        modules=modules,
        label_encoder=encoder.hparams.label_encoder,
        label_file=savedir / "label_encoder.ckpt",
        source=source,
        fingerprint=folder_fingerprint(savedir),
        provenance=provenance,
        architecture=architecture,
        nodes=nodes,
    )


def measure_architecture(modules):
    """``n_mels``, ``channels`` (ECAPA-TDNN width) and ``emb_dim`` of a loaded base (None where unknown)."""
    fbank = getattr(modules["compute_features"], "compute_fbanks", None)
    first = getattr(getattr(modules["embedding_model"], "blocks", [None])[0], "conv", None)
    with torch.no_grad():
        emb = embed(modules, torch.randn(1, 8000), torch.ones(1))
    return {"n_mels": getattr(fbank, "n_mels", None), "channels": getattr(getattr(first, "conv", None), "out_channels", None),
            "emb_dim": int(emb.shape[-1])}


# -------------------------------------------------- the stage-2 copy ----
def architecture_overrides(base, hparams_file, overrides):
    """Stage-2 overrides that build the base's architecture; refuses ones that contradict it.

    ``n_mels``, ``channels`` and ``emb_dim`` of the base, and each of the
    base's own model nodes that the stage YAML would build otherwise (another
    backbone, other ECAPA options): SpeechBrain YAML structure, never text.

    Arguments
    ---------
    base : Base
    hparams_file : str | pathlib.Path
        The stage-2 YAML.
    overrides : dict
        The command-line overrides.
    """
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
    tag = str(getattr(getattr(node, "tag", None), "value", None) or "")
    if isinstance(node, dict):
        return tag, {str(key): node_value(value) for key, value in node.items()}
    if isinstance(node, list):
        return tag, [node_value(value) for value in node]
    return tag, str(getattr(node, "value", node))


def copy_module(src, dst):
    """Copies weights and buffers (and an ``InputNormalization``'s statistics) from ``src`` into ``dst``."""
    dst.load_state_dict(src.state_dict(), strict=True)
    if hasattr(src, "_statistics_dict"):
        dst._load_statistics_dict(src._statistics_dict())


def start_from_base(hparams, base, store, label_encoder):
    """Fills stage 2's fresh modules with a copy of the base model.

    The classifier is the base's own when its speakers are exactly the
    training speakers; otherwise a new AAM head whose weight rows are the
    anchors' normalised speaker centroids, in the label encoder's order, so
    stage 2 starts from the base's geometry rather than random boundaries.
    With ``classifier_head: anchor_centroids`` the head is always set to the
    centroids (and kept fixed there by the Brain).

    Returns
    -------
    str
        ``"reused"`` or ``"centroids"``: which classifier stage 2 starts from.
    """
    for key in EMBEDDING_KEYS:
        copy_module(base.modules[key], hparams[key])
    if hparams.get("classifier_head") != "anchor_centroids" and base.covers_exactly(label_encoder.lab2ind):
        copy_module(base.modules["classifier"], hparams["classifier"])
        return "reused"
    set_head_to_centroids(hparams["classifier"], store, label_encoder)
    return "centroids"

