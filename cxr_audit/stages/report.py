"""The report stage: report.pdf rendered from audit.json alone."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_bytes, sha256_file
from cxr_audit.rundir import RunDir


class ReportStage:
    name = "report"
    needs = ("assemble",)

    def __init__(self, rundir: RunDir):
        self.rundir = rundir
        self.folder = self.rundir.report

    def outputs(self) -> list[Path]:
        return [self.rundir.report]

    def inputs(self) -> dict:
        from cxr_audit.audit.document import load_audit

        document = load_audit(self.rundir.audit)  # a missing or malformed audit.json is a user error, named
        panels = {item.image: self.rundir.resolve(item.image) for item in document.gallery}
        return {"audit": sha256_file(self.rundir.audit),  # the gallery panels are embedded in the PDF too
                "gallery": {name: sha256_file(p) if p.is_file() else None for name, p in panels.items()}}

    def run(self) -> None:
        render_run_report(self.rundir, self.rundir.report)


def render_run_report(run: RunDir, output: Path) -> Path:
    """Render RUN/audit.json to `output` (a PDF) with audit.json attached."""
    from cxr_audit.audit.document import load_audit
    from cxr_audit.report.render import render_pdf

    document = load_audit(run.audit)
    panels = [gallery_panel(run, item) for item in document.gallery]
    atomic_write_bytes(output, render_pdf(document, panels, run.audit.read_bytes(), run.path))
    return output


def gallery_panel(run: RunDir, item) -> bytes:
    """A gallery panel named in audit.json, read only from the run's gallery folder and only if its hash matches
    (a document naming a file elsewhere is refused, never read)."""
    name = Path(item.image).name
    if item.image != run.gallery.relative_image(name.removesuffix(".png")):
        raise UserInputError(f"{run.audit}: gallery image {item.image!r} is not inside the run's gallery folder; "
                             "was audit.json edited?")
    path = run.gallery.image(name.removesuffix(".png"))
    if not path.exists():
        raise UserInputError(f"gallery image {path} is missing; re-run the audit's gallery stage "
                             f"(`cxr-audit audit --out {run.path} --force`).")
    content = path.read_bytes()
    if sha256_file(path) != item.image_sha256:
        raise UserInputError(f"gallery image {path} does not match the SHA-256 recorded in audit.json.")
    return content
