"""Batches of rows padded by reflection (zeros' extreme log filterbank energies would leak into the last valid
frames), the same in training, anchor extraction and evaluation."""
import speechbrain as sb
import torch

from anchor_reg.errors import AudioError


def random_crops(wavs, lens, crop_samples):
    """A uniformly placed window of ``crop_samples`` in each row (shorter rows kept whole), drawn from torch's
    global generator: (B, T) waveforms and (B,) relative lengths -> (B, min(T, crop_samples)) and (B,)."""
    batch, total = wavs.shape
    if total <= crop_samples:
        return wavs, lens
    lengths = torch.round(lens.cpu() * total).long()
    kept = lengths.clamp(max=crop_samples)
    starts = (torch.rand(batch) * (lengths - kept + 1)).long().clamp(max=total - crop_samples)
    index = (starts[:, None] + torch.arange(crop_samples)[None, :]).to(wavs.device)
    return wavs.gather(1, index), (kept.float() / crop_samples).to(lens.device)


def pad_by_reflection(wavs):
    """Stacks non-empty (T_i,) waveforms into (B, max T_i), extending each by mirror images of itself
    (``[4, 5]`` -> ``[4, 5, 5, 4, ...]``)."""
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
    """``PaddedBatch`` padding: 1-D tensors (waveforms) by reflection, others (labels) stacked as they are;
    returns (B, T_max) and (B,) relative lengths."""
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.float)
    if tensors[0].dim() == 1 and lengths.max() > lengths.min():
        return pad_by_reflection(tensors), lengths / lengths.max()
    return torch.stack(tensors), torch.ones(len(tensors))


def collate_rows(examples, skip_bad=False):
    """A ``PaddedBatch`` of dataset rows padded by reflection; ``skip_bad`` drops rows whose ``sig`` is None
    (unreadable audio) and raises for an all-bad batch."""
    if skip_bad:
        examples = [ex for ex in examples if ex["sig"] is not None]
        if not examples:
            raise AudioError("every file of a batch is bad: see skipped_audio.txt in the output folder")
    return sb.dataio.batch.PaddedBatch(examples, padding_func=reflect_pad_right)
