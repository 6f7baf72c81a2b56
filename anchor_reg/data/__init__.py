"""Data preparation: folders of speakers, VoxCeleb, noise/RIR CSVs and the synthetic default corpus."""
