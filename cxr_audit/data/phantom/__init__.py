"""The procedural chest X-ray phantom: the tool's default dataset, test fixture and self-check.

`study` samples who and what (anatomy, acquisition, findings) from two seeds; `body` and `findings` draw
the density layers; `render` turns them into an image with exact masks; `dataset` writes a whole phantom
dataset to disk. A counterfactual (one finding added or removed) renders the same patient again, identical
outside that finding's mask: the ground truth that scores synthetic edits.
"""

from cxr_audit.data.phantom.render import cardiothoracic_ratio, render
from cxr_audit.data.phantom.study import (
    ANATOMY_MASKS,
    PHANTOM_FINDINGS,
    Appearance,
    Rendered,
    Study,
    counterfactual,
    make_study,
)

__all__ = ["ANATOMY_MASKS", "PHANTOM_FINDINGS", "Appearance", "Rendered", "Study", "cardiothoracic_ratio", "counterfactual",
           "make_study", "render"]
