"""Exports a trained stage to SpeechBrain's inference format and publishes it.

The exported folder loads with
``speechbrain.inference.speaker.EncoderClassifier.from_hparams(source=folder)``
and ``SpeakerRecognition.from_hparams(source=folder)``, from a local folder or,
once pushed, from the Hugging Face hub. It holds:

- ``hyperparams.yaml``: the inference hyper-parameters. The model nodes
  (``compute_features``, ``mean_var_norm``, ``embedding_model``,
  ``classifier``) are copied, tags intact, from the stage's resolved training
  YAML without instantiating it, so any backbone exports unchanged.
- ``embedding_model.ckpt``, ``classifier.ckpt``, ``mean_var_norm.ckpt`` (when
  the checkpoint has the normaliser) and ``label_encoder.ckpt`` (the
  ``CategoricalEncoder`` file ``save/label_encoder.txt``). Each file is named
  after its Pretrainer loadable, which is where ``from_hparams(source=...)``
  looks for it, whatever the source is.
- ``README.md`` (model card with hub metadata) and ``training_hparams.yaml``
  (the stage's resolved training YAML, for provenance).

Example
-------
>>> export_model("results/default/1986/stage2", "exported/ecapa")  # doctest: +SKIP
>>> push_to_hub("exported/ecapa", "USER/NAME")  # doctest: +SKIP

Command line::

    python -m anchor_reg.export STAGE_FOLDER OUT_FOLDER [--results results.json]
        [--push --repo-id USER/NAME [--private] [--exist-ok] [--dry-run]]

Authors
 * anchor-reg contributors 2025
"""

import argparse
import io
import json
import logging
import os
import pathlib
import shutil
import sys
import uuid

import ruamel.yaml
import torch
from huggingface_hub import EvalResult, HfApi, ModelCardData, get_token
from huggingface_hub.utils import HfHubHTTPError
from hyperpyyaml import load_hyperpyyaml, resolve_references
from ruamel.yaml.nodes import MappingNode, SequenceNode

from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier
from speechbrain.utils.checkpoints import (
    Checkpointer,
    torch_patched_state_dict_load,
)

logger = logging.getLogger(__name__)

MODEL_KEYS = ("compute_features", "mean_var_norm", "embedding_model", "classifier")

# Inference loadable -> accepted file names in a training checkpoint folder.
CHECKPOINT_FILES = {
    "embedding_model": ("embedding_model.ckpt",),
    "classifier": ("classifier.ckpt",),
    "mean_var_norm": ("normalizer.ckpt", "mean_var_norm.ckpt"),
}
REQUIRED_LOADABLES = ("embedding_model", "classifier")

# Training YAML keys reported in the model card, with their descriptions.
CARD_HPARAMS = {
    "anchor_weight": "anchor loss weight (lambda)",
    "anchor_distance": "anchor distance",
    "anchor_type": "anchor type",
    "snr_low": "lowest training SNR (dB)",
    "snr_high": "highest training SNR (dB)",
    "number_of_epochs": "epochs",
    "lr": "learning rate",
    "batch_size": "batch size",
    "n_mels": "filter banks",
    "channels": "channels",
    "emb_dim": "embedding size",
}
# Canonical result name -> accepted names in a results.json condition entry.
RESULT_ALIASES = {"EER": ("EER", "eer_percent"), "minDCF": ("minDCF", "min_dcf")}
DEFAULT_DATASETS = ("synthetic",)
DEFAULT_COMMIT_MESSAGE = "Upload anchor-reg speaker embedding model"

INFERENCE_YAML_TAIL = """
audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer
  sample_rate: !ref <sample_rate>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

modules:
  compute_features: !ref <compute_features>
  mean_var_norm: !ref <mean_var_norm>
  embedding_model: !ref <embedding_model>
  classifier: !ref <classifier>

# Files are looked up as <source>/<loadable>.ckpt (source of from_hparams).
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
  loadables:
"""


class ExportError(Exception):
    """An expected failure (bad input, refused overwrite, hub error)."""


def export_model(
    stage_folder,
    out_folder,
    *,
    checkpoint=None,
    results=None,
    model_name=None,
    datasets=None,
):
    """Writes a SpeechBrain inference folder for a trained stage.

    The folder is built next to ``out_folder``, checked by loading it with
    ``EncoderClassifier`` (parameters loaded strictly), and only then renamed
    into place; an existing export at ``out_folder`` is replaced.

    Arguments
    ---------
    stage_folder : str or pathlib.Path
        Trained stage: ``hyperparams.yaml``, ``save/`` (checkpoints) and
        ``save/label_encoder.txt``.
    out_folder : str or pathlib.Path
        Where the export goes (must be absent, empty or a previous export).
    checkpoint : str or pathlib.Path, optional
        A ``CKPT+...`` folder; default: the latest end-of-epoch one in ``save/``.
    results : str, pathlib.Path or dict, optional
        ``{"system": str, "conditions": {cond: {"EER": %, "minDCF": ...}}}``
        or a JSON file of it; default: ``results.json`` or
        ``eval/results.json`` in the stage folder, when present.
    model_name : str, optional
        Hub repo id (``USER/NAME``) or name, used by the model card;
        default: the name of ``out_folder``.
    datasets : list of str, optional
        Training data sets for the card; default: the training YAML's
        ``datasets`` key, else ``synthetic``.

    Returns
    -------
    pathlib.Path
        The export folder.
    """
    stage_folder = pathlib.Path(stage_folder).resolve()
    out_folder = pathlib.Path(out_folder).resolve()
    _check_destination(stage_folder, out_folder)

    training_yaml = stage_folder / "hyperparams.yaml"
    tree, model_text = _load_training_yaml(training_yaml)
    checkpoint = _find_checkpoint(stage_folder, checkpoint)
    params = _checkpoint_params(checkpoint)
    label_file = stage_folder / "save" / "label_encoder.txt"
    if not label_file.is_file():
        raise ExportError(f"label encoder not found: {label_file}")
    results = _load_results(results, stage_folder)
    model_name = model_name or out_folder.name
    datasets = _datasets(datasets, tree)

    out_folder.parent.mkdir(parents=True, exist_ok=True)
    build = out_folder.with_name(f".{out_folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    build.mkdir()
    try:
        for loadable, path in params.items():
            shutil.copyfile(path, build / f"{loadable}.ckpt")
        shutil.copyfile(label_file, build / "label_encoder.ckpt")
        shutil.copyfile(training_yaml, build / "training_hparams.yaml")
        (build / "hyperparams.yaml").write_text(
            _inference_yaml(
                tree, model_text, list(params) + ["label_encoder"], checkpoint
            ),
            encoding="utf-8",
        )
        (build / "README.md").write_text(
            _model_card(tree, model_name, datasets, results, checkpoint.name),
            encoding="utf-8",
        )
        _verify_export(build, training_yaml)
        _move_into_place(build, out_folder)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    logger.info("Exported %s (%s) to %s", stage_folder, checkpoint.name, out_folder)
    return out_folder


def _check_destination(stage_folder, out_folder):
    """Refuses destinations whose replacement would destroy other data."""
    if not (stage_folder / "hyperparams.yaml").is_file():
        raise ExportError(
            f"not a trained stage folder (no hyperparams.yaml): {stage_folder}"
        )
    if stage_folder == out_folder or stage_folder.is_relative_to(out_folder):
        raise ExportError(
            f"output folder {out_folder} contains the stage folder; "
            "choose another output folder"
        )
    if out_folder.is_file():
        raise ExportError(f"output folder is a file: {out_folder}")
    if (
        out_folder.is_dir()
        and any(out_folder.iterdir())
        and not _is_export(out_folder)
    ):
        raise ExportError(
            f"{out_folder} exists and is not a model export "
            "(no hyperparams.yaml + embedding_model.ckpt); refusing to replace it"
        )


def _is_export(folder):
    """Whether ``folder`` looks like the result of ``export_model``."""
    return (folder / "hyperparams.yaml").is_file() and (
        folder / "embedding_model.ckpt"
    ).is_file()


def _load_training_yaml(training_yaml):
    """Parses the training YAML without instantiating it.

    Returns
    -------
    tree : dict
        The resolved training YAML (values as ruamel round-trip objects).
    model_text : str
        The YAML text of the model nodes, tags intact, comments dropped.
    """
    yaml = ruamel.yaml.YAML()
    try:
        with open(training_yaml, encoding="utf-8") as fin:
            resolved = resolve_references(fin).getvalue()
        tree = yaml.load(resolved)
        root = yaml.compose(resolved)
    except Exception as err:
        raise ExportError(f"cannot parse {training_yaml}: {_one_line(err)}") from err
    missing = [key for key in MODEL_KEYS if key not in (tree or {})]
    if missing:
        raise ExportError(f"{training_yaml} has no key(s): {', '.join(missing)}")
    pairs = [(k, v) for k, v in root.value if k.value in MODEL_KEYS]
    for key, value in pairs:
        _strip_node(key)
        _strip_node(value)
    stream = io.StringIO()
    yaml.serialize(MappingNode("tag:yaml.org,2002:map", pairs), stream)
    return tree, stream.getvalue()


def _strip_node(node):
    """Drops comments and anchor names from a composed YAML node, in place."""
    node.comment = None
    node.anchor = None
    if isinstance(node, MappingNode):
        for key, value in node.value:
            _strip_node(key)
            _strip_node(value)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _strip_node(item)


def _find_checkpoint(stage_folder, checkpoint):
    """Returns the checkpoint folder: the given one or the best end-of-epoch one
    in save/ (lowest dev ``ErrorRate``, the latest among equals and for
    checkpoints without one; mid-epoch checkpoints only serve to resume training)."""
    if checkpoint is not None:
        checkpoint = pathlib.Path(checkpoint)
        if not checkpoint.is_dir():
            raise ExportError(f"checkpoint folder not found: {checkpoint}")
        return checkpoint
    save_folder = stage_folder / "save"
    if not save_folder.is_dir():
        raise ExportError(f"no checkpoint folder: {save_folder}")
    checkpointer = Checkpointer(save_folder)
    end_of_epoch = lambda ckpt: INTRA_EPOCH_CKPT_FLAG not in ckpt.meta  # noqa: E731
    chosen = checkpointer.find_checkpoint(min_key="ErrorRate", ckpt_predicate=end_of_epoch)
    chosen = chosen or checkpointer.find_checkpoint(ckpt_predicate=end_of_epoch)
    if chosen is None:
        raise ExportError(f"no end-of-epoch checkpoint (CKPT+*) in {save_folder}")
    return pathlib.Path(chosen.path)


def _checkpoint_params(checkpoint):
    """Maps each inference loadable to its parameter file in ``checkpoint``."""
    params = {}
    for loadable, names in CHECKPOINT_FILES.items():
        found = [checkpoint / n for n in names if (checkpoint / n).is_file()]
        if found:
            params[loadable] = found[0]
        elif loadable in REQUIRED_LOADABLES:
            raise ExportError(f"{checkpoint} has no {' or '.join(names)}")
    return params


def _load_results(results, stage_folder):
    """Returns the results (given, read from JSON, or found) or None.

    Condition entries are normalised to ``{"EER": %, "minDCF": ..., other
    scalar entries}``; ``eer_percent`` / ``min_dcf`` are accepted as names.
    """
    source = results
    if results is None:
        candidates = [stage_folder / "results.json", stage_folder / "eval" / "results.json"]
        source = next((p for p in candidates if p.is_file()), None)
        if source is None:
            return None
    if not isinstance(source, dict):
        try:
            results = json.loads(pathlib.Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ExportError(f"cannot read results file {source}: {_one_line(err)}") from err
        source = str(source)
    else:
        source = "results"
    conditions = results.get("conditions") if isinstance(results, dict) else None
    if not isinstance(conditions, dict) or not conditions:
        raise ExportError(
            f'{source} must look like {{"system": ..., "conditions": '
            '{condition: {"EER": ..., "minDCF": ...}}}'
        )
    rows = {}
    for condition, metrics in conditions.items():
        rows[condition] = _result_row(metrics) if isinstance(metrics, dict) else {}
        if not isinstance(rows[condition].get("EER"), (int, float)):
            raise ExportError(f"{source}: condition {condition!r} has no EER")
    return {**results, "conditions": rows}


def _result_row(metrics):
    """One condition's results: EER, minDCF, then its other scalar entries."""
    aliases = {a for names in RESULT_ALIASES.values() for a in names}
    row = {}
    for name, names in RESULT_ALIASES.items():
        found = [metrics[a] for a in names if metrics.get(a) is not None]
        if found:
            row[name] = found[0]
    row.update(
        (key, value)
        for key, value in metrics.items()
        if key not in aliases and (value is None or isinstance(value, (str, int, float)))
    )
    return row


def _datasets(datasets, tree):
    """Training data set names: argument, YAML ``datasets`` key, or default."""
    datasets = datasets or tree.get("datasets") or DEFAULT_DATASETS
    return [datasets] if isinstance(datasets, str) else [str(d) for d in datasets]


def _inference_yaml(tree, model_text, loadables, checkpoint):
    """Builds the inference hyperparams.yaml text around the model nodes."""
    header = (
        "# ############################################################################\n"
        "# Inference hyper-parameters exported by anchor_reg.export\n"
        f"# Backbone: {_backbone_name(tree)}; checkpoint: {checkpoint.name}\n"
        "# ############################################################################\n\n"
        f"sample_rate: {int(tree.get('sample_rate', 16000))}\n\n"
        "# Model, copied from the training YAML (training_hparams.yaml)\n"
    )
    pretrainer = "".join(f"    {name}: !ref <{name}>\n" for name in loadables)
    return header + model_text + INFERENCE_YAML_TAIL + pretrainer


def _backbone_name(tree):
    """Class name of the embedding model, e.g. ``ECAPA_TDNN``."""
    tag = getattr(getattr(tree["embedding_model"], "tag", None), "value", None)
    return tag.rsplit(".", 1)[-1] if tag else "unknown"


def _verify_export(folder, training_yaml):
    """Checks ``folder`` parameters strictly, then loads it as a user would."""
    with open(folder / "hyperparams.yaml", encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin)
    for name in REQUIRED_LOADABLES:
        state = torch_patched_state_dict_load(folder / f"{name}.ckpt", "cpu")
        try:
            hparams[name].load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ExportError(
                f"checkpoint {name}.ckpt does not match `{name}` in "
                f"{training_yaml}: {_one_line(err)}"
            ) from err
    labels = CategoricalEncoder()
    try:
        labels.load(folder / "label_encoder.ckpt")
    except (ValueError, SyntaxError) as err:
        raise ExportError(f"label encoder file is not valid: {_one_line(err)}") from err
    weight = getattr(hparams["classifier"], "weight", None)
    if isinstance(weight, torch.Tensor) and weight.shape[0] != len(labels):
        logger.warning(
            "classifier has %d outputs but the label encoder has %d labels",
            weight.shape[0],
            len(labels),
        )
    try:
        EncoderClassifier.from_hparams(
            source=str(folder), savedir=str(folder), run_opts={"device": "cpu"}
        )
    except Exception as err:
        raise ExportError(f"exported model does not load: {_one_line(err)}") from err


def _one_line(err, limit=300):
    """An exception message squeezed onto one line."""
    return " ".join(str(err).split())[:limit]


def _move_into_place(build, out_folder):
    """Renames ``build`` to ``out_folder``, replacing it only at the end."""
    if not out_folder.exists():
        os.replace(build, out_folder)
        return
    old = build.with_name(build.name + ".old")
    os.replace(out_folder, old)
    try:
        os.replace(build, out_folder)
    except OSError:
        os.replace(old, out_folder)
        raise
    shutil.rmtree(old)


def _hparam(tree, key):
    """Value of ``key``: top level first, else its first nested occurrence."""
    if key in tree:
        return tree[key]
    for value in tree.values():
        if isinstance(value, dict):
            found = _hparam(value, key)
            if found is not None:
                return found
    return None


def _format_value(value):
    """Renders a YAML value for a markdown table."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _model_card(tree, model_name, datasets, results, checkpoint_name):
    """Returns README.md: hub metadata header and model description."""
    backbone = _backbone_name(tree)
    backbone_tag = backbone.replace("_", "-")
    repo_id = model_name if "/" in model_name else f"<hf-user>/{model_name}"
    metadata = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="speechbrain",
        tags=[
            "speechbrain",
            "speaker-verification",
            "speaker-recognition",
            "embeddings",
            backbone_tag,
            "pytorch",
            "noise-robust",
        ],
        datasets=datasets,
        metrics=["EER", "minDCF"],
        model_name=model_name if results else None,
        eval_results=_eval_results(results, datasets[0]) if results else None,
    )
    found = {key: _hparam(tree, key) for key in CARD_HPARAMS}
    hparams = {
        key: value
        for key, value in found.items()
        if value is not None and not isinstance(value, dict)
    }
    emb_dim = hparams.get("emb_dim") or _hparam(tree["embedding_model"], "lin_neurons")
    sample_rate = int(tree.get("sample_rate", 16000))
    sections = [
        f"---\n{metadata.to_yaml()}\n---\n",
        f"# {model_name}: noise-robust speaker embeddings ({backbone_tag})\n",
        "This is a [SpeechBrain](https://speechbrain.github.io) speaker-embedding "
        f"model ({backbone_tag}"
        + (f", {emb_dim}-dimensional embeddings" if emb_dim else "")
        + ") trained with the anchor-based stage-wise strategy of "
        "[arXiv:2510.18530](https://arxiv.org/abs/2510.18530) "
        "(recipe: anchor-reg) for speaker verification in noise.\n",
        _training_section(hparams, datasets, checkpoint_name),
    ]
    if results:
        sections.append(_results_section(results))
    sections += [_usage_section(repo_id, emb_dim, sample_rate), CITATION]
    return "\n".join(sections)


def _training_section(hparams, datasets, checkpoint_name):
    """Markdown: how the model was trained and its key hyper-parameters."""
    lines = [
        "## Training\n",
        "1. **Stage 1** trains a base speaker classifier to set discriminative "
        "speaker boundaries.",
        "2. **Anchors**: the frozen stage-1 model embeds the training "
        "utterances once; these embeddings are fixed anchors.",
        "3. **Stage 2** fine-tunes a copy of the base model on noisy inputs, "
        "regularised by an anchor-distance loss that keeps each embedding "
        "close to its fixed anchor.\n",
    ]
    if not any(key.startswith("anchor_") for key in hparams):
        lines.append(
            "The training configuration has no `anchor_*` keys: this model is "
            "not anchor-regularised (e.g. a stage-1 or baseline model).\n"
        )
    lines.append(
        f"Training data: {', '.join(datasets)}. Exported from checkpoint "
        f"`{checkpoint_name}`; the full training configuration is in "
        "`training_hparams.yaml`.\n"
    )
    if hparams:
        lines += ["| hyper-parameter | key | value |", "|---|---|---|"]
        lines += [
            f"| {CARD_HPARAMS[key]} | `{key}` | {_format_value(value)} |"
            for key, value in hparams.items()
        ]
        lines.append("")
    return "\n".join(lines)


def _format_result(name, value):
    """Formats one results-table cell."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if name == "EER" else f"{value:.4g}"
    return str(value)


def _results_section(results):
    """Markdown table of EER (%), minDCF and other entries per condition."""
    conditions = results["conditions"]
    names = []
    for row in conditions.values():
        names += [name for name in row if name not in names]
    header = ["condition"] + [f"{n} (%)" if n == "EER" else n for n in names]
    lines = [
        "## Results\n",
        f"System: {results.get('system', 'this model')}.\n",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for condition, row in conditions.items():
        cells = [_format_result(n, row[n]) if n in row else "-" for n in names]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    if results.get("min_dcf_definition"):
        lines.append(f"\n{results['min_dcf_definition']}")
    lines.append("")
    return "\n".join(lines)


def _eval_results(results, dataset):
    """Hub ``model-index`` entries: EER and minDCF for each condition."""
    dataset = results.get("dataset", dataset)
    return [
        EvalResult(
            task_type="speaker-verification",
            task_name="Speaker Verification",
            dataset_type=dataset,
            dataset_name=f"{dataset} ({condition})",
            dataset_config=condition,
            metric_type=metric.lower(),
            metric_name="EER (%)" if metric == "EER" else metric,
            metric_value=float(metrics[metric]),
        )
        for condition, metrics in results["conditions"].items()
        for metric in ("EER", "minDCF")
        if isinstance(metrics.get(metric), (int, float))
    ]


def _usage_section(repo_id, emb_dim, sample_rate):
    """Markdown: how to load the model and verify two files."""
    return f"""## Usage

```python
from speechbrain.inference.speaker import EncoderClassifier, SpeakerRecognition

encoder = EncoderClassifier.from_hparams(
    source="{repo_id}", savedir="pretrained_models/{repo_id.split('/')[-1]}"
)
signal = encoder.load_audio("speech.wav")  # resampled to {sample_rate} Hz mono
embedding = encoder.encode_batch(signal.unsqueeze(0))  # {emb_dim or "emb_dim"} values

verification = SpeakerRecognition.from_hparams(
    source="{repo_id}", savedir="pretrained_models/{repo_id.split('/')[-1]}"
)
score, same_speaker = verification.verify_files("enrol.wav", "test.wav")
```

`score` is the cosine similarity of the two embeddings. `verify_files` decides
with SpeechBrain's default threshold (0.25), which is not calibrated for this
model: choose a threshold on your own trials and call
`verification.verify_batch(wavs1, wavs2, threshold=...)`.
"""


CITATION = """## Citation

```bibtex
@misc{anchor_reg,
  title={A Stage-Wise Learning Strategy with Fixed Anchors for Robust Speaker Verification},
  author={Gu, Bin and others},
  year={2025},
  eprint={2510.18530},
  archivePrefix={arXiv},
  primaryClass={cs.SD}
}

@misc{speechbrain,
  title={{SpeechBrain}: A General-Purpose Speech Toolkit},
  author={Mirco Ravanelli and Titouan Parcollet and Peter Plantinga and
    Aku Rouhe and Samuele Cornell and Loren Lugosch and Cem Subakan and
    Nauman Dawalatabad and Abdelwahab Heba and Jianyuan Zhong and
    Ju-Chieh Chou and Sung-Lin Yeh and Szu-Wei Fu and Chien-Feng Liao and
    Elena Rastorgueva and François Grondin and William Aris and Hwidong Na and
    Yan Gao and Renato De Mori and Yoshua Bengio},
  year={2021},
  eprint={2106.04624},
  archivePrefix={arXiv},
  primaryClass={eess.AS}
}
```
"""


def _files_to_upload(out_folder):
    """Sorted relative paths of the files in ``out_folder``, hidden ones
    (e.g. caches) left out."""
    out_folder = pathlib.Path(out_folder)
    return sorted(
        path.relative_to(out_folder).as_posix()
        for path in out_folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(out_folder).parts)
    )


def push_to_hub(
    out_folder,
    repo_id,
    *,
    token=None,
    private=False,
    exist_ok=False,
    dry_run=False,
    commit_message=DEFAULT_COMMIT_MESSAGE,
):
    """Uploads an exported folder to a Hugging Face model repository.

    Arguments
    ---------
    out_folder : str or pathlib.Path
        A folder written by ``export_model``; never modified.
    repo_id : str
        ``USER/NAME`` of the model repository.
    token : str, optional
        Hub token; default: ``HF_TOKEN`` or the cached ``huggingface-cli login``.
    private : bool
        Create the repository as private.
    exist_ok : bool
        Push a new commit to an existing repository instead of refusing.
    dry_run : bool
        Only return what would be uploaded: no token, no network.
    commit_message : str
        Message of the hub commit.

    Returns
    -------
    list of str
        Relative paths of the uploaded (or, in a dry run, to-upload) files.
    """
    out_folder = pathlib.Path(out_folder)
    if not _is_export(out_folder):
        raise ExportError(f"not an exported model folder: {out_folder}")
    files = _files_to_upload(out_folder)
    if dry_run:
        return files
    token = token or get_token()
    if not token:
        raise ExportError(
            f"no Hugging Face token to push {repo_id}: pass --token, set HF_TOKEN "
            "or run `huggingface-cli login`"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=exist_ok, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(out_folder),
            repo_type="model",
            allow_patterns=files,
            commit_message=commit_message,
        )
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 409:
            raise ExportError(
                f"Hugging Face repo {repo_id} already exists; pass --exist-ok "
                "(exist_ok=True) to push a new commit to it"
            ) from err
        raise ExportError(
            f"pushing to Hugging Face repo {repo_id} failed: {_one_line(err)}"
        ) from err
    except Exception as err:  # network / client errors vary with the hub client
        raise ExportError(
            f"cannot reach the Hugging Face hub to push {repo_id}: "
            f"{type(err).__name__}: {_one_line(err)}"
        ) from err
    return files


def _parse_args(argv):
    """Command-line arguments of ``python -m anchor_reg.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m anchor_reg.export",
        description="Export a trained stage to SpeechBrain's inference format "
        "and optionally push it to the Hugging Face hub.",
    )
    parser.add_argument("stage_folder", help="trained stage folder")
    parser.add_argument("out_folder", help="export folder (replaced if an export)")
    parser.add_argument("--checkpoint", help="CKPT+... folder (default: latest)")
    parser.add_argument("--results", help="results.json for the model card")
    parser.add_argument("--datasets", nargs="+", help="training data set names")
    parser.add_argument("--model-name", help="name in the model card (default: repo id)")
    parser.add_argument("--push", action="store_true", help="upload to the hub")
    parser.add_argument("--repo-id", help="USER/NAME of the hub repository")
    parser.add_argument("--private", action="store_true", help="create a private repo")
    parser.add_argument(
        "--exist-ok", action="store_true", help="push to an existing repository"
    )
    parser.add_argument("--token", help="hub token (default: HF_TOKEN / cached login)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the files to upload, push nothing"
    )
    args = parser.parse_args(argv)
    if args.push and not args.dry_run and not args.repo_id:
        parser.error("--push needs --repo-id USER/NAME")
    return args


def main(argv=None):
    """Runs the command line; returns the exit code."""
    try:
        args = _parse_args(argv)
    except SystemExit as exit_:
        return exit_.code
    try:
        out_folder = export_model(
            args.stage_folder,
            args.out_folder,
            checkpoint=args.checkpoint,
            results=args.results,
            model_name=args.model_name or args.repo_id,
            datasets=args.datasets,
        )
        print(f"exported {out_folder}")
        if args.push or args.dry_run:
            files = push_to_hub(
                out_folder,
                args.repo_id,
                token=args.token,
                private=args.private,
                exist_ok=args.exist_ok,
                dry_run=args.dry_run,
            )
            verb = "would upload" if args.dry_run else "uploaded"
            print(f"{verb} to {args.repo_id or 'the hub'}:")
            for name in files:
                print(f"  {name}  {(out_folder / name).stat().st_size} bytes")
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
