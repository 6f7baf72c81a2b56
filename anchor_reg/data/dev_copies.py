"""Noisy copies of the dev rows for every stage's model selection: each row corrupted by one training-noise
condition, a pure function of its ID and the seed (the same at every epoch, for every system)."""
import pathlib

from anchor_reg.corruption import Condition, Corruptor, additive_condition, stable_seed
from anchor_reg.data.cache import read_csv


def noise_types_in(csv_file):
    """Sorted ``noise_type`` values of a noise CSV (``["noise"]`` if it has no such column)."""
    return sorted({row.get("noise_type", "noise") for row in read_csv(csv_file)})


class NoisyDevCopies:
    """``copy(wav (T,), row_id) -> (T,)``: the row corrupted by its fixed condition (the training noises of
    ``prep_folder`` at every 5 dB from ``snr_low`` to ``snr_high``, and reverberation if ``reverb``)."""

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

    @classmethod
    def of_stage(cls, v):
        """The copies of a stage's values (``prep_folder``, ``snr_low``, ``snr_high``, ``reverb``, ``data_seed``)."""
        return cls(v["prep_folder"], v["snr_low"], v["snr_high"], v.get("reverb", True), v["data_seed"],
                   sample_rate=v.get("sample_rate", 16000))

    def condition_of(self, row_id):
        """The row's fixed :class:`Condition`."""
        return self.conditions[stable_seed(row_id, "dev", self.seed) % len(self.conditions)]

    def __call__(self, wav, row_id):
        return self.corrupt(wav, row_id, self.condition_of(row_id))
