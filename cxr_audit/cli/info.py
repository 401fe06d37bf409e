"""`cxr-audit concepts` and `cxr-audit schema`: the vocabulary and the documents' JSON Schemas."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxr_audit.cli.app import command, console


@command("concepts")
def concepts_command() -> None:
    """List the concept vocabulary: canonical names, aliases, anatomical regions."""
    from cxr_audit import concepts

    table = Table(title="Concepts")
    for header in ("concept", "label (of a fine concept)", "group", "regions", "lateral", "aliases"):
        table.add_column(header)
    for concept in concepts.CONCEPTS:
        table.add_row(escape(concept.name), escape(concept.parent or ""), concept.group, ", ".join(concept.regions),
                      "yes" if concept.lateral else "", escape(", ".join(concept.aliases)))
    console.print(table)


class SchemaName(str, Enum):
    coverage = "coverage"
    plan = "plan"
    synthesis = "synthesis"
    metrics = "metrics"
    probe = "probe"
    audit = "audit"


def schema_models() -> dict[str, type]:
    from cxr_audit.audit.document import AuditDocument
    from cxr_audit.coverage import CoverageReport
    from cxr_audit.evaluation.documents import MetricsDocument, ProbeDocument
    from cxr_audit.synthesis.documents import SynthesisSummary
    from cxr_audit.synthesis.planner import PlanDocument

    return {"coverage": CoverageReport, "plan": PlanDocument, "synthesis": SynthesisSummary,
            "metrics": MetricsDocument, "probe": ProbeDocument, "audit": AuditDocument}


@command("schema")
def schema_command(name: Annotated[SchemaName, typer.Argument(help="Which document.")]) -> None:
    """Print the JSON Schema of a document (coverage.json, plan.json, synthesis.json, metrics.json, probe.json,
    audit.json)."""
    print(json.dumps(schema_models()[name.value].model_json_schema(), indent=2))
