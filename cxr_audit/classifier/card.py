"""The model card: how to run a classifier and read its outputs (YAML sidecar `<model>.card.yaml`, `--card`,
or defaults). It is read with the project's one YAML loader, so a bad card names its line and key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr_audit import concepts
from cxr_audit.yamlio import load_yaml_model


class ModelCard(BaseModel):
    """How to run a classifier and read its outputs."""

    model_config = ConfigDict(extra="forbid")
    format: str | None = Field(None, description="the model's format, a registered backend's (torchscript, onnx, "
                                                 "torchvision, torchxrayvision, pickle, ...; checked when the model "
                                                 "loads); detected when omitted")
    architecture: str | None = Field(None, description="torchvision model name for a state_dict")
    input_size: int = Field(224, ge=16)
    channels: Literal[1, 3] = 1
    normalization: Literal["unit", "imagenet", "xrv"] = Field(
        "unit", description="unit: [0, 1]; imagenet: mean/std; xrv: torchxrayvision's [-1024, 1024]")
    outputs: Literal["logits", "probabilities"] = "logits"
    output_names: list[str | None] = Field(
        default_factory=list, description="one per output; null or '' for outputs to ignore")
    thresholds: dict[str, float] = Field(default_factory=dict, description="operating threshold per concept")
    training: dict[str, Any] | None = Field(None, description="how the model was trained (provenance; not read)")
    grading: dict[str, dict[str, Any]] | None = Field(
        None, description="a QC checker's fitness per concept on its validation split (AUROC with interval, "
                          "positives, temperature, gradable); read by synthesis QC only")

    @field_validator("output_names")
    @classmethod
    def _known_names(cls, names: list[str | None]) -> list[str | None]:
        resolved = []
        for i, name in enumerate(names):
            if name in (None, ""):
                resolved.append(None)
                continue
            canonical = concepts.try_resolve(name)
            if canonical is None:
                raise ValueError(f"output {i} name {name!r} is not a known concept or alias")
            resolved.append(canonical)
        return resolved

    @field_validator("thresholds")
    @classmethod
    def _threshold_names(cls, values: dict[str, float]) -> dict[str, float]:
        out = {}
        for name, value in values.items():
            canonical = concepts.try_resolve(name)
            if canonical is None or not 0 <= value <= 1:
                raise ValueError(f"threshold {name!r}: {value} needs a known concept and a value in [0, 1]")
            out[canonical] = float(value)
        return out

    @field_validator("grading")
    @classmethod
    def _grading(cls, grading: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        """A QC checker's grading: per known concept, whether it grades (true/false) and a positive temperature."""
        if grading is None:
            return None
        out = {}
        for name, entry in grading.items():
            canonical = concepts.try_resolve(name)
            temperature = entry.get("temperature") if isinstance(entry, dict) else None
            if (canonical is None or not isinstance(entry.get("gradable"), bool)
                    or isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                    or not 0 < temperature < float("inf")):
                raise ValueError(f"grading {name!r} needs a known concept with 'gradable' true or false and a "
                                 f"positive 'temperature' (got {entry!r}); let `cxr-audit audit` train and grade "
                                 "the checker, or remove 'grading' to have the run grade it")
            out[canonical] = entry
        return out

    def preprocessing_signature(self) -> str:
        """Everything about preprocessing that changes the model's input (part of the prediction cache key)."""
        text = f"{self.input_size}|{self.channels}|{self.normalization}|{self.outputs}"
        return hashlib.sha256(text.encode()).hexdigest()



    def sha256(self) -> str:
        """The card's identity as the audit uses it: its content, whatever file (or default) it came from."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def card_file(model_path: Path) -> Path:
    """Where a model's card is written: `<model>.card.yaml` beside it."""
    return model_path.with_name(model_path.name + ".card.yaml")


def card_path_for(path: str | Path | None, model_path: Path) -> Path | None:
    """The card file a model uses: `path` when given, else `<model>.card.yaml` or `<model stem>.card.yaml`
    beside the model, else None (the defaults)."""
    if path:
        return Path(path)
    for candidate in (card_file(model_path), model_path.with_suffix(".card.yaml")):
        if candidate.exists():
            return candidate
    return None


def load_card(path: str | Path | None, model_path: Path) -> ModelCard:
    """The card from `path`, else `<model>.card.yaml` beside the model, else the defaults."""
    found = card_path_for(path, Path(model_path))
    if found is None:
        return ModelCard()
    return load_yaml_model(found, ModelCard, "model card", "Check --card.", "keys such as 'input_size' and "
                           "'output_names'", "the model card format in README.md, 'Evaluating a model'")
