"""Audio checks: every kind of bad file gives a clear error naming it."""

import numpy as np
import pytest
import soundfile as sf
import torch

from anchor_reg.data.audio import (
    AudioError,
    inspect_audio,
    read_audio_checked,
    validate_audio_files,
    write_audio_atomic,
)

EXPECTED_PROBLEM = {
    "missing": "file not found",
    "empty": "empty file (0 bytes)",
    "no_frames": "no audio samples (0 frames)",
    "corrupt": "unreadable audio",
    "truncated": "truncated",
    "nan": "NaN or Inf",
    "sample_rate": "sample rate 8000 Hz, expected 16000 Hz",
    "stereo": "2 channels, expected mono",
}


@pytest.fixture
def good_wav(tmp_path):
    """A 1.5 s mono 16 kHz wav whose samples are their index / 1e5."""
    path = tmp_path / "good.wav"
    sf.write(
        path, np.arange(24000, dtype=np.float32) / 1e5, 16000, subtype="FLOAT"
    )
    return path


def test_inspect_good_file(good_wav):
    assert inspect_audio(good_wav) == 1.5


@pytest.mark.parametrize("kind", sorted(EXPECTED_PROBLEM))
def test_inspect_names_file_and_problem(bad_audio_files, kind):
    path = bad_audio_files[kind]
    with pytest.raises(AudioError) as error:
        inspect_audio(path)
    assert str(path) in str(error.value)
    assert EXPECTED_PROBLEM[kind] in str(error.value)
    assert list(error.value.problems) == [str(path)]


@pytest.mark.parametrize("kind", sorted(EXPECTED_PROBLEM))
def test_read_checked_names_file_and_problem(bad_audio_files, kind):
    path = bad_audio_files[kind]
    with pytest.raises(AudioError, match="^" + str(path)) as error:
        read_audio_checked(path)
    assert EXPECTED_PROBLEM[kind] in str(error.value)


def test_read_checked_segment(good_wav):
    samples = read_audio_checked(good_wav, start=1000, stop=1010)
    assert samples.dtype == torch.float32 and samples.shape == (10,)
    assert torch.allclose(samples, torch.arange(1000, 1010) / 1e5)
    assert read_audio_checked(good_wav).shape == (24000,)
    with pytest.raises(AudioError, match="outside the file's 24000 samples"):
        read_audio_checked(good_wav, start=23990, stop=24010)


def test_read_checked_nan_only_where_read(bad_audio_files):
    # The NaN sits at sample 100: reading past it is fine, reading it is not.
    assert read_audio_checked(
        bad_audio_files["nan"], start=200, stop=300
    ).shape == (100,)
    with pytest.raises(AudioError, match="NaN"):
        read_audio_checked(bad_audio_files["nan"], start=0, stop=300)


def test_validate_collects_every_problem(bad_audio_files, good_wav):
    paths = [good_wav, *bad_audio_files.values()]
    with pytest.raises(AudioError) as error:
        validate_audio_files(paths)
    message = str(error.value)
    assert f"{len(bad_audio_files)} bad audio file(s)" in message
    assert "skip_bad_files=True" in message
    for kind, path in bad_audio_files.items():
        assert f"{path}: {EXPECTED_PROBLEM[kind]}" in message
    assert str(good_wav) not in message
    assert set(error.value.problems) == {
        str(p) for p in bad_audio_files.values()
    }


def test_validate_skip_writes_report(
    bad_audio_files, good_wav, tmp_path, caplog
):
    report = tmp_path / "out" / "bad_files.txt"
    paths = [good_wav, *bad_audio_files.values()]
    durations = validate_audio_files(
        paths, 16000, skip_bad_files=True, report_path=report
    )
    assert durations == {str(good_wav): 1.5}
    lines = report.read_text().splitlines()
    assert len(lines) == len(bad_audio_files)
    reported = dict(line.split("\t") for line in lines)
    for kind, path in bad_audio_files.items():
        assert EXPECTED_PROBLEM[kind] in reported[str(path)]
    assert "Skipping 8 bad audio file(s)" in caplog.text
    # All good: the report is rewritten empty, not left stale.
    validate_audio_files(
        [good_wav], 16000, skip_bad_files=True, report_path=report
    )
    assert report.read_text() == ""


def test_validate_listing_is_truncated(tmp_path):
    paths = [tmp_path / f"gone{i:02d}.wav" for i in range(25)]
    with pytest.raises(AudioError) as error:
        validate_audio_files(paths)
    message = str(error.value)
    assert "25 bad audio file(s)" in message
    assert "gone19.wav: file not found" in message
    assert "gone20.wav" not in message
    assert "... and 5 more" in message
    assert len(error.value.problems) == 25


def test_validate_multichannel_allowed(bad_audio_files):
    stereo = bad_audio_files["stereo"]
    assert validate_audio_files([stereo], mono=False) == {str(stereo): 1.0}


def test_write_audio_atomic_clips(tmp_path):
    path = tmp_path / "sub" / "clip.wav"
    write_audio_atomic(
        path, np.array([0.5, 2.0, -3.0], dtype=np.float32), 16000
    )
    samples, rate = sf.read(path, dtype="float32")
    assert rate == 16000 and sf.info(path).subtype == "PCM_16"
    assert np.allclose(samples, [0.5, 1.0, -1.0], atol=1e-4)
    assert [p.name for p in path.parent.iterdir()] == ["clip.wav"]


def test_truncated_flac_is_caught(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 32000), 16000)
    path.write_bytes(path.read_bytes()[:20000])
    for check in (inspect_audio, read_audio_checked):
        with pytest.raises(
            AudioError, match="cut.flac: (unreadable audio|truncated)"
        ):
            check(path)
