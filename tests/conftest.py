"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get(
        "ANCHOR_REG_SHARED_DATA",
        Path(__file__).resolve().parents[2] / "shared" / "data",
    )
)


@pytest.fixture(scope="session")
def shared_data():
    """Path of the real shared data (../shared/data); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data not found at {SHARED_DATA} "
            "(set ANCHOR_REG_SHARED_DATA to its location)"
        )
    return SHARED_DATA


@pytest.fixture
def bad_audio_files(tmp_path):
    """``{kind: path}`` of one bad 16 kHz audio file per kind of problem."""
    import numpy as np
    import soundfile as sf

    folder = tmp_path / "bad"
    folder.mkdir()
    speech = 0.1 * np.sin(np.arange(16000, dtype=np.float32) / 5)
    with_nan = speech.copy()
    with_nan[100] = np.nan
    sf.write(folder / "nan.wav", with_nan, 16000, subtype="FLOAT")
    sf.write(folder / "sr8k.wav", speech, 8000)
    sf.write(folder / "stereo.wav", np.stack([speech, speech], 1), 16000)
    sf.write(folder / "good.wav", speech, 16000)
    sf.write(folder / "no_frames.wav", speech[:0], 16000)
    header_and_data = (folder / "good.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(header_and_data[:2000])
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00not a wave file" * 8)
    (folder / "empty.wav").write_bytes(b"")
    return {
        "missing": folder / "missing.wav",
        "empty": folder / "empty.wav",
        "no_frames": folder / "no_frames.wav",
        "corrupt": folder / "corrupt.wav",
        "truncated": folder / "truncated.wav",
        "nan": folder / "nan.wav",
        "sample_rate": folder / "sr8k.wav",
        "stereo": folder / "stereo.wav",
    }
