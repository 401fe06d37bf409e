"""QC of one edit: the checker's call is made at its own operating threshold (its card), not at 0.5."""

import numpy as np

from cxr_audit.synthesis.documents import Operation
from cxr_audit.synthesis.qc import score_edit

SOURCE = np.random.default_rng(0).random((32, 32)).astype(np.float32)
REGION = np.zeros((32, 32), bool)
REGION[8:24, 8:24] = True


def _score(op: str, after: float, thresholds=None):
    edited = SOURCE.copy()
    edited[REGION] = np.clip(edited[REGION] * 0.9 + 0.05, 0, 1)  # a change inside the region only
    return score_edit(SOURCE, edited, REGION, REGION.astype(np.float32), [Operation(op=op, concept="Pleural Effusion")],
                      {"Pleural Effusion": 0.5}, {"Pleural Effusion": after}, checker_thresholds=thresholds)


def test_an_insertion_is_called_at_the_checkers_operating_threshold():
    subtle = _score("insert", 0.3, {"Pleural Effusion": 0.2})
    assert subtle.passed and abs(subtle.alignment - 0.1) < 1e-9
    # without an operating threshold the call is made at 0.5, and the same edit is rejected
    strict = _score("insert", 0.3)
    assert not strict.passed and strict.reasons == ["checker disagrees: concept not inserted/deleted"]
    assert abs(strict.alignment + 0.2) < 1e-9


def test_a_deletion_must_fall_below_the_checkers_call():
    assert not _score("delete", 0.25, {"Pleural Effusion": 0.2}).passed
    assert _score("delete", 0.15, {"Pleural Effusion": 0.2}).passed
    # anatomy outside the region is untouched, so nothing else rejects these edits
    assert _score("delete", 0.15, {"Pleural Effusion": 0.2}).outside_mae == 0.0
