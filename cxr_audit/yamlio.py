"""Reading the YAML files users write by hand (coverage specs, gate policies, prevalence files, model cards):
`yaml.safe_load` only, and every problem reported with the file, the line and the key.

One loader for every kind of YAML input, so they all fail the same clear way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cxr_audit.errors import UserInputError

MAX_BYTES = 1 << 20  # a hand-written spec, policy, card or prevalence file is a few kilobytes


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping: plain YAML keeps the last one, so a
    second `cells:` would silently replace the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key]}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)



def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at pydantic's error location, or of its nearest ancestor."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == key or (key == "if_" and k.value == "if")]
            if not match:
                break
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _format_validation_error(path: Path, root: yaml.Node | None, error: ValidationError, what: str,
                             format_hint: str) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc if not str(p).startswith("function-after")) or "(top level)"
        line = _line_of(root, loc)
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}, line {line}, key '{key}': {message}")
    return f"The {what} {path} is not valid:\n" + "\n".join(lines) + f"\nFix these keys (see {format_hint})."


def load_yaml_model(path: str | Path, model: type[BaseModel], what: str, missing_hint: str, mapping_hint: str,
                    format_hint: str):
    """Read a user's YAML file safely and validate it with `model`; every problem becomes a UserInputError
    naming the file, line and key (`what` names the kind of file in messages)."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{what.capitalize()} {path} is a folder; pass the YAML file. {missing_hint}")
    if path.is_file() and path.stat().st_size > MAX_BYTES:
        raise UserInputError(f"{what.capitalize()} {path} is {path.stat().st_size:,} bytes; a {what} is a small "
                             "hand-written file. Is it the right file?")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{what.capitalize()} {path} does not exist. {missing_hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{what.capitalize()} {path} cannot be read as UTF-8 text: {exc}.") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise UserInputError(f"The {what} {path} is nested too deeply to be a {what}. Is it the right file?") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserInputError(f"The {what} {path}{where} is not valid YAML: {problem}. "
                             "Check indentation and that lists use '[a, b]' or '- item'.") from None
    if not isinstance(data, dict):
        raise UserInputError(f"The {what} {path} must be a YAML mapping with {mapping_hint}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserInputError(_format_validation_error(path, root, exc, what, format_hint)) from None
