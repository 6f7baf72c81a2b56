"""The base model stage 2 starts from: any SpeechBrain speaker model, loaded one way.

A base is one of

- a hub ID (``speechbrain/spkrec-ecapa-voxceleb``) or a local folder holding a
  SpeechBrain inference model (``hyperparams.yaml`` + ``*.ckpt``, e.g. an
  ``anchor_reg.export`` folder), loaded with ``EncoderClassifier.from_hparams``
  (SpeechBrain's fetching, cached in ``savedir``; works offline once cached,
  ``HF_HUB_OFFLINE=1``);
- this project's finished stage 1, at its best end-of-epoch checkpoint
  (lowest ``ErrorRate``), read with a ``Checkpointer`` (its files are only read).

:func:`load_base` returns a :class:`Base`: the modules, the label encoder,
what the base is (its provenance) and a fingerprint that changes whenever
its weights do. The base decides the architecture of the stage-2 copy: for
an inference model, :attr:`Base.model_file` is the base's own model
definition, which stage2.yaml includes instead of ``hparams/model.yaml``.
"""
import dataclasses
import logging
import pathlib
import re

import ruamel.yaml
import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from anchor_reg.anchors import checkpoint_fingerprint
from anchor_reg.atomic import write_text_atomic
from anchor_reg.checkpointer import AtomicCheckpointer, best_checkpoint
from anchor_reg.digest import content_digest
from anchor_reg.embedding import embed
from anchor_reg.errors import ConfigError, ProvenanceError, one_line
from anchor_reg.heads import set_head_to_centroids
from anchor_reg.model_yaml import load_model_yaml
from anchor_reg.provenance import read_provenance

logger = logging.getLogger(__name__)

# Keys of the stage YAMLs that the base decides; an override that contradicts the base is refused.
ARCHITECTURE_KEYS = ("n_mels", "channels", "emb_dim")
EMBEDDING_KEYS = ("compute_features", "mean_var_norm", "embedding_model")

NEW_HEAD = """classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: !ref <emb_dim>
    out_neurons: !ref <num_train_speakers>
"""


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
        ``base_kind`` (``stage1`` | ``folder`` | ``hub``) and ``base_model``
        (checkpoint, folder or hub ID; for the hub also ``base_revision``).
    architecture : dict
        ``n_mels``, ``channels``, ``emb_dim`` of the base (None when unknown).
    model_file : pathlib.Path
        The base's model definition for the stage-2 copy; None: the stage
        YAML's own (stage 1 was built from it).
    """

    modules: torch.nn.ModuleDict
    label_encoder: CategoricalEncoder
    label_file: pathlib.Path
    source: str
    fingerprint: str
    provenance: dict
    architecture: dict
    model_file: pathlib.Path = None

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


def load_base(hparams, stage1=None, train_speakers=(), train_rows_digest=None):
    """The base model stage 2 starts from.

    Arguments
    ---------
    hparams : dict
        Stage 2's: ``base_model`` (hub ID, folder, or None for stage 1) and
        ``pretrained_folder`` (SpeechBrain's savedir cache of hub/folder bases).
    stage1 : dict
        Stage 1's hparams (finished), when ``base_model`` is None.
    train_speakers : iterable of str
        This run's training speakers (stage 1 must have been trained on them).
    train_rows_digest : str
        :func:`anchor_reg.provenance.rows_digest` of this run's training rows.

    Returns
    -------
    Base
    """
    if hparams["base_model"] is None:
        return load_stage1(stage1, train_speakers, train_rows_digest)
    return load_pretrained(str(hparams["base_model"]), pathlib.Path(hparams["pretrained_folder"]))


# ------------------------------------------------------------------ stage 1 --
STAGE_NAMES = {"stage1": "stage 1", "joint": "the joint model", "stage2": "stage 2"}


def check_trained_on(hparams, train_speakers, train_rows_digest, ckpt=None):
    """Refuses a stage (its best checkpoint, or ``ckpt``) trained on other data than this run's training CSV.

    Compares the stage's label set with ``train_speakers`` and the checkpoint's
    recorded training-rows digest (if it has one) with ``train_rows_digest``;
    returns the stage's label encoder.
    """
    folder = pathlib.Path(hparams["output_folder"])
    ckpt = ckpt or best_checkpoint(hparams["save_folder"])
    labels = CategoricalEncoder()
    labels.load(pathlib.Path(hparams["save_folder"]) / "label_encoder.txt")
    recorded = read_provenance(pathlib.Path(ckpt.path) / "provenance.ckpt").get("train_rows_digest")
    trained_on = set(labels.lab2ind)
    if trained_on != set(train_speakers) or recorded not in (None, train_rows_digest):
        added, gone = sorted(set(train_speakers) - trained_on), sorted(trained_on - set(train_speakers))
        raise ProvenanceError(
            f"{STAGE_NAMES.get(hparams['stage'], hparams['stage'])} in {folder} was trained on other data than "
            f"this run's training CSV ({len(trained_on)} speakers then, {len(set(train_speakers))} now; "
            f"new: {added[:3]}, gone: {gone[:3]}): retrain it by moving {folder.parent} away (its stages "
            "and anchors are then made again), or use another experiment folder (--experiment_name=NEW)"
        )
    return labels


def load_stage1(stage1, train_speakers, train_rows_digest):
    """This project's finished stage 1 at its best checkpoint; refuses one trained on other data."""
    ckpt = best_checkpoint(stage1["save_folder"])
    if ckpt is None:
        raise ConfigError(f"stage 1 in {stage1['output_folder']} has no end-of-epoch checkpoint")
    labels = check_trained_on(stage1, train_speakers, train_rows_digest, ckpt)
    label_file = pathlib.Path(stage1["save_folder"]) / "label_encoder.txt"
    modules = torch.nn.ModuleDict({key: stage1[key] for key in (*EMBEDDING_KEYS, "classifier")})
    reader = AtomicCheckpointer(stage1["save_folder"], recoverables={  # an invalid file: one error naming it
        "embedding_model": stage1["embedding_model"], "classifier": stage1["classifier"],
        "normalizer": stage1["mean_var_norm"],
    })
    reader.load_checkpoint(ckpt)
    logger.info("stage 1: reusing %s (epoch %s, ErrorRate %s)", ckpt.path, ckpt.meta.get("epoch"),
                ckpt.meta.get("ErrorRate"))
    return Base(
        modules=modules.eval(),
        label_encoder=labels,
        label_file=label_file,
        source=f"stage 1 checkpoint {ckpt.path}",
        fingerprint=checkpoint_fingerprint(ckpt.path),
        provenance={"base_kind": "stage1", "base_model": str(ckpt.path)},
        architecture={key: stage1.get(key) for key in ARCHITECTURE_KEYS},
    )


# ------------------------------------------------------ hub ID or folder ----
def load_pretrained(source, pretrained_folder):
    """A SpeechBrain inference model from a folder or the hub, through ``EncoderClassifier``.

    Arguments
    ---------
    source : str
        Local folder or hub ID (``owner/name``).
    pretrained_folder : pathlib.Path
        Parent of the savedir (one sub-folder per source).
    """
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.utils.fetching import fetch

    is_folder = pathlib.Path(source).is_dir()
    if is_folder:
        source = str(pathlib.Path(source).resolve())
        if not (pathlib.Path(source) / "hyperparams.yaml").is_file():
            raise ConfigError(
                f"base_model: {source} has no hyperparams.yaml: not a SpeechBrain inference model folder "
                "(make one from a trained stage with python -m anchor_reg.export STAGE_FOLDER OUT_FOLDER)"
            )
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise ConfigError(f"base_model: {source} is neither a folder nor a hub ID like speechbrain/spkrec-ecapa-voxceleb")
    savedir = savedir_of(source, pretrained_folder)
    try:
        hyperparams = pathlib.Path(fetch("hyperparams.yaml", source=source, savedir=savedir))
    except Exception as err:  # offline and not cached, unknown repo, no network ...
        raise ConfigError(f"base_model: cannot fetch {source}/hyperparams.yaml ({one_line(err)})") from err
    model_text = base_model_text(hyperparams, source)
    try:
        encoder = EncoderClassifier.from_hparams(source=source, savedir=str(savedir), run_opts={"device": "cpu"})
    except Exception as err:
        raise ConfigError(f"base_model: {source} does not load as a SpeechBrain speaker model ({one_line(err)})") from err
    modules = encoder.mods.eval()
    architecture = measure_architecture(modules, model_text)
    label_file = savedir / "label_encoder.ckpt"
    provenance = {"base_kind": "folder" if is_folder else "hub", "base_model": source}
    if not is_folder:
        revision = re.search(r"snapshots/([0-9a-f]+)/", str(hyperparams.resolve()))
        provenance["base_revision"] = revision.group(1) if revision else None
    model_file = savedir / "anchor_reg_model.yaml"
    write_text_atomic(model_file, model_file_text(source, model_text, architecture))
    if "mean_var_norm_emb" in modules:
        logger.info("base model: %s has mean_var_norm_emb; like its encode_batch(), anchors and stage 2 "
                    "use the embeddings before it", source)
    logger.info("base model: %s (%s), C=%s, emb_dim=%s, cached in %s", source, provenance.get("base_revision", "local"),
                architecture["channels"], architecture["emb_dim"], savedir)
    return Base(
        modules=modules,
        label_encoder=encoder.hparams.label_encoder,
        label_file=label_file,
        source=source,
        fingerprint=folder_fingerprint(savedir),
        provenance=provenance,
        architecture=architecture,
        model_file=model_file,
    )


def savedir_of(source, pretrained_folder):
    """SpeechBrain's savedir for a base: ``<pretrained_folder>/<source, slashes as _>``."""
    source = str(pathlib.Path(source).resolve()) if pathlib.Path(source).is_dir() else source
    return pathlib.Path(pretrained_folder) / re.sub(r"[^\w.-]+", "_", source.strip("/"))


def base_folder(hparams):
    """The folder the base model is read from: stage 1's, or the savedir of a hub / folder base."""
    if hparams["base_model"] is None:
        return pathlib.Path(hparams["stage1_folder"])
    return savedir_of(str(hparams["base_model"]), hparams["pretrained_folder"])


def base_model_text(hyperparams, source):
    """YAML text of the base's compute_features, mean_var_norm and embedding_model nodes (tags intact)."""
    try:
        _, model_text = load_model_yaml(hyperparams)
    except ConfigError as err:
        raise ConfigError(
            f"base_model: {source}: {err} (a SpeechBrain speaker model defines "
            "compute_features, mean_var_norm, embedding_model and classifier)"
        ) from err
    yaml = ruamel.yaml.YAML()
    nodes = yaml.load(model_text)
    del nodes["classifier"]
    return nodes


def measure_architecture(modules, nodes):
    """``n_mels``, ``channels`` and ``emb_dim`` of a loaded base (None where the model has no such notion)."""
    fbank = getattr(modules["compute_features"], "compute_fbanks", None)
    channels = nodes["embedding_model"].get("channels") if hasattr(nodes["embedding_model"], "get") else None
    if isinstance(channels, list):
        channels = channels[0]
    with torch.no_grad():
        emb = embed(modules, torch.randn(1, 8000), torch.ones(1))
    return {"n_mels": getattr(fbank, "n_mels", None), "channels": channels, "emb_dim": int(emb.shape[-1])}


def model_file_text(source, nodes, architecture):
    """The stage-2 model definition: the base's nodes and a classifier head for the training speakers."""
    import io

    stream = io.StringIO()
    ruamel.yaml.YAML().dump(nodes, stream)
    header = (
        f"# The model of the base {source} (its own hyperparams.yaml), for the stage-2 copy.\n"
        "# Written by anchor_reg.base; stage2.yaml includes it as `model`.\n"
    )
    keys = "".join(f"{key}: {'null' if value is None else value}\n" for key, value in architecture.items())
    return header + keys + "num_train_speakers: 0\n" + stream.getvalue() + NEW_HEAD


def folder_fingerprint(folder):
    """sha256 over the names and content of a model folder's hyperparams.yaml and ``*.ckpt`` files."""
    folder = pathlib.Path(folder)
    paths = sorted([folder / "hyperparams.yaml", *folder.glob("*.ckpt")])
    return content_digest(part for path in paths for part in (path.name, path))


# -------------------------------------------------- the stage-2 copy ----
def architecture_overrides(base, overrides):
    """Stage-2 overrides that build the base's architecture; refuses ones that contradict it.

    Arguments
    ---------
    base : Base
    overrides : dict
        The command-line overrides.

    Returns
    -------
    dict
        ``overrides`` with ``n_mels``, ``channels``, ``emb_dim`` of the base.
    """
    decided = {key: value for key, value in base.architecture.items() if value is not None}
    for key, value in decided.items():
        if key in overrides and overrides[key] != value:
            raise ConfigError(
                f"--{key}={overrides[key]} contradicts the base model {base.source}, which has {key} {value}: "
                f"drop --{key} (the base decides the architecture of stage 2)"
            )
    return dict(overrides, **decided)


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

