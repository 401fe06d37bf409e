"""The whole audit on a small phantom: artifacts, resumption, the run guard, audit.json, and the PDF."""

import json
from pathlib import Path

import pytest
import numpy as np
from pypdf import PdfReader

from conftest import audit, audit_options
from cxr_audit.report.render import ReportError, html_to_pdf
from cxr_audit.rundir import RunDir
from cxr_audit.stages.config import ARMS


def _pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def test_audit_json_holds_every_section(audit_run, phantom_dataset):
    out, _, document = audit_run
    on_disk = json.loads((out / "audit.json").read_text())
    assert on_disk["verdict"] == document["verdict"]
    for key in ("scope", "inputs", "environment", "seeds", "command_line", "coverage", "plan", "synthesis", "arms",
                "comparisons", "probe", "test_set", "verdict"):
        assert key in on_disk, key
    assert set(on_disk["arms"]) == set(ARMS)
    assert len(on_disk["inputs"]["model"]["sha256"]) == 64
    assert on_disk["environment"]["torch"]
    # the paired comparisons exist and are computed from replicates (CI present where defined)
    cars_vs_real = on_disk["comparisons"]["cars vs real_only"]["differences"]
    assert "Cardiomegaly" in cars_vs_real and "auprc" in cars_vs_real["Cardiomegaly"]
    # the findings: context gaps of the under-covered cells, and CARS against every control on each of them
    findings = on_disk["findings"]
    deficits = {c["id"] for c in on_disk["coverage"]["cells"] if c["deficit"] > 0 and c["plausible"]}
    assert findings["target_cells"] and set(findings["target_cells"]) <= deficits
    for cell in findings["target_cells"]:
        assert cell in on_disk["arms"]["baseline"]["metrics"]["context_gaps"]
        assert {c["control"] for c in findings["cars_vs_controls"] if c["cell_id"] == cell} == \
            {"real_only", "unconstrained", "null_edits", "baseline"}
    assert "cars vs null_edits" in on_disk["comparisons"]
    # every arm is scored on the same real test images, and only on them
    import pandas as pd

    test_size = int((pd.read_csv(phantom_dataset / "labels.csv")["split"] == "test").sum())
    assert {entry["metrics"]["n_images"] for entry in on_disk["arms"].values()} == {test_size}
    assert {entry["metrics"]["data"]["split"] for entry in on_disk["arms"].values()} == {"test"}
    # synthetic images only ever join the training split
    for mode in ("cars", "unconstrained", "null_edits"):
        manifest = RunDir(out).synthesis(mode).manifest
        if manifest.stat().st_size > 5:
            assert set(pd.read_csv(manifest)["split"]) == {"train"}


def test_pdf_numbers_come_from_audit_json(audit_run):
    out, _, document = audit_run
    text = _pdf_text(out / "report.pdf")
    baseline = document["arms"]["baseline"]["metrics"]["concepts"]["Cardiomegaly"]
    assert f"{baseline['auroc']['value']:.3f}" in text
    assert f"{baseline['auprc']['value']:.3f}" in text
    assert document["inputs"]["model"]["sha256"][:40] in text.replace("\n", "")
    assert f"Verdict: {document['verdict']['status']}" in text
    for heading in ("Coverage of the training data", "Targeted synthesis", "Performance before and after",
                    "Reliability diagrams", "Probe of the frozen model", "Limitations", "Provenance"):
        assert heading in text, heading


def test_pdf_embeds_audit_json_and_rerenders_the_same(audit_run, run_cli):
    out, _, _ = audit_run
    reader = PdfReader(out / "report.pdf")
    assert reader.attachments["audit.json"][0] == (out / "audit.json").read_bytes()
    before = _pdf_text(out / "report.pdf")
    (out / "report.pdf").unlink()
    result = run_cli("report", "--run", out)
    assert result.exit_code == 0, result.output
    assert _pdf_text(out / "report.pdf") == before


def test_rerun_skips_finished_stages(audit_run, phantom_dataset, phantom_model, tiny_generator, phantom_checker):
    out, spec, _ = audit_run
    stamps = {p.name: p.stat().st_mtime_ns for p in RunDir(out).stages.glob("*.json")}
    audit(out, audit_options(phantom_dataset, phantom_model, tiny_generator, spec, phantom_checker))
    assert {p.name: p.stat().st_mtime_ns for p in RunDir(out).stages.glob("*.json")} == stamps


def test_a_run_of_other_inputs_is_refused(audit_run, phantom_dataset, phantom_model, tiny_generator, run_cli):
    out, spec, _ = audit_run
    request = RunDir(out).request.read_bytes()
    audit_json = RunDir(out).audit.read_bytes()
    result = run_cli("audit", "--model", phantom_model, "--data", phantom_dataset / "labels.csv", "--spec", spec,
                     "--out", out, "--generator", tiny_generator, "--seed", "7", "--no-report")
    assert result.exit_code == 2
    assert "never overwrites another run" in result.output and "evaluate_baseline (differs in: seed)" in result.output
    assert RunDir(out).request.read_bytes() == request and RunDir(out).audit.read_bytes() == audit_json


def test_weasyprint_warning_fails_the_render(tmp_path):
    with pytest.raises(ReportError, match="weasyprint"):
        html_to_pdf("<html><body><img src='missing.png'></body></html>", tmp_path, [])


def test_report_without_audit_json_is_a_clear_error(tmp_path, run_cli):
    result = run_cli("report", "--run", tmp_path)
    assert result.exit_code == 2
    assert "audit.json" in result.output


def test_every_command_exists_when_started_as_a_module():
    """torchrun starts `python -m cxr_audit.cli`; the audit commands register from their own modules, so the
    module entry point must see them as the console script does."""
    import os
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "cxr_audit.cli", "--help"], capture_output=True, text=True,
                            check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    for command in ("audit", "demo", "gate", "segment", "train-generator", "synthesize", "coverage", "evaluate",
                    "plan", "finetune", "probe", "report", "compare", "schema", "concepts"):
        assert f" {command} " in listed, command


def test_every_table_of_the_report_fits_the_page(audit_run):
    """A4 with its margins: every table's right edge lies inside the page's content box (no cut columns)."""
    import weasyprint
    from weasyprint.formatting_structure import boxes

    from cxr_audit.audit.document import load_audit
    from cxr_audit.report.render import build_html
    from cxr_audit.stages.report import gallery_panel

    out, _, _ = audit_run
    run = RunDir(out)
    audit = load_audit(run.audit)
    html = build_html(audit, [gallery_panel(run, item) for item in audit.gallery])
    document = weasyprint.HTML(string=html, base_url=str(out)).render()
    tables = 0
    for number, page in enumerate(document.pages, 1):
        box = page._page_box
        right = box.position_x + box.margin_left + box.width  # the content box's right edge
        for table in (b for b in box.descendants() if isinstance(b, boxes.TableBox)):
            tables += 1
            assert table.position_x + table.margin_width() <= right + 0.5, f"a table leaves page {number}"
    assert tables >= 8


def test_every_page_drawn_keeps_inside_its_margins_and_the_appendices_are_there(audit_run, tmp_path):
    """The PDF as pictures: each page rendered (pdftoppm), nothing drawn in the side margins (a table or text cut
    off at the page edge would be), and the evidence map and data sheet appendices are pages of their own."""
    import subprocess

    from PIL import Image

    out, _, _ = audit_run
    pdf = out / "report.pdf"
    pages = PdfReader(pdf).pages
    titles = {number: " ".join(page.extract_text().replace("\u2010\n", "").split())
              for number, page in enumerate(pages, 1)}
    evidence = [n for n, text in titles.items() if text.lstrip().startswith("Appendix A. Evidence map")]
    sheet = [n for n, text in titles.items() if text.lstrip().startswith("Appendix B. Data sheet")]
    assert evidence and sheet and evidence[0] < sheet[0]
    assert "Modification protocol" in " ".join(titles[n] for n in range(evidence[0], sheet[0]))
    assert "Near-duplicate images across partitions" in " ".join(titles[n] for n in range(sheet[0], len(pages) + 1))
    subprocess.run(["pdftoppm", "-r", "36", "-png", str(pdf), str(tmp_path / "page")], check=True)
    rendered = sorted(tmp_path.glob("page-*.png"))
    assert len(rendered) == len(pages)
    for number, path in enumerate(rendered, 1):
        page = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        height, width = page.shape
        margin = int(width * 10 / 210)  # 10 of the 14 mm side margins of an A4 page
        body = slice(int(height * 0.02), int(height * 0.94))  # the footer sits in the bottom margin
        for side in (page[body, :margin], page[body, width - margin:]):
            assert side.min() > 200, f"page {number} draws in its side margin"


def test_the_recalibrated_arm_moves_only_calibration(audit_run):
    """Temperature scaling fitted on the validation split: the ranking and the operating point are the deployed
    model's (equal AUROC, sensitivity and specificity); the map and its paired comparison are recorded."""
    out, _, _ = audit_run
    document = json.loads((out / "audit.json").read_text())
    baseline, recalibrated = (document["arms"][arm]["metrics"] for arm in ("baseline", "recalibrated"))
    fitted = recalibrated["model"]["recalibration"]
    assert fitted["method"] == "temperature" and fitted["fitted_on"] == "validation split"
    for concept, entry in recalibrated["concepts"].items():
        before = baseline["concepts"][concept]
        assert entry["auroc"]["value"] == pytest.approx(before["auroc"]["value"], abs=1e-9), concept
        assert entry["recall"]["value"] == pytest.approx(before["recall"]["value"], abs=1e-9), concept
        assert entry["specificity"]["value"] == pytest.approx(before["specificity"]["value"], abs=1e-9), concept
        assert "parameters" in fitted["concepts"][concept]
        for key in ("smece", "calibration_intercept", "calibration_slope"):
            assert key in entry and key in before
    differences = document["comparisons"]["recalibrated vs baseline"]["differences"]
    assert "smece" in next(iter(differences.values()))
    assert document["arms"]["recalibrated"]["finetune"] is None
