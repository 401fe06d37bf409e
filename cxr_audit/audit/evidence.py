"""The evidence map: for each item of the regulatory and reporting frameworks an audit can speak to, where the
report answers it and whether it is filled, partly filled, or left to the manufacturer.

The item lists are data (audit/frameworks/*.yaml, one file per framework, with the document's name, date and
item numbers); this module judges each item against what this audit holds: an item that needs a part the
audit lacks (a reader study not yet scored, no subgroup variable in the data) is only partly filled, and says
what is missing.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["filled", "partly", "manufacturer"]
PART_NAMES = {"data_sheet": "the data sheet", "near_duplicate_check": "the near-duplicate check",
              "subgroups": "subgroup variables in the data", "synthesis": "synthetic edits",
              "probe": "the probe of the frozen model", "reader_study": "a scored reader study",
              "recalibrated": "the recalibrated arm", "fine_tune_arms": "fine-tuned arms"}


class FrameworkItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    item: str
    where: list[str] = Field(default_factory=list)
    status: Status
    requires: list[Literal[tuple(PART_NAMES)]] = Field(default_factory=list)  # type: ignore[valid-type]
    note: str = ""


class Framework(BaseModel):
    model_config = ConfigDict(extra="forbid")
    framework: str
    document: str
    date: str
    numbering: str
    items: list[FrameworkItem] = Field(min_length=1)


def frameworks() -> list[Framework]:
    """Every framework file shipped with the tool, in file-name order."""
    import yaml

    folder = resources.files("cxr_audit.audit") / "frameworks"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    return [Framework.model_validate(yaml.safe_load(f.read_text(encoding="utf-8"))) for f in files]


def audit_parts(audit) -> dict[str, bool]:
    """Which parts this audit holds (the evidence some items need)."""
    baseline = audit.arms["baseline"].metrics
    sheet = audit.data_sheet or {}
    return {"data_sheet": bool(sheet), "near_duplicate_check": bool(sheet.get("near_duplicates", {}).get("checked")),
            "subgroups": bool(baseline.subgroups), "synthesis": bool(audit.synthesis),
            "probe": audit.probe is not None, "reader_study": audit.reader_study is not None,
            "recalibrated": "recalibrated" in audit.arms,
            "fine_tune_arms": any(entry.finetune for entry in audit.arms.values())}


def evidence_map(audit, listed: list[Framework] | None = None) -> dict:
    """audit.json's `evidence` block."""
    parts = audit_parts(audit)
    out = []
    for framework in listed if listed is not None else frameworks():
        items = []
        for item in framework.items:
            missing = [PART_NAMES[p] for p in item.requires if not parts[p]]
            status = "partly" if item.status == "filled" and missing else item.status
            note = item.note + (f" This audit lacks {', '.join(missing)}." if missing else "")
            items.append({"id": item.id, "item": item.item, "where": item.where, "status": status,
                          "note": note.strip()})
        counts = {status: sum(i["status"] == status for i in items) for status in ("filled", "partly", "manufacturer")}
        out.append({"framework": framework.framework, "document": framework.document, "date": framework.date,
                    "numbering": framework.numbering, "counts": counts, "items": items})
    return {"frameworks": out, "statuses": {
        "filled": "the audit answers the item (the report section named)",
        "partly": "the audit gives evidence; the manufacturer completes the item",
        "manufacturer": "outside what an audit of a model's outputs can say: the manufacturer's"}}
