"""What a stage's checkpoints were trained from (training rows' digest; for stage 2 also the base's fingerprint
and the anchors' digest), stored in each checkpoint's ``provenance.ckpt``: recovering one made otherwise raises
:class:`ProvenanceError` before anything is trained or written."""
import pathlib

import yaml
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from anchor_reg.digest import content_digest
from anchor_reg.errors import ProvenanceError

# key -> how a mismatch reads in the message
WHAT = {"base_fingerprint": "from another base model", "anchors_digest": "with other anchors",
        "train_rows_digest": "on other training data"}


def rows_digest(ids, speakers):
    """blake2b of the training rows: (N,) row IDs and (N,) speakers, in order."""
    return content_digest((f"{row_id},{speaker}\n" for row_id, speaker in zip(ids, speakers)), "blake2b")


def read_provenance(path):
    """The values stored in a ``provenance.ckpt`` file ({} if there is none)."""
    path = pathlib.Path(path)
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


@register_checkpoint_hooks
class Provenance:
    """The values a stage's checkpoints were trained from (:meth:`expect`); refuses to recover others."""

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
        """Raises :class:`ProvenanceError` for a checkpoint made from another base, other anchors or data."""
        recorded = read_provenance(path)
        where = self.folder or pathlib.Path(path).parent.parent
        for key, now in self.values.items():
            if recorded.get(key) != now:
                raise ProvenanceError(
                    f"checkpoints in {where} were trained {WHAT.get(key, 'with other ' + key)} "
                    f"({key} {str(recorded.get(key))[:12]}, now {str(now)[:12]}): move them away, "
                    "or train into another experiment folder (--experiment_name=NEW)"
                )
