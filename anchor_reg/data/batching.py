"""Batches of training rows, padded by reflection (the same padding everywhere).

A shorter row of a batch is extended by mirror images of itself rather than by
zeros: zeros have extreme log filterbank energies that ECAPA's convolutions carry
into the row's last valid frames. Training, anchor extraction and evaluation pad
the same way, so an anchor is the base model's embedding of exactly the clean
input that stage 2's forward sees.
"""
import speechbrain as sb
import torch

from anchor_reg.errors import AudioError


def random_crops(wavs, lens, crop_samples):
    """A random window of ``crop_samples`` samples inside every row (rows no longer are kept whole).

    The training crops of ``crop_dur``: each row's window starts uniformly in
    ``[0, length - crop_samples]`` (torch's global generator, so seeded runs repeat).

    Arguments
    ---------
    wavs : torch.Tensor
        (B, T) padded waveforms.
    lens : torch.Tensor
        (B,) relative lengths.
    crop_samples : int
        Window length.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        (B, min(T, crop_samples)) windows and their (B,) relative lengths.

    Example
    -------
    >>> crops, crop_lens = random_crops(torch.arange(10.0).expand(2, 10), torch.tensor([1.0, 0.3]), 4)
    >>> crops.shape, crop_lens.tolist(), crops[1].tolist()
    (torch.Size([2, 4]), [1.0, 0.75], [0.0, 1.0, 2.0, 3.0])
    """
    batch, total = wavs.shape
    if total <= crop_samples:
        return wavs, lens
    lengths = torch.round(lens.cpu() * total).long()
    kept = lengths.clamp(max=crop_samples)
    starts = (torch.rand(batch) * (lengths - kept + 1)).long().clamp(max=total - crop_samples)
    index = (starts[:, None] + torch.arange(crop_samples)[None, :]).to(wavs.device)
    return wavs.gather(1, index), (kept.float() / crop_samples).to(lens.device)


def pad_by_reflection(wavs):
    """Stacks waveforms, extending each shorter one by mirror images of itself.

    Arguments
    ---------
    wavs : list of torch.Tensor
        (T_i,) waveforms, none empty.

    Returns
    -------
    torch.Tensor
        (B, max T_i).

    Example
    -------
    >>> pad_by_reflection([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])])
    tensor([[1., 2., 3.],
            [4., 5., 5.]])
    """
    longest = max(wav.numel() for wav in wavs)
    rows = []
    for wav in wavs:
        if wav.numel() == 0:
            raise ValueError("pad_by_reflection: empty waveform")
        while wav.numel() < longest:
            wav = torch.cat([wav, wav.flip(0)])
        rows.append(wav[:longest])
    return torch.stack(rows)


def reflect_pad_right(tensors):
    """``PaddedBatch`` padding function: (B, T_max) by reflection and (B,) relative lengths.

    1-D tensors (waveforms) are padded by reflection; others (labels) must
    already share a shape.
    """
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.float)
    if tensors[0].dim() == 1 and lengths.max() > lengths.min():
        return pad_by_reflection(tensors), lengths / lengths.max()
    return torch.stack(tensors), torch.ones(len(tensors))


def collate_rows(examples, skip_bad=False):
    """A ``PaddedBatch`` of dataset rows padded by reflection.

    Arguments
    ---------
    examples : list of dict
        Dataset items (``sig`` is None for audio that could not be read).
    skip_bad : bool
        Drop rows whose ``sig`` is None (``skip_bad_files``); an all-bad batch raises.
    """
    if skip_bad:
        examples = [ex for ex in examples if ex["sig"] is not None]
        if not examples:
            raise AudioError("every file of a batch is bad: see skipped_audio.txt in the output folder")
    return sb.dataio.batch.PaddedBatch(examples, padding_func=reflect_pad_right)
