"""The model card (``README.md``) of an export: hub metadata (``ModelCardData``, with a ``model-index`` of EER
and minDCF per condition), training, results, usage."""
import pathlib

from huggingface_hub import EvalResult, ModelCardData

from anchor_reg.results import markdown_table

# Training YAML keys reported in the model card, with their descriptions.
CARD_HPARAMS = {
    "base_model": "base model (stage 2 starts from it)", "anchor_objective": "anchor objective",
    "anchor_weight": "anchor loss weight (lambda)", "anchor_distance": "anchor distance", "anchor_type": "anchor type",
    "classifier_head": "classifier head", "aam_margin": "AAM margin", "snr_low": "lowest training SNR (dB)",
    "snr_high": "highest training SNR (dB)", "number_of_epochs": "epochs planned", "lr": "learning rate",
    "batch_size": "batch size", "n_mels": "filter banks", "channels": "channels", "emb_dim": "embedding size",
}


def dataset_names(datasets, tree):
    """Training data set names: the argument, else what the YAML's ``dataset`` trained on (folder names, no path)."""
    if datasets:
        return [datasets] if isinstance(datasets, str) else [str(d) for d in datasets]
    kind = str(tree.get("dataset") or "synthetic")
    if kind == "folder":
        folders = tree.get("data_folders") or [tree.get("data_folder")]
        return [pathlib.PurePath(str(folder).rstrip("/")).name for folder in folders if folder]
    return [kind]


def base_model_name(base_model, provenance=None):
    """A stage 2's base: a hub ID (with the revision its anchors' ``provenance`` records), a local folder's
    name (no machine path), or stage 1 (with its checkpoint)."""
    provenance = provenance or {}
    if base_model is None:
        checkpoint = provenance.get("base_model")
        return "this recipe's stage 1 (hparams/stage1.yaml)" + (
            f", checkpoint {pathlib.PurePath(str(checkpoint)).name}" if checkpoint else "")
    text = str(base_model)
    if pathlib.PurePath(text).is_absolute() or text.startswith(".") or text.count("/") != 1:
        return f"a local model folder, {pathlib.PurePath(text).name}"
    revision = provenance.get("base_revision")
    return f"{text} (revision {revision})" if revision else text


def backbone_name(tree):
    """Class name of the embedding model, e.g. ``ECAPA_TDNN``."""
    tag = getattr(getattr(tree["embedding_model"], "tag", None), "value", None)
    return tag.rsplit(".", 1)[-1] if tag else "unknown"


def find_hparam(tree, key):
    """Value of ``key``: top level first, else its first nested occurrence (None if absent)."""
    if key in tree:
        return tree[key]
    for value in tree.values():
        found = find_hparam(value, key) if isinstance(value, dict) else None
        if found is not None:
            return found
    return None


def training_state(progress):
    """One sentence on :func:`anchor_reg.export.training_progress`'s ``progress``."""
    epochs, planned = progress["epochs"], progress["planned"]
    if progress["stopped_early"]:
        return (f"Training finished: early stopping (no better dev ErrorRate) ended it after {epochs} of "
                f"{planned} planned epochs.")
    if progress["finished"]:
        return f"Training finished: {epochs} of {planned} planned epochs were trained."
    return (f"**Unfinished training**: {epochs} of {planned} planned epochs were trained "
            "(exported with `--allow_unfinished`).")


def model_card(tree, model_name, datasets, results, checkpoint_name, progress, base_provenance=None):
    """README.md of an export from its resolved training YAML ``tree`` (``results``: load_results' dict or None)."""
    backbone_tag = backbone_name(tree).replace("_", "-")
    repo_id = model_name if "/" in model_name else f"<hf-user>/{model_name}"
    metadata = ModelCardData(
        language="en", license="apache-2.0", library_name="speechbrain",
        tags=["speechbrain", "speaker-verification", "speaker-recognition", "embeddings", backbone_tag, "pytorch",
              "noise-robust"],
        datasets=datasets, metrics=["EER", "minDCF"], model_name=model_name if results else None,
        eval_results=_eval_results(results, datasets[0]) if results else None,
    )
    found = {key: find_hparam(tree, key) for key in CARD_HPARAMS}
    if tree.get("stage") == "stage2":
        found["base_model"] = base_model_name(found["base_model"], base_provenance)
    hparams = {key: value for key, value in found.items() if value is not None and not isinstance(value, dict)}
    emb_dim = hparams.get("emb_dim") or find_hparam(tree["embedding_model"], "lin_neurons")
    sections = [
        f"---\n{metadata.to_yaml()}\n---\n",
        f"# {model_name}: noise-robust speaker embeddings ({backbone_tag})\n",
        f"This is a [SpeechBrain](https://speechbrain.github.io) speaker-embedding model ({backbone_tag}"
        + (f", {emb_dim}-dimensional embeddings" if emb_dim else "")
        + ") trained with the anchor-based stage-wise strategy of [arXiv:2510.18530](https://arxiv.org/abs/2510.18530) "
        "(recipe: anchor-reg) for speaker verification in noise.\n",
        _training_section(hparams, datasets, checkpoint_name, progress),
    ]
    if results:
        sections.append(_results_section(results))
    sections += [_usage_section(repo_id, emb_dim, int(tree.get("sample_rate", 16000))), CITATION]
    return "\n".join(sections)


def _training_section(hparams, datasets, checkpoint_name, progress):
    """Markdown: how the model was trained and its key hyper-parameters."""
    lines = [
        "## Training\n",
        "1. **Stage 1** trains a base speaker classifier to set discriminative speaker boundaries.",
        "2. **Anchors**: the frozen stage-1 model embeds the training utterances once; these embeddings are "
        "fixed anchors.",
        "3. **Stage 2** fine-tunes a copy of the base model on noisy inputs, regularised by an anchor-distance "
        "loss that keeps each embedding close to its fixed anchor.\n",
    ]
    if not any(key.startswith("anchor_") for key in hparams):
        lines.append("The training configuration has no `anchor_*` keys: this model is not anchor-regularised "
                     "(e.g. a stage-1 or baseline model).\n")
    if "base_model" in hparams:
        lines.append(f"Stage 2 started from: {hparams['base_model']}.\n")
    lines.append(training_state(progress) + "\n")
    lines.append(f"Training data: {', '.join(datasets)}. Exported from checkpoint `{checkpoint_name}`; the full "
                 "training configuration is in `training_hparams.yaml`.\n")
    if hparams:
        rows = [[CARD_HPARAMS[key], f"`{key}`", "[" + ", ".join(map(str, value)) + "]"
                 if isinstance(value, (list, tuple)) else value] for key, value in hparams.items()]
        lines += [markdown_table(["hyper-parameter", "key", "value"], rows), ""]
    return "\n".join(lines)


def _results_section(results):
    """Markdown table of EER (%), minDCF and the other scalar entries per condition."""
    conditions = {condition: {key: value for key, value in row.items()
                              if value is None or isinstance(value, (str, int, float))}
                  for condition, row in results["conditions"].items()}
    names = list(dict.fromkeys(name for row in conditions.values() for name in row))
    rows = [[condition, *(_cell(row.get(name), name) for name in names)] for condition, row in conditions.items()]
    lines = ["## Results\n", f"System: {results.get('system', 'this model')}.\n",
             markdown_table(["condition", *(f"{n} (%)" if n == "EER" else n for n in names)], rows)]
    if results.get("min_dcf_definition"):
        lines.append(f"\n{results['min_dcf_definition']}")
    return "\n".join(lines + [""])


def _cell(value, name):
    """One results cell: EER with 2 decimals, other floats with 4 significant digits, - when missing."""
    if isinstance(value, float):
        return f"{value:.2f}" if name == "EER" else f"{value:.4g}"
    return "-" if value is None else str(value)


def _eval_results(results, dataset):
    """Hub ``model-index`` entries: EER and minDCF for each condition."""
    dataset = results.get("dataset", dataset)
    return [
        EvalResult(task_type="speaker-verification", task_name="Speaker Verification", dataset_type=dataset,
                   dataset_name=f"{dataset} ({condition})", dataset_config=condition, metric_type=metric.lower(),
                   metric_name="EER (%)" if metric == "EER" else metric, metric_value=float(metrics[metric]))
        for condition, metrics in results["conditions"].items()
        for metric in ("EER", "minDCF")
        if isinstance(metrics.get(metric), (int, float))
    ]


def _usage_section(repo_id, emb_dim, sample_rate):
    """Markdown: how to load the model and verify two files."""
    savedir = f"pretrained_models/{repo_id.split('/')[-1]}"
    return f"""## Usage

```python
from speechbrain.inference.speaker import EncoderClassifier, SpeakerRecognition

encoder = EncoderClassifier.from_hparams(source="{repo_id}", savedir="{savedir}")
signal = encoder.load_audio("speech.wav")  # resampled to {sample_rate} Hz mono
embedding = encoder.encode_batch(signal.unsqueeze(0))  # {emb_dim or "emb_dim"} values

verification = SpeakerRecognition.from_hparams(source="{repo_id}", savedir="{savedir}")
score, same_speaker = verification.verify_files("enrol.wav", "test.wav")
```

`score` is the cosine similarity of the two embeddings. `verify_files` decides with SpeechBrain's default
threshold (0.25), which is not calibrated for this model: choose a threshold on your own trials and call
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
  author={Mirco Ravanelli and Titouan Parcollet and Peter Plantinga and Aku Rouhe and Samuele Cornell and
    Loren Lugosch and Cem Subakan and Nauman Dawalatabad and Abdelwahab Heba and Jianyuan Zhong and
    Ju-Chieh Chou and Sung-Lin Yeh and Szu-Wei Fu and Chien-Feng Liao and Elena Rastorgueva and
    François Grondin and William Aris and Hwidong Na and Yan Gao and Renato De Mori and Yoshua Bengio},
  year={2021},
  eprint={2106.04624},
  archivePrefix={arXiv},
  primaryClass={eess.AS}
}
```
"""
