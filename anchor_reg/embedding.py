"""The one forward path from waveforms to speaker embeddings.

Training (:mod:`anchor_reg.brains`), anchor extraction and a loaded base model
(:mod:`anchor_reg.base`) all embed a batch with :func:`embed`.
"""


def embed(modules, wavs, lens):
    """The embedding of a batch: Fbank -> InputNormalization -> embedding model.

    Arguments
    ---------
    modules : mapping
        ``compute_features``, ``mean_var_norm``, ``embedding_model``.
    wavs : torch.Tensor
        (B, T) waveforms.
    lens : torch.Tensor
        (B,) relative lengths.

    Returns
    -------
    torch.Tensor
        (B, 1, D) embeddings.
    """
    feats = modules["compute_features"](wavs)
    feats = modules["mean_var_norm"](feats, lens)
    return modules["embedding_model"](feats, lens)
