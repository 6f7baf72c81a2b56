"""A SpeechBrain inference folder (``EncoderClassifier``) from a trained stage, and the command line that
publishes it: hparams/inference.yaml filled with the stage's model nodes, its ``*.ckpt``, the model card and
the training YAML with machine paths redacted."""
import argparse
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
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.speaker import EncoderClassifier
from speechbrain.utils.checkpoints import METAFNAME, Checkpointer, torch_patched_state_dict_load

from anchor_reg.anchors import AnchorStore
from anchor_reg.checkpointer import best_checkpoint, end_of_epoch, invalid_file_message, is_tensor_file
from anchor_reg.config import dump, model_nodes
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
CHECKPOINT_FILES = {"embedding_model": ("embedding_model.ckpt",), "classifier": ("classifier.ckpt",),
                    "mean_var_norm": ("normalizer.ckpt", "mean_var_norm.ckpt")}
REQUIRED_LOADABLES = ("embedding_model", "classifier")
# Every file an export writes (the optional loadables included).
EXPORT_FILES = frozenset({f"{loadable}.ckpt" for loadable in CHECKPOINT_FILES}
                         | {"label_encoder.ckpt", "hyperparams.yaml", "training_hparams.yaml", "README.md"})
# Training-YAML keys whose absolute value is published as ``<key>/...`` (longest match first).
PATH_ROOTS = ("output_base", "data_folder")
# Where a path may start (after a space, "[", ",", ":" or a quote) and end (the end of a line or YAML
# value: before ",", "]", "}", a quote or " #"); inside it, any character but a quote or a line break.
PATH_START = r"(?<=[\s\[,:'\"])"
PATH_END = r"(?=[ \t]*(?:$|[,\]}'\"]|[ \t]#))"
ABSOLUTE_PATH = re.compile(PATH_START + r"/(?=[^\s/,\]}'\"#])[^\n'\"]*?" + PATH_END, re.M)

INFERENCE_YAML = pathlib.Path(__file__).resolve().parents[1] / "hparams" / "inference.yaml"


def load_encoder(path, device="cpu"):
    """The ``EncoderClassifier`` of an inference folder; FileNotFoundError names what it lacks."""
    path = pathlib.Path(path)
    if not (path / "hyperparams.yaml").is_file():
        raise FileNotFoundError(f"{path} has no hyperparams.yaml: not a model folder.")
    if not (path / "embedding_model.ckpt").is_file():
        kind = "a training stage folder: export it first" if (path / "save").is_dir() else "not an inference folder"
        raise FileNotFoundError(f"{path} has no embedding_model.ckpt ({kind}).")
    return EncoderClassifier.from_hparams(source=str(path), savedir=str(path), run_opts={"device": device})


def export_model(stage_folder, out_folder, *, checkpoint=None, results=None, model_name=None, datasets=None,
                 evaluate=None, overwrite=False, wise_alpha=None, allow_unfinished=False):
    """Writes the inference folder of a trained stage, built beside ``out_folder`` and loaded strictly first.

    ``evaluate(folder) -> results`` runs on the verified export before its card is written; ``wise_alpha``: a
    number in [0, 1] or ``"auto"``; ExportError for a refused overwrite or (without ``allow_unfinished``) an
    unfinished training."""
    stage_folder, out_folder = pathlib.Path(stage_folder).resolve(), pathlib.Path(out_folder).resolve()
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
            "--allow_unfinished to export it as it is (its model card then says so)")
    params = _checkpoint_params(checkpoint)
    label_file = stage_folder / "save" / "label_encoder.txt"
    if not label_file.is_file():
        raise ExportError(f"label encoder not found: {label_file}")
    results = _results(results, stage_folder)
    if wise_alpha is not None:
        try:
            base_state = base_embedding_state(tree, checkpoint)
        except (WiseError, ConfigError, AnchorStoreError) as err:
            raise ExportError(str(err)) from err
    datasets = dataset_names(datasets, tree)

    out_folder.parent.mkdir(parents=True, exist_ok=True)
    build = out_folder.with_name(f".{out_folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    build.mkdir()  # not mkdtemp: the export keeps the usual permissions
    try:
        for loadable, path in params.items():
            shutil.copyfile(path, build / f"{loadable}.ckpt")
        shutil.copyfile(label_file, build / "label_encoder.ckpt")
        (build / "training_hparams.yaml").write_text(
            redact_paths(training_yaml.read_text(encoding="utf-8"), tree), encoding="utf-8")
        (build / "hyperparams.yaml").write_text(
            inference_yaml(tree, nodes, list(params) + ["label_encoder"], checkpoint), encoding="utf-8")
        wise_card = "" if wise_alpha is None else _interpolate(build, tree, base_state, params, wise_alpha)
        _verify_export(build, training_yaml)
        if evaluate is not None:
            results = _results(evaluate(build), stage_folder)
        card = model_card(tree, model_name or out_folder.name, datasets, results, checkpoint.name, progress,
                          _base_provenance(tree))
        (build / "README.md").write_text(card + wise_card, encoding="utf-8")
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
            errors = dev_retrieval_errors(tree, load_encoder(build), base_state, adapted_state)
            wise_alpha = choose_alpha(errors)
            logger.info("WiSE-FT: dev retrieval error by alpha %s: alpha %g", errors, wise_alpha)
        torch.save(interpolate_weights(base_state, adapted_state, wise_alpha), build / "embedding_model.ckpt")
    except (WiseError, AnchorStoreError, ValueError) as err:
        raise ExportError(str(err)) from err
    return card_section(tree, wise_alpha, errors)


def _check_destination(stage_folder, out_folder, overwrite):
    """Refuses destinations whose replacement would destroy other data."""
    if not (stage_folder / "hyperparams.yaml").is_file():
        raise ExportError(f"not a trained stage folder (no hyperparams.yaml): {stage_folder}")
    if stage_folder == out_folder or stage_folder.is_relative_to(out_folder):
        raise ExportError(f"output folder {out_folder} contains the stage folder; choose another output folder")
    if out_folder.is_file():
        raise ExportError(f"output folder is a file: {out_folder}")
    entries = [entry.name for entry in out_folder.iterdir()] if out_folder.is_dir() else []
    if entries and not all((out_folder / name).is_file() for name in ("hyperparams.yaml", "embedding_model.ckpt")):
        raise ExportError(f"{out_folder} exists and is not a model export "
                          "(no hyperparams.yaml + embedding_model.ckpt); refusing to replace it")
    added = sorted(name for name in entries if name not in EXPORT_FILES and not name.startswith("."))
    if added and not overwrite:
        raise ExportError(
            f"{out_folder} is an earlier export that also holds {', '.join(added[:5])}"
            f"{' ...' if len(added) > 5 else ''}, which export did not write: move them away, "
            "choose another output folder, or pass --overwrite to replace the folder with them")


def _load_training_yaml(training_yaml):
    """The resolved training YAML (ruamel round-trip, nothing built) and its :data:`MODEL_KEYS` nodes."""
    try:
        nodes = model_nodes(training_yaml, MODEL_KEYS)  # the one to name a file that does not parse or lacks a key
    except ConfigError as err:
        raise ExportError(str(err)) from err
    with open(training_yaml, encoding="utf-8") as fin:
        return ruamel.yaml.YAML().load(resolve_references(fin).getvalue()), nodes


def _find_checkpoint(stage_folder, checkpoint):
    """The given checkpoint folder, else the best end-of-epoch one in ``save/`` (lowest dev ``ErrorRate``,
    the latest among equals and without one); mid-epoch checkpoints only serve to resume training."""
    if checkpoint is not None:
        if not pathlib.Path(checkpoint).is_dir():
            raise ExportError(f"checkpoint folder not found: {checkpoint}")
        return pathlib.Path(checkpoint)
    save_folder = stage_folder / "save"
    if not save_folder.is_dir():
        raise ExportError(f"no checkpoint folder: {save_folder}")
    chosen = best_checkpoint(save_folder) or Checkpointer(save_folder).find_checkpoint(ckpt_predicate=end_of_epoch)
    if chosen is None:
        raise ExportError(f"no end-of-epoch checkpoint (CKPT+*) in {save_folder}")
    return pathlib.Path(chosen.path)


def training_progress(checkpoint, tree):
    """How far training went at ``checkpoint``: ``epochs`` (from its meta, else its counter), ``planned``,
    ``stopped_early`` and ``finished`` (a mid-epoch checkpoint counts the epochs completed before it)."""
    meta = _read_yaml(checkpoint / METAFNAME) or {}
    mid_epoch = INTRA_EPOCH_CKPT_FLAG in meta
    epochs = meta.get("epoch")
    if epochs is None:
        counter = _read_yaml(checkpoint / "counter.ckpt")  # a number, or the stopper's current_epoch
        counter = counter.get("current_epoch") if isinstance(counter, dict) else counter
        epochs = int(counter) if isinstance(counter, int) else 0
        epochs = epochs - 1 if mid_epoch and epochs else epochs  # the counter holds the epoch in progress
    planned = int(find_hparam(tree, "number_of_epochs") or 0)
    stopped_early = bool(meta.get("stopped_early")) and not mid_epoch
    finished = not mid_epoch and (stopped_early or epochs >= planned)
    return {"epochs": epochs, "planned": planned, "stopped_early": stopped_early, "finished": finished}


def _read_yaml(path):
    """A small YAML file's content, None when it is missing or unreadable."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _base_provenance(tree):
    """What a stage 2's anchors record of its base model ({} when not a stage 2 or unreadable)."""
    if tree.get("stage") != "stage2" or not tree.get("anchors"):
        return {}
    try:
        return dict(AnchorStore.from_file(pathlib.Path(str(tree["anchors"]))).provenance)
    except AnchorStoreError:
        return {}


def _checkpoint_params(checkpoint):
    """Maps each inference loadable to its parameter file in ``checkpoint`` (refusing one that is not tensors)."""
    params = {}
    for loadable, names in CHECKPOINT_FILES.items():
        found = [checkpoint / n for n in names if (checkpoint / n).is_file()]
        if found and not is_tensor_file(found[0]):
            raise ExportError(invalid_file_message(found[0]))
        if found:
            params[loadable] = found[0]
        elif loadable in REQUIRED_LOADABLES:
            raise ExportError(f"{checkpoint} has no {' or '.join(names)}")
    return params


def _results(results, stage_folder):
    """The results for the model card (given, or ``results.json`` / ``eval/results.json`` of the stage), or None."""
    candidates = [stage_folder / "results.json", stage_folder / "eval" / "results.json"]
    results = next((path for path in candidates if path.is_file()), None) if results is None else results
    if results is None:
        return None
    try:
        return load_results(results)
    except ResultsError as err:
        raise ExportError(str(err)) from err


def redact_paths(yaml_text, tree):
    """The training YAML text with each absolute path replaced whole by ``<root key>/<rest>`` or ``<redacted>/<name>``.

    >>> print(redact_paths("data_folder: /home/me/corpus\\nwav: /home/me/corpus/a.wav\\n"
    ...                    "x: [/home/John Smith/ñandú café/rir.csv, b]  # /home/John Smith/stage2.yaml",
    ...                    {"data_folder": "/home/me/corpus"}))
    data_folder: <data_folder>
    wav: <data_folder>/a.wav
    x: [<redacted>/rir.csv, b]  # <redacted>/stage2.yaml
    """
    roots = sorted(((str(tree.get(key)).rstrip("/"), key) for key in PATH_ROOTS
                    if str(tree.get(key, "")).startswith("/")), key=lambda root: -len(root[0]))

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
    elif isinstance(node, (dict, list, tuple)):
        for value in node.values() if isinstance(node, dict) else node:
            yield from _strings(value)


def inference_yaml(tree, nodes, loadables, checkpoint):
    """:data:`INFERENCE_YAML` as a structure, filled with the model ``nodes``, the sample rate and ``loadables``."""
    inference = ruamel.yaml.YAML().load(INFERENCE_YAML.read_text(encoding="utf-8"))
    inference["sample_rate"] = int(tree.get("sample_rate", 16000))
    inference.update(nodes)
    pretrained = inference["pretrainer"]["loadables"]
    for name in [name for name in pretrained if name not in loadables]:
        del pretrained[name]
    inference.yaml_set_start_comment(f"Inference hyper-parameters exported by anchor_reg.export\n"
                                     f"Backbone: {backbone_name(tree)}; checkpoint: {checkpoint.name}")
    return dump(inference)


def _verify_export(folder, training_yaml):
    """Loads ``folder``'s parameters strictly, then the folder as a user would; ExportError otherwise."""
    with open(folder / "hyperparams.yaml", encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin)
    for name in REQUIRED_LOADABLES:
        try:
            hparams[name].load_state_dict(torch_patched_state_dict_load(folder / f"{name}.ckpt", "cpu"), strict=True)
        except RuntimeError as err:
            raise ExportError(
                f"checkpoint {name}.ckpt does not match `{name}` in {training_yaml}: {one_line(err)}") from err
    labels = CategoricalEncoder()
    try:
        labels.load(folder / "label_encoder.ckpt")
    except (ValueError, SyntaxError) as err:
        raise ExportError(f"label encoder file is not valid: {one_line(err)}") from err
    weight = getattr(hparams["classifier"], "weight", None)
    if isinstance(weight, torch.Tensor) and weight.shape[0] != len(labels):
        logger.warning("classifier has %d outputs but the label encoder has %d labels", weight.shape[0], len(labels))
    try:
        load_encoder(folder)
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


def main(argv=None):
    """Runs the command line; returns the exit code (2 for a usage error, 1 with one ``error:`` line)."""
    parser = argparse.ArgumentParser(prog="python -m anchor_reg.export", description="Export a trained stage to "
                                     "SpeechBrain's inference format and optionally push it to the Hugging Face hub.")
    parser.add_argument("stage_folder", help="trained stage folder")
    parser.add_argument("out_folder", help="export folder (an earlier export there is replaced)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export even if it holds files export did not write")
    parser.add_argument("--wise_alpha", "--wise-alpha",
                        help="WiSE-FT: export alpha*base + (1-alpha)*adapted embedding weights (alpha in [0, 1]), "
                        "or auto: alpha in 0, 0.25, 0.5, 0.75 with the lowest dev noisy->anchor retrieval error "
                        "(stage 2 only)")
    parser.add_argument("--checkpoint", help="CKPT+... folder (default: the best end-of-epoch one)")
    parser.add_argument("--allow_unfinished", action="store_true",
                        help="export a stage whose training did not finish (the model card says so)")
    parser.add_argument("--results", help="results.json for the model card")
    parser.add_argument("--datasets", nargs="+", help="training data set names")
    parser.add_argument("--model-name", help="name in the model card (default: repo id)")
    parser.add_argument("--push", action="store_true", help="upload to the hub")
    parser.add_argument("--repo-id", help="USER/NAME of the hub repository")
    parser.add_argument("--private", action="store_true", help="create a private repo")
    parser.add_argument("--exist-ok", action="store_true", help="push to an existing repository")
    parser.add_argument("--token", help="hub token (default: HF_TOKEN / cached login)")
    parser.add_argument("--dry-run", action="store_true", help="list the files to upload, push nothing")
    try:
        args = parser.parse_args(argv)
        if args.push and not args.dry_run and not args.repo_id:
            parser.error("--push needs --repo-id USER/NAME")
        try:
            args.wise_alpha = None if args.wise_alpha is None else parse_alpha(args.wise_alpha)
        except WiseError as err:
            parser.error(str(err))
    except SystemExit as exit_:
        return exit_.code
    try:
        out_folder = export_model(args.stage_folder, args.out_folder, checkpoint=args.checkpoint,
                                  results=args.results, model_name=args.model_name or args.repo_id,
                                  datasets=args.datasets, overwrite=args.overwrite, wise_alpha=args.wise_alpha,
                                  allow_unfinished=args.allow_unfinished)
        print(f"exported {out_folder}")
        if args.push or args.dry_run:
            files = push_to_hub(out_folder, args.repo_id, token=args.token, private=args.private,
                                exist_ok=args.exist_ok, dry_run=args.dry_run)
            print(f"{'would upload' if args.dry_run else 'uploaded'} to {args.repo_id or 'the hub'}:")
            for name in files:
                print(f"  {name}  {(out_folder / name).stat().st_size} bytes")
    except (ExportError, HubError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
