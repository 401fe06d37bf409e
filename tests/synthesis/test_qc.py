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


def test_a_swap_is_checked_both_ways():
    """A swap passes only when the checker calls the replaced concept absent and its replacement present; the
    alignment is the weaker of the two margins."""
    edited = SOURCE.copy()
    edited[REGION] = np.clip(edited[REGION] * 0.9 + 0.05, 0, 1)
    swap = [Operation(op="swap", concept="Pleural Effusion", to="Pneumothorax")]
    cuts = {"Pleural Effusion": 0.4, "Pneumothorax": 0.3}

    def score(effusion: float, pneumothorax: float):
        return score_edit(SOURCE, edited, REGION, REGION.astype(np.float32), swap,
                          {"Pleural Effusion": 0.9, "Pneumothorax": 0.1},
                          {"Pleural Effusion": effusion, "Pneumothorax": pneumothorax}, checker_thresholds=cuts)

    both = score(0.1, 0.8)
    assert both.passed and abs(both.alignment - min(0.4 - 0.1, 0.8 - 0.3)) < 1e-9
    assert not score(0.6, 0.8).passed  # the effusion is still there
    assert not score(0.1, 0.2).passed  # no pneumothorax in its place
