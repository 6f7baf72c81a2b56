"""The provenance recoverable and the comparison of a stage's record, on their own."""

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from anchor_reg.errors import ProvenanceError
from anchor_reg.provenance import Provenance, rows_digest


def test_checkpoint_made_from_something_else_is_refused_at_recovery(tmp_path):
    layer = torch.nn.Linear(2, 2)
    made = Provenance()
    made.expect(base_fingerprint="aaaa", anchors_digest="bbbb")
    Checkpointer(tmp_path, recoverables={"layer": layer, "provenance": made}).save_checkpoint()
    same = Provenance()
    same.expect(base_fingerprint="aaaa", anchors_digest="bbbb")
    assert Checkpointer(tmp_path, recoverables={"layer": torch.nn.Linear(2, 2), "provenance": same}).recover_if_possible()
    other = Provenance()
    other.expect(folder="FOLDER", base_fingerprint="aaaa", anchors_digest="cccc")
    with pytest.raises(ProvenanceError, match="checkpoints in FOLDER were trained with other anchors "
                                              r"\(anchors_digest bbbb, now cccc\)"):
        Checkpointer(tmp_path, recoverables={"layer": layer, "provenance": other}).recover_if_possible()


def test_rows_digest_changes_with_any_row_or_speaker():
    ids, speakers = ["a", "b"], ["s1", "s2"]
    assert rows_digest(ids, speakers) == rows_digest(list(ids), list(speakers))
    assert rows_digest(ids, ["s1", "s1"]) != rows_digest(ids, speakers)
    assert rows_digest(["a"], ["s1"]) != rows_digest(ids, speakers)
