"""The `cxr-audit` command line: one module per command group, all registered on `app.app` (in the order
of the audit's flow, which is the order `--help` lists them)."""

from cxr_audit.cli import labels, coverage, evaluate, synthesis  # noqa: F401, I001 (registers, in the flow's order)
from cxr_audit.cli import audit, reader_study, gate, anatomy, info  # noqa: F401, I001
from cxr_audit.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
