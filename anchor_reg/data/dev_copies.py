"""Noisy copies of the development rows: the model-selection criterion of every stage.

Each stage is trained until its development error stops improving. The error is
measured on the dev rows (training speakers, rows held out of training; never a
test speaker) twice: clean, and corrupted once by a deterministic condition drawn
from the *training* noises, babble and rooms (never the evaluation ones). The
corruption of a row is a pure function of its ID and the seed, so the criterion
is the same set of audio at every epoch, for every system and on a resume.
"""
import csv
import pathlib

from anchor_reg.corruption import Condition, Corruptor, additive_condition, stable_seed


def noise_types_in(csv_file):
    """Sorted ``noise_type`` values of a noise CSV (``["noise"]`` if it has no such column)."""
    with open(csv_file, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    return sorted({row.get("noise_type", "noise") for row in rows})


class NoisyDevCopies:
    """``copy(wav (T,), row_id) -> (T,)``: the row corrupted by its fixed training-noise condition.

    Arguments
    ---------
    prep_folder : str
        Holds ``noise_train.csv``, ``babble_train.csv`` and ``rir_train.csv``.
    snr_low, snr_high : float
        SNR range (dB); conditions use every 5 dB step in it.
    reverb : bool
        Reverberation is one of the conditions.
    seed : int
        Global seed of the corruption (``data_seed``).
    sample_rate : int
        The sample rate of the noise and RIR files (read like the training audio).
    """

    def __init__(self, prep_folder, snr_low, snr_high, reverb, seed, sample_rate=16000):
        prep = pathlib.Path(prep_folder)
        noise_csvs = {kind: prep / "noise_train.csv" for kind in noise_types_in(prep / "noise_train.csv")}
        noise_csvs["babble"] = prep / "babble_train.csv"
        snrs = [snr_low + 5 * k for k in range(int((snr_high - snr_low) // 5) + 1)]
        self.conditions = [additive_condition(kind, snr) for kind in sorted(noise_csvs) for snr in snrs]
        if reverb:
            self.conditions.append(Condition("reverb"))
        self.corrupt = Corruptor(noise_csvs, prep / "rir_train.csv", seed, sample_rate)
        self.seed = seed

    def condition_of(self, row_id):
        """The row's fixed :class:`Condition`."""
        return self.conditions[stable_seed(row_id, "dev", self.seed) % len(self.conditions)]

    def __call__(self, wav, row_id):
        return self.corrupt(wav, row_id, self.condition_of(row_id))
