"""A classifier head held at the base model's speaker centroids (``classifier_head: anchor_centroids``).

SpeechBrain's ECAPA ``Classifier`` scores ``cos(emb, W_s)`` for each speaker row
``W_s``. Setting ``W`` to the fixed anchors' normalised speaker centroids and
freezing it keeps the base model's boundaries still, so AAM-softmax can only
move the encoder: it learns to put noisy speech inside the clean speakers'
regions.
"""
import torch

from anchor_reg.errors import AnchorStoreError

HEADS = ("trainable", "anchor_centroids")


def centroid_weights(store, label_encoder):
    """(S, D) the store's centroids in the label encoder's class order.

    Arguments
    ---------
    store : anchor_reg.anchors.AnchorStore
        The fixed anchors.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        The classifier's speaker order (index -> label).
    """
    position = {speaker: k for k, speaker in enumerate(store.speakers)}
    labels = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    missing = [label for label in labels if label not in position]
    if missing:
        raise AnchorStoreError(
            f"{len(missing)} training speakers have no anchors (e.g. {missing[:3]}): "
            "re-extract the anchors (--reextract_anchors=True)"
        )
    return store.centroids[torch.tensor([position[label] for label in labels])]


@torch.no_grad()
def set_head_to_centroids(classifier, store, label_encoder):
    """Copies the centroids into ``classifier.weight`` (S, D)."""
    weights = centroid_weights(store, label_encoder)
    if tuple(classifier.weight.shape) != tuple(weights.shape):
        raise AnchorStoreError(
            f"classifier weight {tuple(classifier.weight.shape)} cannot hold the "
            f"anchors' centroids {tuple(weights.shape)}"
        )
    classifier.weight.copy_(weights.to(classifier.weight))
