"""The one forward path from waveforms to speaker embeddings (training, anchors, loaded base models)."""


def embed(modules, wavs, lens):
    """(B, T) waveforms, (B,) relative lengths -> (B, 1, D): Fbank -> InputNormalization -> embedding model."""
    feats = modules["compute_features"](wavs)
    feats = modules["mean_var_norm"](feats, lens)
    return modules["embedding_model"](feats, lens)
