"""Reflection-padded training batches: the same padding in training, extraction and evaluation."""
import pytest
import torch

from anchor_reg.data.batching import collate_rows, pad_by_reflection
from anchor_reg.errors import AudioError


def test_pad_by_reflection_mirrors_as_often_as_needed():
    padded = pad_by_reflection([torch.arange(7.0), torch.tensor([1.0, 2.0]), torch.tensor([5.0])])
    assert padded.tolist() == [
        [0, 1, 2, 3, 4, 5, 6],
        [1, 2, 2, 1, 1, 2, 2],
        [5, 5, 5, 5, 5, 5, 5],
    ]
    with pytest.raises(ValueError, match="empty"):
        pad_by_reflection([torch.ones(3), torch.ones(0)])


def rows(*lengths):
    return [
        {"id": f"u{k}", "sig": torch.arange(1.0, n + 1), "spk_id_encoded": torch.tensor([k])}
        for k, n in enumerate(lengths)
    ]


def test_collate_rows_pads_signals_by_reflection_with_relative_lengths():
    batch = collate_rows(rows(4, 2))
    wavs, lens = batch.sig
    assert wavs.tolist() == [[1, 2, 3, 4], [1, 2, 2, 1]]
    assert lens.tolist() == [1.0, 0.5]
    labels, _ = batch.spk_id_encoded
    assert labels.tolist() == [[0], [1]]
    assert batch.id == ["u0", "u1"]


def test_collate_rows_skips_bad_rows_only_when_asked():
    examples = rows(3, 3)
    examples[1]["sig"] = None
    batch = collate_rows(examples, skip_bad=True)
    assert batch.id == ["u0"]
    examples[0]["sig"] = None
    with pytest.raises(AudioError, match="every file of a batch is bad"):
        collate_rows(examples, skip_bad=True)


def test_random_crops_are_windows_inside_each_rows_valid_part():
    from anchor_reg.data.batching import random_crops

    total, crop = 50, 20
    wavs = torch.arange(float(total)).expand(3, total) + 100 * torch.arange(3.0)[:, None]
    lens = torch.tensor([1.0, 0.6, 0.3])  # 50, 30 and 15 valid samples
    torch.manual_seed(0)
    starts = {0: set(), 1: set()}
    for _ in range(200):
        crops, crop_lens = random_crops(wavs, lens, crop)
        assert crops.shape == (3, crop) and crop_lens.tolist() == [1.0, 1.0, 0.75]
        for row in (0, 1):
            start = int(crops[row, 0]) - 100 * row
            assert crops[row].tolist() == (wavs[row, start:start + crop]).tolist()  # contiguous window
            assert 0 <= start <= int(lens[row] * total) - crop  # inside the valid samples
            starts[row].add(start)
        assert crops[2].tolist() == wavs[2, :crop].tolist()  # a row shorter than the window stays whole
    assert starts[0] == set(range(0, 31)) and starts[1] == set(range(0, 11))  # every start is drawn
    assert random_crops(wavs, lens, total)[0] is wavs  # a window as long as the batch: unchanged
