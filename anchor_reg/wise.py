"""WiSE-FT at export: ``alpha * base + (1 - alpha) * adapted`` embedding weights of a stage 2 and its base
(``auto``: the alpha of :data:`AUTO_GRID` with the lowest dev criterion: noisy -> anchor retrieval error)."""
import pathlib

import torch

from anchor_reg.anchors import AnchorStore
from anchor_reg.data.cache import read_segment, read_utterances
from anchor_reg.data.dev_copies import NoisyDevCopies
from anchor_reg.errors import WiseError
from anchor_reg.forgetting import interpolate_weights
from anchor_reg.model_folder import folder_fingerprint, savedir_of
from anchor_reg.provenance import read_provenance
from anchor_reg.replay import broad_dev_ids
from anchor_reg.retrieval import own_rows_error, retrieval_error

AUTO_GRID = (0.0, 0.25, 0.5, 0.75)


def parse_alpha(text):
    """``auto`` or a number in [0, 1] (the command line's ``--wise_alpha``); WiseError otherwise."""
    if text == "auto":
        return text
    try:
        alpha = float(text)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise WiseError(f"--wise_alpha must be a number in [0, 1] or auto, got {text!r}")
    return alpha


def base_embedding_state(tree, checkpoint):
    """The embedding ``state_dict`` of the base in stage 2's savedir; WiseError if it lacks the recorded fingerprint."""
    if tree.get("stage") != "stage2" or tree.get("base_model") is None:
        raise WiseError(f"--wise_alpha interpolates a stage 2 with its base; this stage is {tree.get('stage')}")
    folder = savedir_of(str(tree["base_model"]), pathlib.Path(str(tree["pretrained_folder"])))
    if not (folder / "embedding_model.ckpt").is_file():
        raise WiseError(f"--wise_alpha: the stage's base model is not in {folder} (train.py stage 2 puts it there)")
    fingerprint = folder_fingerprint(folder)
    recorded = read_provenance(pathlib.Path(checkpoint) / "provenance.ckpt").get("base_fingerprint")
    if recorded not in (None, fingerprint):
        raise WiseError(f"--wise_alpha: the base the stage was trained from (fingerprint {recorded[:12]}) is not "
                        f"the one in {folder} now ({fingerprint[:12]})")
    return torch.load(folder / "embedding_model.ckpt", map_location="cpu", weights_only=True)


@torch.no_grad()
def dev_retrieval_errors(tree, encoder, base_state, adapted_state, grid=AUTO_GRID):
    """``{alpha: the stage's dev retrieval error}`` of the interpolated weights loaded in turn into ``encoder`` (an
    EncoderClassifier): its dev rows' against ``dev_anchors.pt`` (with broad dev rows, the mean with theirs)."""
    folder, prep = pathlib.Path(str(tree["anchors"])).parent, pathlib.Path(str(tree["prep_folder"]))
    if not (folder / "dev_anchors.pt").is_file():
        raise WiseError(f"--wise_alpha=auto needs the dev rows' anchors {folder / 'dev_anchors.pt'} "
                        "(train the stage with dev_criterion: anchor_retrieval), or give a number")
    store, dev = AnchorStore.from_file(folder / "dev_anchors.pt"), read_utterances(prep / "dev.csv")
    parts = [(dev, list(dev), lambda queries: retrieval_error(queries, store.rows(list(dev)), store.embeddings))]
    broad = broad_dev_ids(tree)
    if broad:
        replay_store = AnchorStore.from_file(folder / "replay_anchors.pt")
        parts.append((read_utterances(prep / "replay.csv"), broad, lambda q: own_rows_error(q, broad, replay_store)))
    copies = NoisyDevCopies.of_stage(tree)
    parts = [([copies(read_segment(rows[i], tree["sample_rate"]), i) for i in ids], err) for rows, ids, err in parts]
    errors = {}
    for alpha in grid:
        encoder.mods.embedding_model.load_state_dict(interpolate_weights(base_state, adapted_state, alpha))
        errors[alpha] = sum(error(torch.cat([encoder.encode_batch(wav.unsqueeze(0)).reshape(1, -1) for wav in wavs]))
                            for wavs, error in parts) / len(parts)
    return errors


def choose_alpha(errors):
    """The alpha of the lowest error; ties go to the larger alpha (closer to the base)."""
    return min(errors, key=lambda alpha: (errors[alpha], -alpha))


def card_section(tree, alpha, errors=None):
    """Model-card text that says the weights are interpolated (and how alpha was chosen)."""
    base = tree.get("base_model") or "its stage 1"
    if isinstance(base, str) and base.startswith("/"):
        base = "the stage's base model (base_model)"
    text = (f"\n## Weight-space interpolation (WiSE-FT)\n\nThe embedding model's weights are "
            f"{alpha:g} x base + {1 - alpha:g} x adapted, parameter by parameter, where base is {base} "
            "and adapted is the stage-2 checkpoint; the normaliser and the classifier are the adapted ones.\n")
    if errors:
        listed = ", ".join(f"{a:g}: {100 * e:.2f} %" for a, e in errors.items())
        rows = "the dev rows and of the held-out replay rows (mean)" if broad_dev_ids(tree) else "the dev rows"
        text += (f"\nalpha was chosen by the dev criterion (noisy -> anchor retrieval error of {rows}; "
                 f"ties to the larger alpha): {listed}.\n")
    return text
