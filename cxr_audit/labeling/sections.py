"""Sections of a radiology report: the header words radiologists use, at the start of a line, before a colon.

Only the findings and the impression describe the image; indication, history and comparison mention findings
that are asked about or were seen before ("History: pneumonia"), so they are not labelled by default."""

from __future__ import annotations

import re
from dataclasses import dataclass

# header (as written, lower case) -> the section it opens
HEADERS = {
    "findings": "findings", "finding": "findings", "report": "findings", "description": "findings",
    "impression": "impression", "impressions": "impression", "conclusion": "impression", "conclusions": "impression",
    "summary": "impression", "opinion": "impression", "interpretation": "impression",
    "indication": "indication", "indications": "indication", "reason for exam": "indication",
    "reason for examination": "indication", "reason for study": "indication", "clinical indication": "indication",
    "history": "history", "clinical history": "history", "clinical information": "history",
    "clinical details": "history", "comparison": "comparison", "comparisons": "comparison",
    "technique": "technique", "examination": "examination", "exam": "examination", "procedure": "technique",
    "wet read": "wet read", "notification": "notification", "recommendation": "recommendation",
    "recommendations": "recommendation", "addendum": "addendum", "final report": "findings",
}
LABELLED = ("findings", "impression")
_HEADER = re.compile(r"^[ \t]*(" + "|".join(sorted(map(re.escape, HEADERS), key=len, reverse=True)) + r")[ \t]*:",
                     re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Section:
    name: str      # findings, impression, ... or 'text' for a report without headers
    start: int     # character offsets in the report
    end: int


def sections(text: str) -> list[Section]:
    """The report's sections in order. Text before the first header is 'preamble'; a report with no known
    header is one section, 'text'."""
    found = list(_HEADER.finditer(text))
    if not found:
        return [Section("text", 0, len(text))]
    out = [Section("preamble", 0, found[0].start())] if text[:found[0].start()].strip() else []
    for k, match in enumerate(found):
        end = found[k + 1].start() if k + 1 < len(found) else len(text)
        out.append(Section(HEADERS[match.group(1).lower()], match.end(), end))
    return out


def labelled_sections(text: str, wanted: tuple[str, ...] = LABELLED) -> list[Section]:
    """The sections to label: findings and impression; a report without either is labelled whole (a report
    of findings alone often has no header), less the sections known to describe something else."""
    parts = sections(text)
    chosen = [s for s in parts if s.name in wanted]
    if chosen:
        return chosen
    return [s for s in parts if s.name in ("text", "preamble", "examination", "addendum")]
