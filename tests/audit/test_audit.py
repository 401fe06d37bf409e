"""The whole audit on a small phantom: artifacts, resumption, the run guard, audit.json, and the PDF."""

import json
from pathlib import Path

import pytest
from pypdf import PdfReader

from cxr_audit.report.render import ReportError, html_to_pdf
from cxr_audit.rundir import RunDir
from cxr_audit.stages.config import ARMS
from cxr_audit.stages.pipeline import open_run, run_audit

SPEC = Path("coverage_specs/phantom.yaml")


def audit_options(phantom_dataset, phantom_model, tiny_generator, spec, checker, **changes) -> dict:
    """Small budgets keep the test fast; the flow is the real one (the checker is given: the stage contract's
    tests train one in the run)."""
    return {"models": [phantom_model], "data": phantom_dataset / "labels.csv", "spec": spec,
            "generator": tiny_generator, "checker": checker, "edit": {"steps": 4, "strength": 0.5, "guidance": 2.0}, "bootstrap": 100,
            "mc_samples": 2, "finetune": {"steps": 6, "batch_size": 16, "eval_every": 3, "checkpoint_every": 3},
            **changes}


def audit(out, options: dict, force: bool = False):
    ctx = open_run(RunDir(out), options, force, progress=False, log=lambda message: None, workers=0)
    return run_audit(ctx, force).model_dump(mode="json")


@pytest.fixture(scope="module")
def audit_run(phantom_dataset, phantom_model, tiny_generator, phantom_checker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    spec = folder / "spec.yaml"  # small synthesis budgets keep the test fast
    spec.write_text(SPEC.read_text() + "synthesis: {budget_per_cell: 3}\n")
    out = folder / "run"
    document = audit(out, audit_options(phantom_dataset, phantom_model, tiny_generator, spec, phantom_checker))
    return out, spec, document


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
