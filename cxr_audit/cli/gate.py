"""`cxr-audit gate` and `cxr-audit compare`: model updates in CI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxr_audit.cli.app import command, console, note

EXIT_GATE_FAILED = 1


@command("gate")
def gate_command(
    candidate: Annotated[Path, typer.Option("--candidate", help="audit.json (or run directory) of the new model.")],
    policy: Annotated[Path, typer.Option("--policy", help="Gate policy YAML (see docs/gates.example.yaml).")],
    baseline: Annotated[Path | None, typer.Option("--baseline", help="audit.json of the model in production, "
                                                  "audited on the same test set.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="JUnit XML to write (default: gate-junit.xml beside "
                                               "the candidate's audit.json).")] = None,
    summary: Annotated[Path | None, typer.Option("--summary", help="Markdown summary to write (default: "
                                                 "gate-summary.md beside the candidate).")] = None,
    allow_missing_baseline: Annotated[bool, typer.Option(
        "--allow-missing-baseline", help="A first release: skip the rules that compare with a baseline (without "
                                         "this, such rules without --baseline are refused).")] = False,
) -> None:
    """Exit 0 when every policy rule passes, 1 when any fails, 2 for bad input; writes JUnit XML and Markdown."""
    from cxr_audit.audit.gate import evaluate_policy, junit_xml, markdown_summary
    from cxr_audit.audit.policy import load_policy
    from cxr_audit.provenance import atomic_write_bytes, atomic_write_text
    from cxr_audit.rundir import check_output_file
    from cxr_audit.stages.assemble import open_audit

    rules = load_policy(policy)
    new = open_audit(candidate, rules.arm)
    old = open_audit(baseline, "baseline") if baseline else None
    inputs = [policy, new.path, *([old.path] if old else [])]
    junit = check_output_file(junit or new.path.parent / "gate-junit.xml", inputs, "--junit")
    summary = check_output_file(summary or new.path.parent / "gate-summary.md", inputs, "--summary")
    if junit.resolve() == summary.resolve():
        from cxr_audit.errors import UserInputError

        raise UserInputError(f"--junit and --summary both name {junit}; give them different files.")
    outcomes = evaluate_policy(rules, new, old, allow_missing_baseline)
    atomic_write_bytes(junit, junit_xml(outcomes))
    atomic_write_text(summary, markdown_summary(outcomes, new, old))
    table = Table(title="Gate", title_justify="left")
    for header in ("rule", "result", "detail"):
        table.add_column(header)
    for outcome in outcomes:
        colour = {"passed": "green", "failed": "red", "skipped": "yellow"}[outcome.status]
        table.add_row(escape(outcome.rule_id), f"[{colour}]{outcome.status}[/]", escape(outcome.message))
    console.print(table)
    console.print(f"Wrote {junit} and {summary}", markup=False)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(EXIT_GATE_FAILED)


@command("compare")
def compare_command(
    old: Annotated[Path, typer.Argument(help="audit.json (or run directory) of the old model.")],
    new: Annotated[Path, typer.Argument(help="audit.json (or run directory) of the new model.")],
) -> None:
    """Side-by-side metrics of two audits (paired differences when they share a test set); no gating."""
    from cxr_audit.audit.compare import compare_audits
    from cxr_audit.stages.assemble import open_audit

    a, b = open_audit(old, "baseline"), open_audit(new, "baseline")
    rows, why_unpaired = compare_audits(a, b)
    if why_unpaired:
        note(why_unpaired)
    table = Table(title=escape(f"{a.document.inputs['model'].path}  ->  {b.document.inputs['model'].path}"),
                  title_justify="left")
    for header in ("target", "metric", "old", "new", "difference [95% CI]"):
        table.add_column(header, justify="left" if header in ("target", "metric") else "right")
    for row in rows:
        d = row.difference
        text = "-"
        if d is not None and d.difference is not None:
            text = f"{d.difference:+.3f}" + (f" [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}]" if d.ci else "")
        table.add_row(escape(row.target), row.metric, "-" if row.old is None else f"{row.old:.3f}",
                      "-" if row.new is None else f"{row.new:.3f}", text)
    console.print(table)
