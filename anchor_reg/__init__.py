"""anchor_reg: stage-wise fixed-anchor training for noise-robust speaker verification."""
