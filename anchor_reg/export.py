"""Builds a SpeechBrain inference folder from a trained stage (and the command line that publishes it).

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
- ``README.md`` (model card with hub metadata, :mod:`anchor_reg.model_card`) and
  ``training_hparams.yaml`` (the stage's resolved training YAML, for provenance,
  with this machine's absolute paths redacted: see :func:`redact_paths`).

An earlier export at the destination is replaced only if it holds nothing
but the files an export writes (``overwrite=True`` / ``--overwrite`` replaces
it anyway). Publishing is :mod:`anchor_reg.hub`.

Example
-------
>>> export_model("results/default/1986/stage2", "exported/ecapa")  # doctest: +SKIP
>>> push_to_hub("exported/ecapa", "USER/NAME")  # doctest: +SKIP

Command line::

    python -m anchor_reg.export STAGE_FOLDER OUT_FOLDER [--results results.json] [--wise_alpha A|auto]
        [--allow_unfinished] [--push --repo-id USER/NAME [--private] [--exist-ok] [--dry-run]]

Authors
 * anchor-reg contributors 2025
"""

import argparse
import io
import logging
import os
import pathlib
import re
import shutil
import sys
import uuid

import ruamel.yaml
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml, resolve_references

from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.checkpoints import (
    METAFNAME,
    Checkpointer,
    torch_patched_state_dict_load,
)

from anchor_reg.anchors import AnchorStore
from anchor_reg.checkpointer import best_checkpoint, end_of_epoch, invalid_file_message, is_tensor_file
from anchor_reg.config import model_nodes
from anchor_reg.errors import AnchorStoreError, ConfigError, ExportError, HubError, ResultsError, WiseError, one_line
from anchor_reg.forgetting import interpolate_weights
from anchor_reg.hub import push_to_hub
from anchor_reg.model_card import backbone_name, dataset_names, find_hparam, model_card
from anchor_reg.results import load_results
from anchor_reg.wise import base_embedding_state, card_section, choose_alpha, dev_retrieval_errors, parse_alpha

logger = logging.getLogger(__name__)

# The nodes that define a SpeechBrain speaker model, in a training YAML and an inference one alike.
MODEL_KEYS = ("compute_features", "mean_var_norm", "embedding_model", "classifier")
# Inference loadable -> accepted file names in a training checkpoint folder.
CHECKPOINT_FILES = {
    "embedding_model": ("embedding_model.ckpt",),
    "classifier": ("classifier.ckpt",),
    "mean_var_norm": ("normalizer.ckpt", "mean_var_norm.ckpt"),
}
REQUIRED_LOADABLES = ("embedding_model", "classifier")
# Every file an export writes (the optional loadables included).
EXPORT_FILES = frozenset(
    {f"{loadable}.ckpt" for loadable in CHECKPOINT_FILES}
    | {"label_encoder.ckpt", "hyperparams.yaml", "training_hparams.yaml", "README.md"}
)
# Training-YAML keys whose absolute value is published as ``<key>/...`` (longest match first).
PATH_ROOTS = ("output_base", "data_folder")
# Where a path may start (after a space, "[", ",", ":" or a quote) and end (the end of a line or YAML
# value: before ",", "]", "}", a quote or " #"); inside it, any character but a quote or a line break.
PATH_START = r"(?<=[\s\[,:'\"])"
PATH_END = r"(?=[ \t]*(?:$|[,\]}'\"]|[ \t]#))"
ABSOLUTE_PATH = re.compile(PATH_START + r"/(?=[^\s/,\]}'\"#])[^\n'\"]*?" + PATH_END, re.M)

INFERENCE_YAML = pathlib.Path(__file__).resolve().parents[1] / "hparams" / "inference.yaml"


def export_model(
    stage_folder,
    out_folder,
    *,
    checkpoint=None,
    results=None,
    model_name=None,
    datasets=None,
    evaluate=None,
    overwrite=False,
    wise_alpha=None,
    allow_unfinished=False,
):
    """Writes a SpeechBrain inference folder for a trained stage.

    The folder is built next to ``out_folder``, checked by loading it with
    ``EncoderClassifier`` (parameters loaded strictly), and only then renamed
    into place; an earlier export at ``out_folder`` is replaced.

    Arguments
    ---------
    stage_folder : str or pathlib.Path
        Trained stage: ``hyperparams.yaml``, ``save/`` (checkpoints) and
        ``save/label_encoder.txt``.
    out_folder : str or pathlib.Path
        Where the export goes (must be absent, empty or a previous export
        holding only the files an export writes, unless ``overwrite``).
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
        Training data sets for the card; default: what the training YAML's
        ``dataset`` trained on (the data folders' names, ``voxceleb`` or
        ``synthetic``).
    evaluate : callable, optional
        ``evaluate(folder) -> results`` run on the verified export before its
        model card is written (the card then shows what it returns), so a
        model is exported once and evaluated exactly as users will load it.
    overwrite : bool
        Replace an earlier export even if it holds files of its own.
    wise_alpha : float or str, optional
        WiSE-FT: export ``alpha * base + (1 - alpha) * adapted`` embedding
        weights (a stage 2 and its recorded base); ``"auto"`` chooses alpha on
        the dev criterion (:mod:`anchor_reg.wise`). The model card says so.
    allow_unfinished : bool
        Export a checkpoint whose training did not finish (fewer epochs than
        ``number_of_epochs`` and no early stop, or a mid-epoch checkpoint);
        the model card says so. Without it such an export is refused.

    Returns
    -------
    pathlib.Path
        The export folder.
    """
    stage_folder = pathlib.Path(stage_folder).resolve()
    out_folder = pathlib.Path(out_folder).resolve()
    _check_destination(stage_folder, out_folder, overwrite)

    training_yaml = stage_folder / "hyperparams.yaml"
    tree, nodes = _load_training_yaml(training_yaml)
    checkpoint = _find_checkpoint(stage_folder, checkpoint)
    # whether the stage finished is the training's state: its latest end-of-epoch checkpoint (the exported one
    # may be an earlier, better epoch), else its latest one
    saved = Checkpointer(stage_folder / "save") if (stage_folder / "save").is_dir() else None
    latest = saved and (saved.find_checkpoint(ckpt_predicate=end_of_epoch) or saved.find_checkpoint())
    progress = training_progress(pathlib.Path(latest.path) if latest is not None else checkpoint, tree)
    if not (progress["finished"] or allow_unfinished):
        raise ExportError(
            f"{stage_folder} did not finish training: its latest checkpoint has {progress['epochs']} of "
            f"{progress['planned']} epochs; resume it with the command that trained it, or pass "
            "--allow_unfinished to export it as it is (its model card then says so)"
        )
    params = _checkpoint_params(checkpoint)
    label_file = stage_folder / "save" / "label_encoder.txt"
    if not label_file.is_file():
        raise ExportError(f"label encoder not found: {label_file}")
    results = _results(results, stage_folder)
    model_name = model_name or out_folder.name
    if wise_alpha is not None:
        try:
            base_state = base_embedding_state(tree, checkpoint)
        except (WiseError, ConfigError, AnchorStoreError) as err:
            raise ExportError(str(err)) from err
    datasets = dataset_names(datasets, tree)

    out_folder.parent.mkdir(parents=True, exist_ok=True)
    build = out_folder.with_name(f".{out_folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    build.mkdir()
    try:
        for loadable, path in params.items():
            shutil.copyfile(path, build / f"{loadable}.ckpt")
        shutil.copyfile(label_file, build / "label_encoder.ckpt")
        (build / "training_hparams.yaml").write_text(
            redact_paths(training_yaml.read_text(encoding="utf-8"), tree), encoding="utf-8"
        )
        (build / "hyperparams.yaml").write_text(
            inference_yaml(tree, nodes, list(params) + ["label_encoder"], checkpoint),
            encoding="utf-8",
        )
        wise_card = "" if wise_alpha is None else _interpolate(build, tree, base_state, params, wise_alpha)
        _verify_export(build, training_yaml)
        if evaluate is not None:
            results = _results(evaluate(build), stage_folder)
        (build / "README.md").write_text(
            model_card(tree, model_name, datasets, results, checkpoint.name, progress, _base_provenance(tree))
            + wise_card,
            encoding="utf-8",
        )
        _move_into_place(build, out_folder)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    logger.info("Exported %s (%s) to %s", stage_folder, checkpoint.name, out_folder)
    return out_folder


def _interpolate(build, tree, base_state, params, wise_alpha):
    """Writes the WiSE-FT embedding weights into the export being built; returns the model card's section."""
    adapted_state = torch.load(params["embedding_model"], map_location="cpu")
    errors = None
    try:
        if wise_alpha == "auto":
            encoder = EncoderClassifier.from_hparams(source=str(build), savedir=str(build), run_opts={"device": "cpu"})
            errors = dev_retrieval_errors(tree, encoder, base_state, adapted_state)
            wise_alpha = choose_alpha(errors)
            logger.info("WiSE-FT: dev retrieval error by alpha %s: alpha %g", errors, wise_alpha)
        torch.save(interpolate_weights(base_state, adapted_state, wise_alpha), build / "embedding_model.ckpt")
    except (WiseError, AnchorStoreError, ValueError) as err:
        raise ExportError(str(err)) from err
    return card_section(tree, wise_alpha, errors)


def _check_destination(stage_folder, out_folder, overwrite):
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
        and not is_export(out_folder)
    ):
        raise ExportError(
            f"{out_folder} exists and is not a model export "
            "(no hyperparams.yaml + embedding_model.ckpt); refusing to replace it"
        )
    added = sorted(
        entry.name
        for entry in (out_folder.iterdir() if out_folder.is_dir() else ())
        if entry.name not in EXPORT_FILES and not entry.name.startswith(".")
    )
    if added and not overwrite:
        raise ExportError(
            f"{out_folder} is an earlier export that also holds {', '.join(added[:5])}"
            f"{' ...' if len(added) > 5 else ''}, which export did not write: move them away, "
            "choose another output folder, or pass --overwrite to replace the folder with them"
        )


def is_export(folder):
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
    nodes : dict
        ``{key: node}`` of :data:`MODEL_KEYS`, tags intact.
    """
    try:
        with open(training_yaml, encoding="utf-8") as fin:
            tree = ruamel.yaml.YAML().load(resolve_references(fin).getvalue())
        nodes = model_nodes(training_yaml, MODEL_KEYS)
    except ConfigError as err:
        raise ExportError(str(err)) from err
    except Exception as err:
        raise ExportError(f"cannot parse {training_yaml}: {one_line(err)}") from err
    return tree, nodes


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
    chosen = best_checkpoint(save_folder) or Checkpointer(save_folder).find_checkpoint(ckpt_predicate=end_of_epoch)
    if chosen is None:
        raise ExportError(f"no end-of-epoch checkpoint (CKPT+*) in {save_folder}")
    return pathlib.Path(chosen.path)


def training_progress(checkpoint, tree):
    """How far the stage's training went at ``checkpoint`` (its latest one: where training stands).

    The epoch comes from the checkpoint's meta (``epoch``), else from its epoch
    counter file; a mid-epoch checkpoint counts the epochs completed before it.

    Returns
    -------
    dict
        ``epochs`` (trained), ``planned`` (``number_of_epochs``),
        ``stopped_early`` (meta ``stopped_early``) and ``finished``.
    """
    try:
        meta = yaml.safe_load((checkpoint / METAFNAME).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        meta = {}
    mid_epoch = INTRA_EPOCH_CKPT_FLAG in meta
    epochs = meta.get("epoch")
    if epochs is None:
        epochs = _counter_epoch(checkpoint / "counter.ckpt")
        epochs = epochs - 1 if mid_epoch and epochs else epochs  # the counter holds the epoch in progress
    planned = int(find_hparam(tree, "number_of_epochs") or 0)
    stopped_early = bool(meta.get("stopped_early")) and not mid_epoch
    finished = not mid_epoch and (stopped_early or epochs >= planned)
    return {"epochs": epochs, "planned": planned, "stopped_early": stopped_early, "finished": finished}


def _counter_epoch(path):
    """The epoch an epoch counter file holds (a number, or the stopper's ``current_epoch``); 0 if none."""
    try:
        state = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return 0
    if isinstance(state, dict):
        state = state.get("current_epoch")
    return int(state) if isinstance(state, int) else 0


def _base_provenance(tree):
    """What a stage 2's anchors record of its base model ({} when not a stage 2 or unreadable)."""
    anchors = tree.get("anchors")
    if tree.get("stage") != "stage2" or not anchors:
        return {}
    try:
        return dict(AnchorStore.from_file(pathlib.Path(str(anchors))).provenance)
    except AnchorStoreError:
        return {}


def _checkpoint_params(checkpoint):
    """Maps each inference loadable to its parameter file in ``checkpoint`` (refusing one that is not tensors)."""
    params = {}
    for loadable, names in CHECKPOINT_FILES.items():
        found = [checkpoint / n for n in names if (checkpoint / n).is_file()]
        if found:
            if not is_tensor_file(found[0]):
                raise ExportError(invalid_file_message(found[0]))
            params[loadable] = found[0]
        elif loadable in REQUIRED_LOADABLES:
            raise ExportError(f"{checkpoint} has no {' or '.join(names)}")
    return params


def _results(results, stage_folder):
    """The results for the model card (given, or ``results.json`` / ``eval/results.json`` of the stage), or None."""
    if results is None:
        candidates = [stage_folder / "results.json", stage_folder / "eval" / "results.json"]
        results = next((path for path in candidates if path.is_file()), None)
        if results is None:
            return None
    try:
        return load_results(results)
    except ResultsError as err:
        raise ExportError(str(err)) from err


def redact_paths(yaml_text, tree):
    """The training YAML text without this machine's absolute paths, for publishing.

    An absolute path under the absolute value of a :data:`PATH_ROOTS` key becomes
    ``<key>/<relative part>`` (e.g. ``<output_base>/default/1986/stage2/save``);
    any other absolute path becomes ``<redacted>/<its last component>``.
    A path is replaced whole, whatever characters it holds (spaces, non-ASCII,
    and commas in a value of the YAML); relative paths are kept as they are.

    Example
    -------
    >>> print(redact_paths("data_folder: /home/me/corpus\\nwav: /home/me/corpus/a.wav\\n"
    ...                    "x: [/home/John Smith/ñandú café/rir.csv, b]  # /home/John Smith/stage2.yaml",
    ...                    {"data_folder": "/home/me/corpus"}))
    data_folder: <data_folder>
    wav: <data_folder>/a.wav
    x: [<redacted>/rir.csv, b]  # <redacted>/stage2.yaml
    """
    roots = sorted(
        ((str(tree.get(key)).rstrip("/"), key) for key in PATH_ROOTS if str(tree.get(key, "")).startswith("/")),
        key=lambda root: -len(root[0]),
    )

    def replace(match):
        path = match.group(0)
        for root, key in roots:
            if path == root or path.startswith(root + "/"):
                return f"<{key}>" + path[len(root):]
        return "<redacted>/" + (path.rstrip("/").rsplit("/", 1)[-1] or "")

    values = sorted({value for value in _strings(tree) if value.startswith("/")}, key=len, reverse=True)
    if values:  # the YAML's own path values first, whole (a comma in one would end a generic match)
        known = re.compile(PATH_START + "(?:" + "|".join(map(re.escape, values)) + ")" + PATH_END, re.M)
        yaml_text = known.sub(replace, yaml_text)
    return ABSOLUTE_PATH.sub(replace, yaml_text)


def _strings(node):
    """Every string value in a parsed YAML tree."""
    if isinstance(node, str):
        yield str(node)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value)


def inference_yaml(tree, nodes, loadables, checkpoint):
    """The inference hyperparams.yaml: :data:`INFERENCE_YAML` with the model nodes, sample rate and loadables filled.

    Arguments
    ---------
    tree : dict
        The resolved training YAML (``sample_rate``, and the backbone for the header).
    nodes : dict
        ``{key: node}`` of :data:`MODEL_KEYS` (ruamel nodes, tags intact).
    loadables : list of str
        The Pretrainer loadables the export has files for.
    checkpoint : pathlib.Path
        The exported checkpoint (named in the header).
    """
    yaml = ruamel.yaml.YAML()
    inference = yaml.load(INFERENCE_YAML.read_text(encoding="utf-8"))
    inference["sample_rate"] = int(tree.get("sample_rate", 16000))
    for key, node in nodes.items():
        inference[key] = node
    pretrained = inference["pretrainer"]["loadables"]
    for name in [name for name in pretrained if name not in loadables]:
        del pretrained[name]
    inference.yaml_set_start_comment(
        f"Inference hyper-parameters exported by anchor_reg.export\n"
        f"Backbone: {backbone_name(tree)}; checkpoint: {checkpoint.name}"
    )
    stream = io.StringIO()
    yaml.dump(inference, stream)
    return stream.getvalue()


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
                f"{training_yaml}: {one_line(err)}"
            ) from err
    labels = CategoricalEncoder()
    try:
        labels.load(folder / "label_encoder.ckpt")
    except (ValueError, SyntaxError) as err:
        raise ExportError(f"label encoder file is not valid: {one_line(err)}") from err
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
        raise ExportError(f"exported model does not load: {one_line(err)}") from err


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


def _parse_args(argv):
    """Command-line arguments of ``python -m anchor_reg.export``."""
    parser = argparse.ArgumentParser(
        prog="python -m anchor_reg.export",
        description="Export a trained stage to SpeechBrain's inference format "
        "and optionally push it to the Hugging Face hub.",
    )
    parser.add_argument("stage_folder", help="trained stage folder")
    parser.add_argument("out_folder", help="export folder (an earlier export there is replaced)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier export even if it holds files export did not write",
    )
    parser.add_argument(
        "--wise_alpha", "--wise-alpha",
        help="WiSE-FT: export alpha*base + (1-alpha)*adapted embedding weights (alpha in [0, 1]), or auto: "
        "alpha in 0, 0.25, 0.5, 0.75 with the lowest dev noisy->anchor retrieval error (stage 2 only)",
    )
    parser.add_argument("--checkpoint", help="CKPT+... folder (default: latest)")
    parser.add_argument(
        "--allow_unfinished", action="store_true",
        help="export a stage whose training did not finish (the model card says so)",
    )
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
    if args.wise_alpha is not None:
        try:
            args.wise_alpha = parse_alpha(args.wise_alpha)
        except WiseError as err:
            parser.error(str(err))
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
            overwrite=args.overwrite,
            wise_alpha=args.wise_alpha,
            allow_unfinished=args.allow_unfinished,
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
    except (ExportError, HubError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
