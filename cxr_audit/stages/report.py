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

        load_audit(self.rundir.audit)  # a missing or malformed audit.json is a user error, named
        return {"audit": sha256_file(self.rundir.audit)}

    def run(self) -> None:
        from cxr_audit.report.render import render_report

        render_report(self.rundir, self.rundir.report)
