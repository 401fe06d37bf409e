"""Render the audit PDF from audit.json (jinja2 + weasyprint).

Every number in the PDF comes from audit.json; figures are drawn from it here; gallery panels are the PNG
files the audit wrote into the run directory, given by the report stage (which checks their SHA-256).
audit.json is embedded in the PDF as an attachment (PDF/A-3b). A weasyprint warning (a missing image, a CSS error) fails the render rather than
producing a report with holes.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from cxr_audit.report import figures

LIMITATIONS = [
    "Synthetic images are used for training and probing only; every metric is computed on held-out real "
    "test images, never on synthetic ones.",
    "Confidence intervals resample patients (all of a patient's images together); they cover sampling "
    "variation in the test set, not a shift to another hospital, scanner or population.",
    "Concept alignment of the edits is judged by a checker model; the checker can share blind spots with "
    "the model under audit, and its own accuracy bounds what the QC can guarantee.",
    "The masked editor changes only the finding's anatomical region; findings that are diffuse or that change "
    "anatomy outside their region (for example a large effusion shifting the mediastinum) are only partly "
    "representable.",
    "On the procedural phantom, anatomy and findings are analytic shapes: it shows that the pipeline works and "
    "that its statistics are right, not how a model behaves on real radiographs.",
    "Fine-tuning results depend on the budget and seed; the real-only arm controls for extra training, the "
    "unconstrained arm for anatomy preservation, but other budgets may rank the arms differently.",
]


class ReportError(RuntimeError):
    """The PDF could not be rendered cleanly."""


class _WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _with_interval(point, ci, digits: int, sign: str = "") -> Markup:
    """A point estimate over its 95% interval, as two lines of a table cell ('not estimable' when the bootstrap
    could not give one); `sign` '+' for differences."""
    if point is None:
        return Markup("–")
    text = f"{point:{sign}.{digits}f}"
    if ci and None not in ci:
        return Markup(f'{text}<span class="ci">[{ci[0]:{sign}.{digits}f}, {ci[1]:{sign}.{digits}f}]</span>')
    return Markup(f'{text}<span class="ci">not estimable</span>')


def _ci(entry, digits: int = 3) -> str:
    """An Interval (value, ci) as text."""
    return _with_interval(getattr(entry, "value", None), getattr(entry, "ci", None), digits)


def _difference(entry, digits: int = 3) -> str:
    """A Difference (difference, ci) as signed text."""
    return _with_interval(getattr(entry, "difference", None), getattr(entry, "ci", None), digits, "+")


def _significance(entry, higher_is_better: bool = True) -> str:
    """'better' / 'worse' when the paired CI excludes zero, else 'n.s.'."""
    ci = getattr(entry, "ci", None)
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    lo, hi = ci
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "n.s."


def build_html(document, gallery_panels: list[bytes]) -> str:
    """The report's HTML; `gallery_panels` are the PNG bytes of `document.gallery`'s panels, in its order."""
    from cxr_audit.audit.findings import CONTROL_NAMES

    environment = Environment(loader=PackageLoader("cxr_audit.report", "templates"),
                              autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined)
    environment.filters.update(fmt=_fmt, ci=_ci, diff=_difference, sig=_significance)
    arms = {arm: entry.metrics for arm, entry in document.arms.items()}
    baseline = arms["baseline"]
    concepts = list(baseline.concepts)
    cells = baseline.evaluated_cells()
    cell_targets = [f"cell:{c}" for c in cells if f"cell:{c}" in baseline.pr_curves]
    cars = document.synthesis.get("cars")
    synthetic_by_cell = cars.accepted_by_cell if cars else {}
    probe = document.probe.by_concept if document.probe else {}
    figure_uris = {
        "coverage": figures.data_uri(figures.coverage_figure(document.coverage.cells, synthetic_by_cell,
                                                             split=document.coverage.dataset.split)),
        "cooccurrence": figures.data_uri(figures.cooccurrence_figure(document.coverage.cooccurrence,
                                                                     document.coverage.dataset.n_images)),
        "pr_concepts": figures.data_uri(figures.pr_curves_figure(arms, concepts)),
        "pr_cells": figures.data_uri(figures.pr_curves_figure(arms, cell_targets[:12])) if cell_targets else None,
        "reliability": figures.data_uri(figures.reliability_figure(
            {a: arms[a] for a in arms if a in ("baseline", "recalibrated", "cars")}, concepts)),
        "uncertainty": figures.data_uri(figures.uncertainty_figure(baseline, concepts)),
        "probe": figures.data_uri(figures.probe_figure(probe)) if probe else None,
        "subgroups": figures.data_uri(figures.subgroup_figure(baseline, concepts)) if baseline.subgroups else None,
    }
    gallery = [{**item.model_dump(), "uri": "data:image/png;base64," + base64.b64encode(png).decode()}
               for item, png in zip(document.gallery, gallery_panels, strict=True)]
    template = environment.get_template("report.html.j2")
    return template.render(doc=document, arms=arms, arm_titles={a: e.title for a, e in document.arms.items()},
                           concepts=concepts, cells=cells, figures=figure_uris, gallery=gallery,
                           synthetic_by_cell=synthetic_by_cell, limitations=LIMITATIONS, control_names=CONTROL_NAMES)


def weasyprint_attachment(content: bytes, name: str):
    import weasyprint

    return weasyprint.Attachment(string=content, name=name,
                                 description="The audit document this report was rendered from", relationship="Source")


def html_to_pdf(html: str, base_url: Path, attachments: list, identifier: str = "cxr-audit") -> bytes:
    """HTML -> PDF/A-3b bytes; any weasyprint warning (missing image, bad CSS) raises ReportError."""
    import weasyprint

    collector = _WarningCollector()
    logger = logging.getLogger("weasyprint")
    logger.addHandler(collector)
    try:
        pdf = weasyprint.HTML(string=html, base_url=str(base_url)).write_pdf(
            attachments=attachments, pdf_variant="pdf/a-3b", pdf_identifier=identifier.encode(), custom_metadata=True)
    finally:
        logger.removeHandler(collector)
    if collector.messages:
        raise ReportError("weasyprint reported problems, so the PDF would be incomplete:\n  " +
                          "\n  ".join(collector.messages))
    return pdf


def render_pdf(document, gallery_panels: list[bytes], audit_json: bytes, base_url: Path) -> bytes:
    """The PDF of an audit document, with the audit.json it was read from (`audit_json`) attached."""
    html = build_html(document, gallery_panels)
    return html_to_pdf(html, base_url, [weasyprint_attachment(audit_json, "audit.json")],
                       identifier=document.test_set.sha256[:32])
