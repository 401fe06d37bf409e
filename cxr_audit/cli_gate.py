"""`cxr-audit gate` and `cxr-audit compare`: model updates in CI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxr_audit.cli import command, console

EXIT_GATE_FAILED = 1


@command("gate")
def gate_command(
    candidate: Annotated[Path, typer.Option("--candidate", help="audit.json (or run directory) of the new model.")],
    policy: Annotated[Path, typer.Option("--policy", help="Gate policy YAML (see docs/gates.example.yaml).")],
    baseline: Annotated[Path | None, typer.Option("--baseline", help="audit.json of the model in production, "
                                                  "audited on the same test set.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="JUnit XML to write (default: beside the "
                                               "candidate's audit.json, gate-junit.xml).")] = None,
    summary: Annotated[Path | None, typer.Option("--summary", help="Markdown summary to write (default: "
                                                 "gate-summary.md beside the candidate).")] = None,
) -> None:
    """Exit 0 when every policy rule passes, 1 when any fails, 2 for bad input; writes JUnit XML and Markdown."""
    from cxr_audit.gate import AuditRun, evaluate_policy, junit_xml, load_policy, markdown_summary
    from cxr_audit.provenance import atomic_write_bytes, atomic_write_text

    rules = load_policy(policy)
    new = AuditRun.load(candidate, rules.arm)
    old = AuditRun.load(baseline, "baseline") if baseline else None
    outcomes = evaluate_policy(rules, new, old)
    junit = junit or new.path.parent / "gate-junit.xml"
    summary = summary or new.path.parent / "gate-summary.md"
    atomic_write_bytes(junit, junit_xml(outcomes))
    atomic_write_text(summary, markdown_summary(outcomes, new, old))
    table = Table(title="Gate", title_justify="left")
    for header in ("rule", "result", "detail"):
        table.add_column(header)
    for outcome in outcomes:
        colour = {"passed": "green", "failed": "red", "skipped": "yellow"}[outcome.status]
        table.add_row(outcome.rule_id, f"[{colour}]{outcome.status}[/]", outcome.message)
    console.print(table)
    console.print(f"Wrote {junit} and {summary}")
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(EXIT_GATE_FAILED)


@command("compare")
def compare_command(
    old: Annotated[Path, typer.Argument(help="audit.json (or run directory) of the old model.")],
    new: Annotated[Path, typer.Argument(help="audit.json (or run directory) of the new model.")],
) -> None:
    """Side-by-side metrics of two audits (paired differences when they share a test set); no gating."""
    from cxr_audit.errors import UserInputError
    from cxr_audit.gate import AuditRun, check_same_test_set
    from cxr_audit.metrics.bootstrap import paired_difference

    a, b = AuditRun.load(old, "baseline"), AuditRun.load(new, "baseline")
    try:
        check_same_test_set(b, a)
        paired = True
    except UserInputError as reason:
        console.print(f"[yellow]note:[/] {reason} Differences are shown without paired intervals.")
        paired = False
    reps_old, reps_new = (a.replicates("baseline"), b.replicates("baseline")) if paired else ({}, {})
    ma, mb = a.metrics("baseline"), b.metrics("baseline")
    table = Table(title=f"{a.document['inputs']['model']['path']}  ->  {b.document['inputs']['model']['path']}",
                  title_justify="left")
    for header in ("target", "metric", "old", "new", "difference [95% CI]"):
        table.add_column(header, justify="left" if header in ("target", "metric") else "right")
    targets = [(c, ma["concepts"].get(c), mb["concepts"][c]) for c in mb["concepts"]]
    targets += [(f"cell:{c}", ma["cells"].get(c), mb["cells"][c]) for c in mb["cells"] if mb["cells"][c].get("evaluated")]
    for target, entry_old, entry_new in targets:
        if not entry_old or not entry_old.get("auprc"):
            continue
        for metric in ("auprc", "auroc", "ece"):
            v_old, v_new = entry_old[metric]["value"], entry_new[metric]["value"]
            if target in reps_old and target in reps_new:
                d = paired_difference(reps_old[target][metric][0], reps_new[target][metric][0],
                                      reps_old[target][metric][1], reps_new[target][metric][1])
                text = f"{d.difference:+.3f}" + (f" [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}]" if d.ci else "") \
                    if d.difference is not None else "-"
            else:
                text = f"{v_new - v_old:+.3f}" if v_old is not None and v_new is not None else "-"
            table.add_row(target, metric, f"{v_old:.3f}" if v_old is not None else "-",
                          f"{v_new:.3f}" if v_new is not None else "-", text)
    console.print(table)
