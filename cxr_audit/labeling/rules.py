"""The labeler's rules: the phrases that mention each concept and the ConText cues, from the versioned YAML
shipped in the package, optionally extended or overridden by a user's file (`--rules`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr_audit import concepts
from cxr_audit.errors import UserInputError

SHIPPED_RULES = Path(__file__).with_name("rules.yaml")
CUE_KINDS = ("negated", "uncertain", "historical", "pseudo", "termination")
Direction = Literal["forward", "backward", "both"]


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1]
    targets: dict[str, list[str]] = Field(description="concept -> phrases that mention it")
    cues: dict[Literal["negated", "uncertain", "historical", "pseudo", "termination"],
               dict[Direction, list[str]]] = Field(default_factory=dict)
    historical_present: list[str] = Field(default_factory=list, description="concepts a history cue leaves present")
    replace: list[str] = Field(default_factory=list, description="(a user's file) concepts whose phrases it replaces")

    @field_validator("targets")
    @classmethod
    def _canonical(cls, targets: dict[str, list[str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, phrases in targets.items():
            canonical = concepts.try_resolve(name)
            if canonical is None:
                raise ValueError(f"{name!r} is not a concept this tool knows (see `cxr-audit concepts`)")
            if not all(isinstance(p, str) and p.strip() for p in phrases):
                raise ValueError(f"{name}: every phrase must be non-empty text")
            out.setdefault(canonical, []).extend(p.strip().lower() for p in phrases)
        return out


def load_rules(extra: Path | None = None) -> tuple[Rules, str]:
    """The shipped rules merged with a user's file; with the SHA-256 of what was read (both files, in order)."""
    from cxr_audit.yamlio import load_yaml_model

    def read(path: Path) -> Rules:
        return load_yaml_model(path, Rules, "labeling rules file", "Check --rules.", "'version: 1' and 'targets'",
                               f"the shipped rules {SHIPPED_RULES}")

    rules = read(SHIPPED_RULES)
    digest = hashlib.sha256(SHIPPED_RULES.read_bytes())
    if extra is not None:
        if not Path(extra).is_file():
            raise UserInputError(f"--rules {extra} does not exist or is a folder; pass a rules YAML file.")
        user = read(Path(extra))
        digest.update(Path(extra).read_bytes())
        for name in user.replace:
            canonical = concepts.try_resolve(name)
            if canonical is None:
                raise UserInputError(f"{extra}: 'replace' names {name!r}, which is not a concept this tool knows.")
            rules.targets.pop(canonical, None)
        for name, phrases in user.targets.items():
            rules.targets[name] = [*rules.targets.get(name, []), *phrases]
        for kind, by_direction in user.cues.items():
            for direction, phrases in by_direction.items():
                rules.cues.setdefault(kind, {}).setdefault(direction, []).extend(phrases)
        rules.historical_present = sorted({*rules.historical_present, *user.historical_present})
    return rules, digest.hexdigest()
