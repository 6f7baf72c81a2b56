"""A classifier head held at the base model's speaker centroids (``classifier_head: anchor_centroids``):
AAM can then only move the encoder, putting noisy speech inside the clean speakers' regions."""
import torch

from anchor_reg.errors import AnchorStoreError

HEADS = ("trainable", "anchor_centroids")


@torch.no_grad()
def set_head_to_centroids(classifier, store, label_encoder):
    """Copies the store's (S, D) centroids into ``classifier.weight`` in ``label_encoder``'s class order."""
    position = {speaker: k for k, speaker in enumerate(store.speakers)}
    labels = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    missing = [label for label in labels if label not in position]
    if missing:
        raise AnchorStoreError(f"{len(missing)} training speakers have no anchors (e.g. {missing[:3]}): "
                               "re-extract the anchors (--reextract_anchors=True)")
    weights = store.centroids[torch.tensor([position[label] for label in labels])]
    if tuple(classifier.weight.shape) != tuple(weights.shape):
        raise AnchorStoreError(f"classifier weight {tuple(classifier.weight.shape)} cannot hold the "
                               f"anchors' centroids {tuple(weights.shape)}")
    classifier.weight.copy_(weights.to(classifier.weight))
