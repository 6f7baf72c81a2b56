"""What a stage's checkpoints were trained from, as a Checkpointer recoverable.

Every stage's checkpointer holds a :class:`Provenance` (``provenance`` in the
YAMLs). Before training, train.py says what this run trains from
(:meth:`Provenance.expect`: the training rows' digest; for stage 2 also the
base model's fingerprint and the anchors' digest). Each checkpoint stores
these values in ``provenance.ckpt``, and recovering a checkpoint whose values
differ raises :class:`ProvenanceError`, before anything is trained or written:
a stage never resumes from another base, other anchors or other data.
"""
import pathlib

import yaml
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from anchor_reg.digest import content_digest
from anchor_reg.errors import ProvenanceError

# key -> how a mismatch reads in the message
WHAT = {
    "base_fingerprint": "from another base model",
    "anchors_digest": "with other anchors",
    "train_rows_digest": "on other training data",
}


def rows_digest(ids, speakers):
    """blake2b of the training rows (ID and speaker of each, in order).

    Arguments
    ---------
    ids : list of str
        (N,) row IDs of the training CSV.
    speakers : list of str
        (N,) their speaker labels.
    """
    return content_digest((f"{row_id},{speaker}\n" for row_id, speaker in zip(ids, speakers)), "blake2b")


def read_provenance(path):
    """The values stored in a ``provenance.ckpt`` file ({} if there is none)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


@register_checkpoint_hooks
class Provenance:
    """Provenance of a stage's checkpoints; refuses to recover another one.

    Example
    -------
    >>> provenance = Provenance()
    >>> provenance.expect(train_rows_digest="abc")
    >>> provenance.values
    {'train_rows_digest': 'abc'}
    """

    def __init__(self):
        self.values = {}
        self.folder = None

    def expect(self, folder=None, **values):
        """Sets what this run trains from (``folder``: the checkpoint folder, for messages)."""
        self.values.update(values)
        self.folder = folder

    @mark_as_saver
    def save(self, path):
        """Writes the values (a small YAML file)."""
        pathlib.Path(path).write_text(yaml.safe_dump(dict(self.values)), encoding="utf-8")

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Refuses a checkpoint made from another base, other anchors or other data."""
        recorded = read_provenance(path)
        where = self.folder or pathlib.Path(path).parent.parent
        for key, now in self.values.items():
            made_with = recorded.get(key)
            if made_with != now:
                raise ProvenanceError(
                    f"checkpoints in {where} were trained {WHAT.get(key, 'with other ' + key)} "
                    f"({key} {str(made_with)[:12]}, now {str(now)[:12]}): move them away, "
                    "or train into another experiment folder (--experiment_name=NEW)"
                )
