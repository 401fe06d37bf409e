"""The report stage: report.pdf rendered from audit.json alone."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.provenance import sha256_file
from cxr_audit.rundir import RunDir


class ReportStage:
    name = "report"

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
        from cxr_audit.report.render import render_report

        render_report(self.rundir, self.rundir.report)
