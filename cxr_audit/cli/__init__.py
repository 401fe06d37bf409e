"""The `cxr-audit` command line: one module per command group, all registered on `app.app`."""

from cxr_audit.cli import anatomy, audit, coverage, evaluate, gate, info, synthesis  # noqa: F401 (registers)
from cxr_audit.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
