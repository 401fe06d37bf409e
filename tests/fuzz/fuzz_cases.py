"""The hostile inputs: every case is made by code at test time (no binary blob is stored), run as a user would
run the command, and must end with exit 2, no traceback, a message naming the culprit, and every file that
existed before unchanged.

A case is (class, id, build); `build(folder, base)` writes what the case needs into its own folder and
returns the command line and the text its message must contain. `base` holds valid inputs (a phantom
dataset, a spec, a model, a finished audit run) that cases copy before they damage them.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Case:
    kind: str          # the class of bad input (the README's table)
    name: str
    build: Callable[[Path, object], tuple[list, str]]

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}"


CASES: list[Case] = []


def case(kind: str, name: str):
    def register(build):
        CASES.append(Case(kind, name, build))
        return build
    return register


# ---------------------------------------------------------------------------------------------------------
# Labels files: each damage, through every command that reads labels

CSV = ("path,patient_id,split,view,Cardiomegaly,Pleural Effusion\n"
       "a.png,p1,train,PA,1,0\nb.png,p2,train,PA,0,1\nc.png,p3,test,PA,1,1\nd.png,p4,val,AP,0,0\n")
SPEC = "version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells:\n  - {id: C1, all_of: [Cardiomegaly, Effusion], min_count: 5}\n"
PREDICTIONS = "path,prob_Cardiomegaly,prob_Effusion\na.png,0.9,0.1\nb.png,0.2,0.8\nc.png,0.7,0.6\nd.png,0.1,0.2\n"
NIH = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
       "1.png,Cardiomegaly,0,1,58,M,PA\n2.png,No Finding,0,2,40,F,AP\n")
NIH_SPEC = "version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells: []\n"


def _rows(text: str) -> list[str]:
    return text.strip().split("\n")


LABEL_DAMAGES: dict[str, tuple[Callable[[Path], Path], str, str]] = {}  # name -> (write, culprit, format)


def damage(name: str, culprit: str, fmt: str = "csv"):
    def register(write):
        LABEL_DAMAGES[name] = (write, culprit, fmt)
        return write
    return register


def _write(folder: Path, text: str, name: str = "labels.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


damage("empty file", "labels.csv")(lambda f: _write(f, ""))
damage("header only", "labels.csv")(lambda f: _write(f, _rows(CSV)[0] + "\n"))
damage("binary garbage", "labels.csv")(lambda f: (f / "labels.csv").write_bytes(bytes(range(256)) * 8) and f / "labels.csv")
damage("label 'yes'", "row 3")(lambda f: _write(f, CSV.replace("b.png,p2,train,PA,0,1", "b.png,p2,train,PA,yes,1")))
damage("two columns of one concept that disagree", "'Effusion'")(
    lambda f: _write(f, CSV.replace("Pleural Effusion\n", "Pleural Effusion,Effusion\n").replace(
        "a.png,p1,train,PA,1,0\n", "a.png,p1,train,PA,1,0,1\n").replace("b.png,p2,train,PA,0,1\n",
        "b.png,p2,train,PA,0,1,1\n").replace("c.png,p3,test,PA,1,1\n", "c.png,p3,test,PA,1,1,1\n").replace(
        "d.png,p4,val,AP,0,0\n", "d.png,p4,val,AP,0,0,0\n")))
damage("label 2", "row 2")(lambda f: _write(f, CSV.replace("a.png,p1,train,PA,1,0", "a.png,p1,train,PA,2,0")))
damage("label 1.7", "1.7")(lambda f: _write(f, CSV.replace("a.png,p1,train,PA,1,0", "a.png,p1,train,PA,1.7,0")))
damage("blank path", "row 3")(lambda f: _write(f, CSV.replace("b.png,p2", ",p2")))
damage("absolute path", "outside the dataset root")(lambda f: _write(f, CSV.replace("b.png", "/etc/passwd")))
damage("'..' escape", "outside the dataset root")(lambda f: _write(f, CSV.replace("b.png", "../../secret.png")))
damage("control character", "control characters")(lambda f: _write(f, CSV.replace("b.png", "b\x01.png")))
damage("every row twice", "listed twice")(lambda f: _write(f, CSV + "\n".join(_rows(CSV)[1:]) + "\n"))
damage("same image, other labels", "different labels")(
    lambda f: _write(f, CSV + "a.png,p1,train,PA,0,0\n"))
damage("split 'tst'", "'tst'")(lambda f: _write(f, CSV.replace("c.png,p3,test", "c.png,p3,tst")))
damage("split half filled", "no split")(lambda f: _write(f, CSV.replace("c.png,p3,test", "c.png,p3,")))
damage("patient in two splits", "more than one split")(lambda f: _write(f, CSV.replace("c.png,p3,test", "c.png,p1,test")))
damage("missing path column", "path")(lambda f: _write(f, CSV.replace("path,", "file_name,")))
damage("no concept column", "no concept columns")(lambda f: _write(f, "path,patient_id\na.png,p1\n"))
damage("unknown concept columns only", "no concept columns")(lambda f: _write(f, "path,Cardiomegalyy\na.png,1\n"))
damage("NIH blank finding labels", "row 3", "nih")(lambda f: _write(f, NIH.replace("No Finding", "")))
damage("NIH unknown finding", "Cardiomegalie", "nih")(lambda f: _write(f, NIH.replace("Cardiomegaly,0", "Cardiomegalie,0")))
damage("NIH file read as generic CSV", "--format nih")(lambda f: _write(f, NIH))
damage("truncated gzip", "labels.csv.gz")(
    lambda f: (f / "labels.csv.gz").write_bytes(gzip.compress(CSV.encode())[:25]) and f / "labels.csv.gz")
damage("CheXpert without Path", "Path", "chexpert")(
    lambda f: _write(f, "Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly\nMale,40,Frontal,PA,1\n"))
damage("CheXpert odd Frontal/Lateral", "Frontal/Lateral", "chexpert")(
    lambda f: _write(f, "Path,Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly\npatient1/a.png,Male,40,Sideways,PA,1\n"))


def _mimic(folder: Path, change: str) -> Path:
    files = {
        "mimic-cxr-2.0.0-chexpert.csv": "subject_id,study_id,Cardiomegaly,Pleural Effusion\n1,10,1,0\n2,20,0,1\n",
        "mimic-cxr-2.0.0-metadata.csv": "dicom_id,subject_id,study_id,ViewPosition\nd1,1,10,PA\nd2,2,20,AP\n",
        "mimic-cxr-2.0.0-split.csv": "dicom_id,study_id,subject_id,split\nd1,10,1,train\nd2,20,2,test\n",
    }
    if change == "duplicated study":
        files["mimic-cxr-2.0.0-chexpert.csv"] += "1,10,0,0\n"
    elif change == "text subject id":
        files["mimic-cxr-2.0.0-metadata.csv"] = files["mimic-cxr-2.0.0-metadata.csv"].replace("d2,2,", "d2,two,")
    elif change == "no split file":
        del files["mimic-cxr-2.0.0-split.csv"]
    data = folder / "mimic"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    return data


damage("MIMIC duplicated study", "the same", "mimic")(lambda f: _mimic(f, "duplicated study"))
damage("MIMIC text subject id", "'two'", "mimic")(lambda f: _mimic(f, "text subject id"))
damage("MIMIC without split file", "mimic-cxr-2.0.0-split", "mimic")(lambda f: _mimic(f, "no split file"))


def _labels_case(command: str, damage_name: str):
    write, culprit, fmt = LABEL_DAMAGES[damage_name]

    def build(folder: Path, base) -> tuple[list, str]:
        data = write(folder)
        spec = _write(folder, NIH_SPEC if fmt == "nih" else SPEC, "spec.yaml")
        given = ["--data", data, "--spec", spec, "--out", folder / "run"]
        if fmt != "csv" or damage_name == "NIH file read as generic CSV":
            given += ["--format", "csv" if damage_name == "NIH file read as generic CSV" else fmt]
        if command == "evaluate":
            given += ["--predictions", _write(folder, PREDICTIONS, "predictions.csv"), "--bootstrap", 100]
        return [command, *given], culprit
    return build


for _name in LABEL_DAMAGES:
    for _command in ("coverage", "plan", "evaluate"):
        case("labels file", f"{_command}: {_name}")(_labels_case(_command, _name))


# ---------------------------------------------------------------------------------------------------------
# Coverage specs

SPEC_DAMAGES = {
    "does not exist": (None, "does not exist"),
    "a folder": ("<folder>", "folder"),
    "empty": ("", "YAML mapping"),
    "invalid YAML": ("version: 1\nconcepts: [Cardiomegaly\n", "not valid YAML"),
    "a key twice": ("version: 1\nconcepts: [Edema]\nconcepts: [Cardiomegaly]\n", "appears twice"),
    "nested too deep": ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    "misspelled concept": ("version: 1\nconcepts: [Cardiomegally]\n", "Cardiomegaly"),
    "unknown key": ("version: 1\nconcepts: [Cardiomegaly]\ncels: []\n", "cels"),
    "negative min_count": ("version: 1\nconcepts: [Cardiomegaly]\ncells:\n  - {id: A, all_of: [Cardiomegaly], "
                           "min_count: -1}\n", "min_count"),
    "a list": ("- Cardiomegaly\n", "YAML mapping"),
    "cell concept not in scope": ("version: 1\nconcepts: [Cardiomegaly]\ncells:\n  - {id: A, all_of: [Edema], "
                                  "min_count: 1}\n", "not in 'concepts'"),
    "duplicate cell id": ("version: 1\nconcepts: [Cardiomegaly]\ncells:\n  - {id: A, all_of: [Cardiomegaly], "
                          "min_count: 1}\n  - {id: A, all_of: [Cardiomegaly], min_count: 2}\n", "used twice"),
    "reversed age band": ("version: 1\nconcepts: [Cardiomegaly]\ncells:\n  - {id: A, all_of: [Cardiomegaly], "
                          "min_count: 1, subgroup: {age: [80, 60]}}\n", "age band"),
    "binary": (bytes(range(256)).decode("latin-1"), "spec.yaml"),
    "concept without labels": ("version: 1\nconcepts: [Cardiomegaly, Edema]\n", "no labels"),
    "wrong version": ("version: 3\nconcepts: [Cardiomegaly]\n", "version"),
    "a swap across groups": ("version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells:\n  - {id: A, all_of: [Effusion], "
                             "none_of: [Cardiomegaly], min_count: 1, swaps: [[Cardiomegaly, Effusion]]}\n",
                             "within a group"),
    "no attempts per edit": ("version: 1\nconcepts: [Cardiomegaly]\nsynthesis: {attempts_per_edit: 0}\n",
                             "attempts_per_edit"),
    "tries per source 0": ("version: 1\nconcepts: [Cardiomegaly]\nsynthesis: {tries_per_source: 0}\n",
                           "tries_per_source"),
    "a swap the wrong way": ("version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells:\n  - {id: A, all_of: [Effusion], "
                             "none_of: [Cardiomegaly], min_count: 1, swaps: [[Effusion, Cardiomegaly]]}\n",
                             "none_of concept by an all_of one"),
}


def _spec_case(command: str, name: str):
    text, culprit = SPEC_DAMAGES[name]

    def build(folder: Path, base) -> tuple[list, str]:
        spec = folder / "spec.yaml"
        if text == "<folder>":
            spec.mkdir()
        elif text is not None:
            spec.write_bytes(text.encode("latin-1") if name == "binary" else text.encode())
        return [command, "--data", _write(folder, CSV), "--spec", spec, "--out", folder / "run"], culprit
    return build


for _name in SPEC_DAMAGES:
    for _command in ("coverage", "plan"):
        case("coverage spec", f"{_command}: {_name}")(_spec_case(_command, _name))


# ---------------------------------------------------------------------------------------------------------
# Models and model cards (evaluate on the phantom)

def _model_case(name: str, culprit: str, make: Callable[[Path, object], tuple[Path, Path | None]]):
    def build(folder: Path, base) -> tuple[list, str]:
        model, card = make(folder, base)
        args = ["evaluate", "--data", base.data, "--spec", base.spec, "--model", model, "--out", folder / "run",
                "--bootstrap", 100, "--mc-samples", 0, "--workers", 0, "--no-cache"]
        return args + (["--card", card] if card else []), culprit
    case("model", name)(build)


def _card(folder: Path, base, **changes) -> Path:
    import yaml

    card = yaml.safe_load(base.card.read_text())
    card.update(changes)
    path = folder / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def _scripted(folder: Path, module, name: str = "model.pt") -> Path:
    import torch

    path = folder / name
    torch.jit.script(module).save(str(path))
    return path


def _odd_module(kind: str):
    import torch
    from torch import nn

    class Tuple(nn.Module):
        def forward(self, x: torch.Tensor):
            out = x.mean(dim=(2, 3)).repeat(1, 8)
            return out, out

    class NaN(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x.mean(dim=(2, 3)).repeat(1, 8)
            return out / (out - out)

    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 8) * 7 - 3

    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3))

    return {"tuple": Tuple, "nan": NaN, "scale": Scale, "flat": Flat}[kind]()


_model_case("does not exist", "does not exist", lambda f, b: (f / "none.pt", None))
_model_case("a folder", "folder", lambda f, b: (f, None))
_model_case("garbage .pt", "model.pt", lambda f, b: ((f / "model.pt").write_bytes(b"garbage" * 99) and f / "model.pt",
                                                      _card(f, b)))
_model_case("garbage .onnx", "ONNX", lambda f, b: ((f / "model.onnx").write_bytes(b"garbage" * 99) and
                                                   f / "model.onnx", _card(f, b, format="onnx")))
_model_case("garbage .safetensors", "safetensors",
            lambda f, b: ((f / "model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"garbage") and
                          f / "model.safetensors", _card(f, b, format="torchvision", architecture="small_cxr_net")))
_model_case("a card naming an unknown format", "format", lambda f, b: (b.model, _card(f, b, format="keras")))
_model_case("a folder named as a TorchScript model", "folder", lambda f, b: (f, _card(f, b, format="torchscript")))
_model_case("truncated TorchScript", "model.pt",
            lambda f, b: ((f / "model.pt").write_bytes(b.model.read_bytes()[:3000]) and f / "model.pt", _card(f, b)))


def _pickled(folder: Path, base):
    import torch

    from cxr_audit.classifier.small_cnn import SmallCXRNet

    torch.save(SmallCXRNet(8, width=4), folder / "model.pt")
    return folder / "model.pt", _card(folder, base, format="torchvision", architecture="small_cxr_net")


_model_case("pickled module", "pickle", _pickled)


@case("model", "--allow-pickle with a payload that is no model")
def _pickled_payload(folder: Path, base) -> tuple[list, str]:
    import torch

    torch.save({"not": "a model"}, folder / "model.pt")
    args = ["evaluate", "--data", base.data, "--spec", base.spec, "--model", folder / "model.pt", "--out",
            folder / "run", "--bootstrap", 100, "--mc-samples", 0, "--workers", 0, "--no-cache", "--allow-pickle",
            "--card", _card(folder, base, format="pickle")]
    return args, "not a torch module"


@case("model", "segmenter weights that are a pickle")
def _pickled_segmenter(folder: Path, base) -> tuple[list, str]:
    import hashlib

    import torch

    from cxr_audit.classifier.small_cnn import SmallCXRNet

    weights = folder / "lung_seg.pt"
    torch.save(SmallCXRNet(2, width=4), weights)  # a pickled module, with a card that vouches for its hash
    (folder / "lung_seg.pt.json").write_text(json.dumps({"weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}))
    return ["segment", "--data", base.data, "--out", folder / "out", "--model", weights], "TorchScript"


def _state_dict(folder: Path, base, architecture: str | None):
    import torch

    from cxr_audit.classifier.small_cnn import SmallCXRNet

    torch.save(SmallCXRNet(8, width=4).state_dict(), folder / "model.pt")
    changes = {"format": "torchvision", "architecture": architecture}
    return folder / "model.pt", _card(folder, base, **changes)


_model_case("state dict, no architecture", "architecture", lambda f, b: _state_dict(f, b, None))
_model_case("state dict, wrong architecture", "do not fit", lambda f, b: _state_dict(f, b, "resnet18"))
_model_case("unknown architecture", "Unknown torchvision architecture", lambda f, b: _state_dict(f, b, "resnet9000"))
_model_case("returns a tuple", "tuple", lambda f, b: (_scripted(f, _odd_module("tuple")), _card(f, b)))
_model_case("returns shape (1,)", "shape (1,)", lambda f, b: (_scripted(f, _odd_module("flat")), _card(f, b)))
_model_case("outputs NaN", "NaN", lambda f, b: (_scripted(f, _odd_module("nan")), _card(f, b)))
_model_case("probabilities out of [0, 1]", "outside [0, 1]",
            lambda f, b: (_scripted(f, _odd_module("scale")), _card(f, b, outputs="probabilities")))
_model_case("card names too few outputs", "output_names",
            lambda f, b: (b.model, _card(f, b, output_names=["Cardiomegaly"])))
_model_case("card invalid YAML", "card.yaml",
            lambda f, b: (b.model, (f / "card.yaml").write_text("input_size: [64\n") and f / "card.yaml"))
_model_case("card unknown concept", "Cardiomegally", lambda f, b: (b.model, _card(f, b, output_names=[
    "Cardiomegally", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Atelectasis", "Nodule",
    "Support Devices"])))
_model_case("card does not exist", "does not exist", lambda f, b: (b.model, f / "none.yaml"))
_model_case("card unknown key", "input_sise", lambda f, b: (b.model, _card(f, b, input_sise=64)))
_model_case("card input size too small", "input_size", lambda f, b: (b.model, _card(f, b, input_size=8)))


# ---------------------------------------------------------------------------------------------------------
# A black box's predictions (evaluate --predictions)

PREDICTION_DAMAGES = {
    "does not exist": (None, "--predictions"),
    "empty": ("", "row per image (--predictions)"),
    "no id column": ("prob_Cardiomegaly\n0.5\n", "id column"),
    "no concept column": ("path,score\na.png,0.5\n", "no probability column"),
    "probability 1.5": (PREDICTIONS.replace("0.9", "1.5"), "1.5"),
    "not a number": (PREDICTIONS.replace("0.9", "high"), "'high'"),
    "an image twice": (PREDICTIONS + "a.png,0.9,0.1\n", "twice"),
    "images missing": ("path,prob_Cardiomegaly,prob_Effusion\na.png,0.9,0.1\n", "no prediction"),
}


def _predictions_case(name: str):
    text, culprit = PREDICTION_DAMAGES[name]

    def build(folder: Path, base) -> tuple[list, str]:
        path = folder / "predictions.csv"
        if text is not None:
            path.write_text(text)
        return ["evaluate", "--data", _write(folder, CSV), "--spec", _write(folder, SPEC, "spec.yaml"),
                "--predictions", path, "--split", "all", "--out", folder / "run", "--bootstrap", 100], culprit
    return build


for _name in PREDICTION_DAMAGES:
    case("predictions file", _name)(_predictions_case(_name))


# ---------------------------------------------------------------------------------------------------------
# Images on disk (evaluate reads them; a few dozen images so that DataLoader workers run)

def _image_case(name: str, culprit: str, spoil: Callable[[Path], None], workers: int = 2):
    def build(folder: Path, base) -> tuple[list, str]:
        from PIL import Image

        rows = ["path,patient_id,split,Cardiomegaly,Pleural Effusion"]
        (folder / "images").mkdir()
        for k in range(40):
            Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(folder / f"images/{k}.png")
            rows.append(f"images/{k}.png,p{k},test,{k % 2},{(k // 2) % 2}")
        _write(folder, "\n".join(rows) + "\n")
        spoil(folder / "images" / "37.png")
        return ["evaluate", "--data", folder / "labels.csv", "--spec", _write(folder, SPEC, "spec.yaml"), "--model",
                base.model, "--card", base.card, "--out", folder / "run", "--bootstrap", 100, "--mc-samples", 0,
                "--workers", workers, "--batch-size", 8, "--no-cache"], culprit
    case("image", name)(build)


def _truncate(path: Path, keep: int = 60) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _to_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _truncated_dicom(path: Path) -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(64 * 64)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue()[:400])
    del pydicom


_image_case("missing on disk", "37.png", lambda p: p.unlink())
_image_case("a folder", "37.png", _to_folder)
_image_case("truncated PNG, in a worker", "37.png", _truncate)
_image_case("truncated PNG, in process", "37.png", _truncate, workers=0)
_image_case("garbage bytes", "37.png", lambda p: p.write_bytes(b"not an image" * 10))
_image_case("truncated DICOM", "37.png", _truncated_dicom)
_image_case("DICOM with a header value that is no number", "NumberOfFrames",
            lambda p: p.write_bytes((Path(__import__("pydicom").__file__).parent / "data" / "test_files" /
                                     "badVR.dcm").read_bytes()))


# ---------------------------------------------------------------------------------------------------------
# Options out of range

def _option_case_args(folder: Path, base, command: list, needs: str = "csv") -> tuple[list, Path | None]:
    if needs == "run":
        run = folder / "run"
        shutil.copytree(base.run, run)
        return [str(part).replace("RUN", str(run)) for part in command], run
    data, spec = _write(folder, CSV), _write(folder, SPEC, "spec.yaml")
    return [str(part).replace("DATA", str(data)).replace("SPEC", str(spec)).replace("OUT", str(folder / "out"))
            .replace("MODEL", str(base.model)).replace("CARD", str(base.card)) for part in command], None


def _option_case(name: str, culprit: str, command: list, needs: str = "csv"):
    def build(folder: Path, base) -> tuple[list, str]:
        return _option_case_args(folder, base, command, needs)[0], culprit
    case("option", name)(build)


_EVALUATE = ["evaluate", "--data", "DATA", "--spec", "SPEC", "--model", "MODEL", "--card", "CARD", "--out", "OUT"]
_option_case("--batch-size 0", "--batch-size", _EVALUATE + ["--batch-size", "0"])
_option_case("--workers -1", "--workers", _EVALUATE + ["--workers", "-1"])
_option_case("--bootstrap 10", "bootstrap", _EVALUATE + ["--bootstrap", "10"])
_option_case("--mc-samples -3", "mc_samples", _EVALUATE + ["--mc-samples", "-3"])
_option_case("--split bogus", "--split", _EVALUATE + ["--split", "bogus"])
_option_case("--format bogus", "--format", ["coverage", "--data", "DATA", "--spec", "SPEC", "--out", "OUT",
                                             "--format", "bogus"])
_option_case("synthesize --steps 0", "steps", ["synthesize", "--run", "RUN", "--steps", "0"], needs="run")
_option_case("synthesize --strength 2", "strength", ["synthesize", "--run", "RUN", "--strength", "2"], needs="run")
_option_case("audit --finetune-steps 0", "steps", ["audit", "--out", "RUN", "--finetune-steps", "0"], needs="run")
_option_case("audit --edit-steps 0", "steps", ["audit", "--out", "RUN", "--edit-steps", "0"], needs="run")
_option_case("audit --arms bogus", "bogus", ["audit", "--out", "RUN", "--arms", "baseline,bogus"], needs="run")
_option_case("audit --recalibration beta", "recalibration", ["audit", "--out", "RUN", "--recalibration", "beta"],
             needs="run")
_option_case("reader-study export --n 1", "--n", ["reader-study", "export", "--run", "RUN", "--out", "RUN-kit", "--n",
                                                  "1"], needs="run")
_option_case("finetune --arms baseline", "baseline", ["finetune", "--run", "RUN", "--arms", "baseline"], needs="run")
_option_case("train-generator --steps 0", "steps", ["train-generator", "--out", "OUT", "--data", "DATA", "--spec",
                                                    "SPEC", "--steps", "0"])
_option_case("train-generator --size 8", "size", ["train-generator", "--out", "OUT", "--data", "DATA", "--spec",
                                                  "SPEC", "--size", "8"])
_option_case("train-generator --lora-rank without --base", "--base", ["train-generator", "--out", "OUT", "--data",
                                                                     "DATA", "--spec", "SPEC", "--lora-rank", "4"])
_option_case("train-generator --channels a,b", "--channels", ["train-generator", "--out", "OUT", "--data", "DATA",
                                                              "--spec", "SPEC", "--channels", "a,b"])
_option_case("phantom --n 0", "--n", ["phantom", "--out", "OUT", "--n", "0"])
_option_case("phantom --size 8", "--size", ["phantom", "--out", "OUT", "--size", "8"])
_option_case("segment --size 0", "--size", ["segment", "--data", "DATA", "--out", "OUT", "--size", "0"])
_option_case("phantom --out a file", "file", ["phantom", "--out", "DATA", "--n", "4"])


# ---------------------------------------------------------------------------------------------------------
# Base pipelines for LoRA (train-generator --base) and the LoRA folders trained on them

_TRAIN_ON_BASE = ["train-generator", "--out", "OUT", "--data", "DATA", "--spec", "SPEC", "--steps", "1", "--base"]


def _base_case(name: str, culprit: str, make_base: Callable[[Path], Path]):
    def build(folder: Path, base) -> tuple[list, str]:
        args, _ = _option_case_args(folder, base, _TRAIN_ON_BASE)
        return [*args, make_base(folder)], culprit
    case("base pipeline", name)(build)


def _tiny_base(folder: Path, **changes) -> Path:
    from tiny_diffusers import build_tiny_pipeline

    return build_tiny_pipeline(folder / "base", **changes)


def _without(part: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        base = _tiny_base(folder)
        shutil.rmtree(base / part) if (base / part).is_dir() else (base / part).unlink()
        return base
    return make


_base_case("an empty folder", "not a diffusers pipeline", lambda f: (f / "empty").mkdir() or f / "empty")
_base_case("a file", "not a folder", lambda f: _write(f, "weights", "base.safetensors"))
_base_case("no unet/", "no unet/", _without("unet"))
_base_case("no model_index.json", "model_index.json", _without("model_index.json"))
_base_case("model_index.json not JSON", "model_index.json is not readable JSON",
           lambda f: _write(_tiny_base(f), "{", "model_index.json").parent)
_base_case("an inpainting UNet (9 channels)", "unet/config.json: the UNet takes 9 channels",
           lambda f: _tiny_base(f, unet_in_channels=9))
_base_case("a UNet without cross-attention", "no cross-attention", lambda f: _without_cross_attention(_tiny_base(f)))


def _lora_rank_zero(folder: Path, base) -> tuple[list, str]:
    args, _ = _option_case_args(folder, base, _TRAIN_ON_BASE)
    return [*args, _tiny_base(folder), "--lora-rank", "0"], "lora_rank"


case("base pipeline", "--lora-rank 0")(_lora_rank_zero)


def _without_cross_attention(base: Path) -> Path:
    config = json.loads((base / "unet" / "config.json").read_text())
    (base / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": None}))
    return base


def _lora_on_changed_base(folder: Path, base) -> tuple[list, str]:
    """A LoRA trained for one step on a base that is then changed: synthesize refuses it, naming the card."""
    import numpy as np

    from cxr_audit.synthesis.lora_training import LoraTrainConfig, train_lora

    pipeline = _tiny_base(folder)
    rng = np.random.default_rng(0)
    train_lora(rng.random((4, 1, 64, 64), np.float32), rng.integers(0, 2, (4, 2)).astype(np.float32),
               ["Cardiomegaly", "Edema"], pipeline, folder / "lora", LoraTrainConfig(steps=1, batch_size=2), "x",
               progress=False)
    _write(pipeline, json.dumps({**json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text()),
                                 "_note": "changed"}), "scheduler/scheduler_config.json")
    run = folder / "run"
    shutil.copytree(base.run, run)
    return ["synthesize", "--run", run, "--force", "--generator", folder / "lora"], "lora_card.json"


case("base pipeline", "synthesize with a LoRA whose base changed")(_lora_on_changed_base)


def _lora_card_damaged(folder: Path, base) -> tuple[list, str]:
    (folder / "lora").mkdir()
    _write(folder / "lora", json.dumps({"base": str(folder), "rank": "eight"}), "lora_card.json")
    run = folder / "run"
    shutil.copytree(base.run, run)
    return ["synthesize", "--run", run, "--force", "--generator", folder / "lora"], "lora_card.json"


case("base pipeline", "synthesize with a LoRA card missing fields")(_lora_card_damaged)


# ---------------------------------------------------------------------------------------------------------
# Phantom prevalence files

PREVALENCE_DAMAGES = {
    "studies_per_patient [3, 1]": ("studies_per_patient: [3, 1]\n", "studies_per_patient"),
    "studies_per_patient [0, 0]": ("studies_per_patient: [0, 0]\n", "studies_per_patient"),
    "studies_per_patient [-2, 1]": ("studies_per_patient: [-2, 1]\n", "studies_per_patient"),
    "probability 1.5": ("findings: {Cardiomegaly: 1.5}\n", "between 0 and 1"),
    "finding the phantom cannot draw": ("findings: {Mass: 0.1}\n", "Mass"),
    "splits not adding up": ("splits: {train: 0.5, test: 0.2}\n", "add up to 1"),
    "unknown split key": ("findings: {Cardiomegaly: {training: 0.2}}\n", "split keys"),
}


def _prevalence_case(name: str):
    text, culprit = PREVALENCE_DAMAGES[name]

    def build(folder: Path, base) -> tuple[list, str]:
        return ["phantom", "--out", folder / "out", "--n", 10, "--size", 32, "--workers", 1, "--prevalence",
                _write(folder, text, "prevalence.yaml")], culprit
    return build


for _name in PREVALENCE_DAMAGES:
    case("prevalence file", _name)(_prevalence_case(_name))


# ---------------------------------------------------------------------------------------------------------
# Documents inside a run, and outputs pointed at inputs

def _run_case(name: str, culprit: str, spoil: Callable[[Path, Path], list]):
    """`spoil(run, folder)` damages a copy of a finished audit run and returns the command line."""
    def build(folder: Path, base) -> tuple[list, str]:
        run = folder / "run"
        shutil.copytree(base.run, run)
        return spoil(run, folder), culprit
    case("run documents", name)(build)


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _policy(folder: Path, text: str = "version: 1\nrules:\n  - {type: min_metric, min: 0.1}\n") -> Path:
    return _write(folder, text, "policy.yaml")


# A plan edited by hand is no longer the plan stage's output: synthesize refuses it (the record's hash).
_run_case("plan.json not JSON", "differs in: plan", lambda r, f: (r / "plan" / "plan.json").write_text("{") and
          ["synthesize", "--run", r])
_run_case("plan.json without edits key", "differs in: plan",
          lambda r, f: _edit_json(r / "plan" / "plan.json", lambda d: d.pop("edits")) or ["synthesize", "--run", r])
_run_case("edit id '../../x'", "differs in: plan",
          lambda r, f: _edit_json(r / "plan" / "plan.json", lambda d: d["edits"][0].update(edit_id="../../x")) or
          ["synthesize", "--run", r])
for _command in ("gate", "compare", "report"):
    def _args(command: str, run: Path, folder: Path) -> list:
        return {"gate": ["gate", "--candidate", run, "--policy", _policy(folder)],
                "compare": ["compare", run, run], "report": ["report", "--run", run, "--force"]}[command]

    _run_case(f"{_command}: audit.json not JSON", "audit.json",
              lambda r, f, c=_command: (r / "audit.json").write_text("[") and _args(c, r, f))
    _run_case(f"{_command}: audit.json without arms", "arms",
              lambda r, f, c=_command: _edit_json(r / "audit.json", lambda d: d.pop("arms")) or _args(c, r, f))
    _run_case(f"{_command}: audit.json of schema 1.0", "schema_version",
              lambda r, f, c=_command: _edit_json(r / "audit.json", lambda d: d.update(schema_version="1.0")) or
              _args(c, r, f))
    _run_case(f"{_command}: audit.json with a string metric", "value",
              lambda r, f, c=_command: _edit_json(r / "audit.json", lambda d: next(iter(
                  d["arms"]["baseline"]["metrics"]["concepts"].values()))["auroc"].update(value="high")) or
              _args(c, r, f))
_run_case("report: a gallery panel missing", "gallery",
          lambda r, f: [p.unlink() for p in (r / "gallery").glob("*.png")] and ["report", "--run", r, "--force"])
_run_case("report: a gallery path outside the run", "gallery",
          lambda r, f: _edit_json(r / "audit.json", lambda d: d["gallery"][0].update(image="../../../etc/passwd")) or
          ["report", "--run", r, "--force"])
_run_case("gate: replicates changed", "replicates",
          lambda r, f: (r / "evaluate" / "baseline" / "replicates.npz").write_bytes(b"x") and
          ["gate", "--candidate", r, "--baseline", r, "--policy",
           _policy(f, "version: 1\nrules:\n  - {type: non_inferiority, margin: 0.01}\n")])
_run_case("a stage record edited", "stage record", lambda r, f: (r / "stages" / "plan.json").write_text("{") and
          ["audit", "--out", r])
_run_case("request.json edited", "request.json", lambda r, f: (r / "request.json").write_text("[]") and
          ["audit", "--out", r])
_run_case("an output changed after its stage", "plan",
          lambda r, f: _edit_json(r / "plan" / "plan.json", lambda d: d.update(seed=99)) or ["audit", "--out", r])
_run_case("report --pdf onto audit.json", "--pdf", lambda r, f: ["report", "--run", r, "--pdf", r / "audit.json"])
_run_case("report --pdf onto a folder", "--pdf", lambda r, f: ["report", "--run", r, "--pdf", f])
_run_case("gate policy: allow_empty not a yes or no", "allow_empty",
          lambda r, f: ["gate", "--candidate", r, "--policy",
                        _policy(f, "version: 1\nallow_empty: maybe\nrules:\n  - {type: min_metric, min: 0.1}\n")])
_run_case("gate --junit onto audit.json", "--junit",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(f), "--junit", r / "audit.json"])
_run_case("gate --summary onto the policy", "--summary",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(f), "--summary", f / "policy.yaml"])
_run_case("gate --junit and --summary one file", "both name",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(f), "--junit", f / "x", "--summary", f / "x"])
_run_case("gate --junit inside a stage folder", "stage folder",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(f), "--junit", r / "plan" / "junit.xml"])
_run_case("gate: a policy key twice", "appears twice",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(f, "version: 1\nrules: []\nrules: []\n")])
_run_case("gate: only baseline rules, no baseline", "baseline",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(
              f, "version: 1\nrules:\n  - {type: non_inferiority, margin: 0.01}\n")])
_run_case("gate: unknown concept in a rule", "Cardiomegally",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(
              f, "version: 1\nrules:\n  - {type: min_metric, min: 0.1, concepts: [Cardiomegally]}\n")])
_run_case("coverage --out inside a stage folder", "stage folder",
          lambda r, f: ["coverage", "--out", r / "coverage", "--data", _write(f, CSV), "--spec",
                        _write(f, SPEC, "spec.yaml")])
_run_case("evaluate --out inside a stage folder", "stage folder",
          lambda r, f: ["evaluate", "--out", r / "evaluate" / "baseline", "--data", _write(f, CSV), "--predictions",
                        _write(f, PREDICTIONS, "predictions.csv")])
_run_case("audit of other options", "differs in",
          lambda r, f: ["audit", "--out", r, "--bootstrap", 500])
_run_case("--out a folder of other files", "not a cxr-audit run",
          lambda r, f: (f / "other").mkdir() or _write(f / "other", "x", "notes.txt") and
          ["coverage", "--out", f / "other", "--data", _write(f, CSV), "--spec", _write(f, SPEC, "spec.yaml")])
_run_case("--out a file", "is a file",
          lambda r, f: ["coverage", "--out", _write(f, "x", "file.txt"), "--data", _write(f, CSV), "--spec",
                        _write(f, SPEC, "spec.yaml")])
_run_case("segment onto the dataset's own masks", "already have lung masks",
          lambda r, f: ["segment", "--data", Path(json.loads((r / "request.json").read_text())["config"]["data"]),
                        "--out", Path(json.loads((r / "request.json").read_text())["config"]["data"]).parent])


# ---------------------------------------------------------------------------------------------------------
# Black boxes, the probe's round trip, and documents that contradict themselves

_run_case("gate: a fine-tuned arm's replicates damaged", "replicates",
          lambda r, f: (r / "evaluate" / "real_only" / "replicates.npz").write_bytes(b"PK torn") and
          ["gate", "--candidate", r, "--baseline", r, "--policy",
           _policy(f, "version: 1\narm: real_only\nrules:\n  - {type: non_inferiority, margin: 0.5}\n")])
_run_case("gate: QC counts that do not add up (0 planned, 80 rejected)", "do not add up",
          lambda r, f: _edit_json(r / "audit.json", lambda d: d["synthesis"]["cars"].update(planned=0, rejected=80))
          or ["gate", "--candidate", r, "--policy", _policy(f, "version: 1\nrules:\n  - {type: qc, "
                                                            "max_rejected_share: 0.5}\n")])
_run_case("gate: a subgroup variable the audit does not have", "no subgroup variable manufacturer",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(
              f, "version: 1\nnot_estimable: skip\nrules:\n  - {type: max_subgroup_gap, variables: [manufacturer], "
                 "max: 0.2}\n")])
_run_case("gate: max_realism_auroc below chance", "max",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(
              f, "version: 1\nrules:\n  - {type: max_realism_auroc, max: 0.2}\n")])
_run_case("gate: max_realism_auroc of an unknown synthesis mode", "modes",
          lambda r, f: ["gate", "--candidate", r, "--policy", _policy(
              f, "version: 1\nrules:\n  - {type: max_realism_auroc, modes: [inpainting], max: 0.8}\n")])
_run_case("gate: a realism AUROC edited to 1.7", "realism",
          lambda r, f: _edit_json(r / "audit.json", lambda d: d["realism"]["modes"]["cars"].update(
              discriminator={"auroc": {"value": 1.7, "ci": [0.5, 1.9]}, "by_operation": {}, "by_concept": {},
                             "folds": 5, "most_confident": []})) or
          ["gate", "--candidate", r, "--policy", _policy(f, "version: 1\nrules:\n  - {type: max_realism_auroc, "
                                                            "max: 0.8}\n")])
_run_case("compare: a value nulled by hand", "edited after it was made",
          lambda r, f: _edit_json(r / "audit.json", lambda d: next(iter(
              d["arms"]["baseline"]["metrics"]["concepts"].values()))["auroc"].update(value=None)) or
          ["compare", r, r])
_run_case("audit --checker a pickle (refused, and not recorded)", "--checker",
          lambda r, f: __import__("torch").save({"a": 1}, f / "checker.pt") or
          ["audit", "--out", r, "--checker", f / "checker.pt", "--force"])
def _checker_graded(r: Path, f: Path, grading: dict) -> Path:
    """The run's checker copied with its card's grading replaced."""
    import yaml

    checker = shutil.copy(r / "checker" / "checker.safetensors", f / "checker.safetensors")
    card = yaml.safe_load((r / "checker" / "checker.safetensors.card.yaml").read_text())
    (f / "checker.safetensors.card.yaml").write_text(yaml.safe_dump({**card, "grading": grading}))
    return Path(checker)


_run_case("synthesize --checker whose grading has a negative temperature", "temperature",
          lambda r, f: ["synthesize", "--run", r, "--force", "--checker", _checker_graded(
              r, f, {"Cardiomegaly": {"gradable": True, "temperature": -1.0}})])
_run_case("synthesize --checker whose grading names an unknown concept", "grading",
          lambda r, f: ["synthesize", "--run", r, "--force", "--checker", _checker_graded(
              r, f, {"Pulmonary Sparkle": {"gradable": True, "temperature": 1.0}})])
_run_case("synthesize --checker whose grading says 'maybe'", "gradable",
          lambda r, f: ["synthesize", "--run", r, "--force", "--checker", _checker_graded(
              r, f, {"Edema": {"gradable": "maybe", "temperature": 1.0}})])
_run_case("synthesize --generator not a generator (before any work)", "generator",
          lambda r, f: (f / "generator").mkdir() or ["synthesize", "--run", r, "--generator", f / "generator", "--force"])
_run_case("--out a run on other data", "run on other data",
          lambda r, f: ["coverage", "--out", r, "--data", _write(f, NIH), "--format", "nih", "--spec",
                        _write(f, NIH_SPEC, "spec.yaml")])
_run_case("probe --predictions: no path column", "id column",
          lambda r, f: ["probe", "--run", r, "--force", "--predictions",
                        _write(f, "file,prob_Cardiomegaly\nsynthetic/images/x.png,0.5\n", "scores.csv")])
_run_case("probe --predictions: an image twice", "twice",
          lambda r, f: ["probe", "--run", r, "--force", "--predictions", _write(
              f, "path,prob_Cardiomegaly\nsynthetic/images/x.png,0.5\nsynthetic/images/x.png,0.4\n", "scores.csv")])
_run_case("probe --predictions: a score of 1.2", "1.2",
          lambda r, f: ["probe", "--run", r, "--force", "--predictions", _write(f, _scores_of(r, 1.2), "scores.csv")])
_run_case("probe --predictions and --model", "not both",
          lambda r, f: ["probe", "--run", r, "--model", Path(json.loads((r / "request.json").read_text())[
              "config"]["models"][0]), "--predictions", _write(f, _scores_of(r, 0.5), "scores.csv")])
_run_case("probe --predictions that does not exist", "--predictions",
          lambda r, f: ["probe", "--run", r, "--predictions", f / "none.csv"])
_run_case("audit --predictions and --model", "not both",
          lambda r, f: ["audit", "--out", f / "new", "--data", Path(json.loads((r / "request.json").read_text())[
              "config"]["data"]), "--spec", _write(f, SPEC, "spec.yaml"), "--model", Path(json.loads(
                  (r / "request.json").read_text())["config"]["models"][0]), "--predictions",
              _write(f, PREDICTIONS, "predictions.csv")])
_run_case("audit --predictions with fine-tune arms", "--arms",
          lambda r, f: ["audit", "--out", f / "new", "--predictions", _write(f, PREDICTIONS, "predictions.csv"),
                        "--arms", "baseline,cars"])
_run_case("audit --predictions missing test images", "no prediction for",
          lambda r, f: ["audit", "--out", f / "new", "--data", Path(json.loads((r / "request.json").read_text())[
              "config"]["data"]), "--spec", Path(json.loads((r / "request.json").read_text())["config"]["spec"]),
              "--predictions", _write(f, PREDICTIONS, "predictions.csv")])


def _scores_of(run: Path, value: float) -> str:
    """Scores for every image the run's probe lists, all `value`."""
    import pandas as pd

    listed = [*pd.read_csv(run / "synthetic" / "score_me.csv")["path"], "synthetic/images/not-listed.png"]
    return "path,prob_Cardiomegaly\n" + "".join(f"{p},{value}\n" for p in listed)


# ---------------------------------------------------------------------------------------------------------
# Report texts (label-reports) and labels made from them

REPORTS = "study_id,report\n1,No effusion.\n2,Small pneumothorax.\n3,Cardiomegaly.\n"


def _reports_case(name: str, culprit: str, make: Callable[[Path], list]):
    """`make(folder)` writes the reports and returns the options after `label-reports`."""
    def build(folder: Path, base) -> tuple[list, str]:
        return ["label-reports", *make(folder)], culprit
    case("report texts", name)(build)


def _txt_folder(folder: Path, files: dict[str, bytes]) -> Path:
    (folder / "txt").mkdir()
    for name, content in files.items():
        (folder / "txt" / name).write_bytes(content)
    return folder / "txt"


_reports_case("an empty report", "row 3", lambda f: ["--reports", _write(f, REPORTS.replace("Small pneumothorax.", " "),
                                                                          "r.csv"), "--out", f / "out"])
_reports_case("a report without an id", "row 4", lambda f: ["--reports", _write(f, REPORTS.replace("3,Card", ",Card"),
                                                                                 "r.csv"), "--out", f / "out"])
_reports_case("two reports with one id", "same id", lambda f: ["--reports", _write(f, REPORTS + "2,No change.\n", "r.csv"),
                                                               "--out", f / "out"])
_reports_case("--text-columns naming no column", "'impression'",
              lambda f: ["--reports", _write(f, REPORTS, "r.csv"), "--text-columns", "impression", "--out", f / "out"])
_reports_case("--id-column naming no column", "'accession'",
              lambda f: ["--reports", _write(f, REPORTS, "r.csv"), "--id-column", "accession", "--out", f / "out"])
_reports_case("a CSV with no text column", "--text-columns",
              lambda f: ["--reports", _write(f, "study_id,notes\n1,x\n", "r.csv"), "--out", f / "out"])
_reports_case("an empty CSV", "r.csv", lambda f: ["--reports", _write(f, "", "r.csv"), "--out", f / "out"])
_reports_case("a report that is not UTF-8", "not UTF-8",
              lambda f: ["--reports", _txt_folder(f, {"a.txt": "Effusion.".encode(), "b.txt": "Épanchement".encode(
                  "latin-1")}), "--out", f / "out"])
_reports_case("a folder with no report", "no .txt", lambda f: ["--reports", _txt_folder(f, {"a.md": b"x"}), "--out",
                                                               f / "out"])
_reports_case("a MIMIC report in the wrong pNN folder", "MIMIC-CXR layout",
              lambda f: (f / "m" / "files" / "p11" / "p10000032").mkdir(parents=True) or
              (f / "m" / "files" / "p11" / "p10000032" / "s5.txt").write_text("Effusion.") and
              ["--reports", f / "m", "--out", f / "out"])
_reports_case("reports that do not exist", "--reports", lambda f: ["--reports", f / "none.csv", "--out", f / "out"])
_reports_case("--out onto the reports file", "overwrite the input",
              lambda f: (f / "out").mkdir() or ["--reports", _write(f / "out", REPORTS, "labels.csv"), "--out", f / "out"])
_reports_case("--out holding earlier labels", "--force",
              lambda f: (f / "out").mkdir() or _write(f / "out", "x", "labels.csv") and
              ["--reports", _write(f, REPORTS, "r.csv"), "--out", f / "out"])
_reports_case("--out a file", "is a file", lambda f: ["--reports", _write(f, REPORTS, "r.csv"), "--out",
                                                      _write(f, "x", "o.txt")])
_reports_case("--rules naming an unknown concept", "Cardiomegally",
              lambda f: ["--reports", _write(f, REPORTS, "r.csv"), "--out", f / "out", "--rules",
                         _write(f, "version: 1\ntargets:\n  Cardiomegally: [big heart]\n", "rules.yaml")])
_reports_case("--rules not YAML", "rules.yaml",
              lambda f: ["--reports", _write(f, REPORTS, "r.csv"), "--out", f / "out", "--rules",
                         _write(f, "version: 1\ntargets: [\n", "rules.yaml")])
_reports_case("--processes 0", "--processes",
              lambda f: ["--reports", _write(f, REPORTS, "r.csv"), "--out", f / "out", "--processes", "0"])
_run_case("--labels with a format that is not MIMIC", "--labels",
          lambda r, f: ["coverage", "--out", f / "new", "--data", _write(f, CSV), "--format", "csv", "--labels",
                        _write(f, "subject_id,study_id,Cardiomegaly\n1,2,1\n", "chexpert.csv"), "--spec",
                        _write(f, SPEC, "spec.yaml")])
_run_case("--labels without subject_id (MIMIC)", "subject_id",
          lambda r, f: (f / "mimic").mkdir() or _write(f / "mimic", "dicom_id,subject_id,study_id,ViewPosition\n"
                                                       "d1,1,2,PA\n", "mimic-cxr-2.0.0-metadata.csv") and
          _write(f / "mimic", "dicom_id,split\nd1,train\n", "mimic-cxr-2.0.0-split.csv") and
          ["coverage", "--out", f / "new", "--data", f / "mimic", "--format", "mimic", "--labels",
           _write(f, "study_id,Cardiomegaly\n2,1\n", "chexpert.csv"), "--spec", _write(f, SPEC, "spec.yaml")])


# ---------------------------------------------------------------------------------------------------------
# A reader study's responses: every malformed answer names the file, line and column

def _reader_key(run: Path) -> str:
    """A reader-study key written into the run (three cases; what `reader-study export` would leave), its hash."""
    import hashlib

    key = {"schema_version": "1.0", "concepts": ["Cardiomegaly", "Pleural Effusion"], "image_size": 64,
           "cases": {"case_0001": {"truth": "real", "image_id": "x"},
                     "case_0002": {"truth": "synthetic", "edit_id": "E000001", "operation": "insert",
                                   "edit": "insert Cardiomegaly", "shown": ["Cardiomegaly"], "removed": []},
                     "case_0003": {"truth": "synthetic", "edit_id": "E000002", "operation": "delete",
                                   "edit": "delete Pleural Effusion", "shown": [], "removed": ["Pleural Effusion"]}}}
    (run / "reader_study").mkdir(exist_ok=True)
    data = (json.dumps(key, indent=2, sort_keys=True) + "\n").encode()
    (run / "reader_study" / "key.json").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _answers(key: str, rows: list[str] | None = None) -> str:
    rows = rows if rows is not None else [f"{key},case_0001,R1,real,3,", f"{key},case_0002,R1,synthetic,4,Cardiomegaly",
                                          f"{key},case_0003,R1,real,2,"]
    return "kit_key_sha256,case_id,reader,judged,confidence,findings\n" + "\n".join(rows) + "\n"


def _responses_case(name: str, culprit: str, answers: Callable[[str], str | bytes], key: bool = True):
    def spoil(run: Path, folder: Path) -> list:
        digest = _reader_key(run) if key else "0" * 64
        content = answers(digest)
        path = folder / "r1.csv"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["reader-study", "score", "--run", run, "--responses", path]
    _run_case(f"reader-study score: {name}", culprit, spoil)


def _replace(row: int, column: int, value: str) -> Callable[[str], str]:
    def answers(key: str) -> str:
        lines = _answers(key).strip().split("\n")
        cells = lines[row].split(",")
        cells[column] = value
        lines[row] = ",".join(cells)
        return "\n".join(lines) + "\n"
    return answers


_responses_case("responses not a CSV", "r1.csv", lambda k: bytes(range(256)) * 4)
_responses_case("responses empty", "r1.csv", lambda k: "")
_responses_case("header only", "no answers", lambda k: _answers(k, []))
_responses_case("no confidence column", "'confidence'", lambda k: _answers(k).replace(",confidence", ",certainty"))
_responses_case("an unknown case", "line 3, column case_id", _replace(2, 1, "case_0099"))
_responses_case("a case missing", "did not answer 1 of the 3 cases",
                lambda k: _answers(k, [f"{k},case_0001,R1,real,3,", f"{k},case_0002,R1,real,3,"]))
_responses_case("a case answered twice", "more than once",
                lambda k: _answers(k) + f"{k},case_0001,R1,synthetic,5,\n")
_responses_case("judged 'maybe'", "line 2, column judged", _replace(1, 3, "maybe"))
_responses_case("confidence 7", "line 4, column confidence", _replace(3, 4, "7"))
_responses_case("confidence 'high'", "line 2, column confidence", _replace(1, 4, "high"))
_responses_case("confidence 2.5", "column confidence", _replace(1, 4, "2.5"))
_responses_case("a finding not in the kit", "column findings", _replace(2, 5, "Cardiomegaly;Dragons"))
_responses_case("an empty reader", "line 3, column reader", _replace(2, 2, " "))
_responses_case("answers to another kit", "column kit_key_sha256", _replace(1, 0, "f" * 64))
_responses_case("not UTF-8", "UTF-8", lambda k: _answers(k).encode("utf-16"))
_responses_case("a run with no reader-study key", "no reader-study key", lambda k: _answers(k), key=False)
_run_case("reader-study score: responses a folder", "--responses",
          lambda r, f: _reader_key(r) and (f / "folder.csv").mkdir() or
          ["reader-study", "score", "--run", r, "--responses", f / "folder.csv"])
_run_case("reader-study export: --out the run itself", "outside the run",
          lambda r, f: ["reader-study", "export", "--run", r, "--out", r])
_run_case("reader-study export: --out a file", "is a file",
          lambda r, f: ["reader-study", "export", "--run", r, "--out", _write(f, "x", "kit.txt")])
_run_case("reader-study export: --synthetic-fraction 2", "--synthetic-fraction",
          lambda r, f: ["reader-study", "export", "--run", r, "--out", f / "kit", "--synthetic-fraction", "2"])



# ---------------------------------------------------------------------------------------------------------
# Data integrity the data sheet checks: a test image that nearly duplicates a training image

def _near_duplicate(folder: Path, base) -> tuple[list, str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,patient_id,split,view,Cardiomegaly,Pleural Effusion"]
    (folder / "images").mkdir()
    for k in range(36):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / f"images/{k}.png")
        rows.append(f"images/{k}.png,p{k},{('train', 'val', 'test')[k % 3]},PA,{k % 2},{(k // 2) % 2}")
    shutil.copyfile(folder / "images/0.png", folder / "images/2.png")  # a training image again, in the test split
    _write(folder, "\n".join(rows) + "\n")
    return ["audit", "--data", folder / "labels.csv", "--spec", _write(folder, SPEC, "spec.yaml"), "--model", base.model,
            "--card", base.card, "--out", folder / "run", "--no-cache"], "--allow-near-duplicates"


case("data integrity", "a test image copying a training image")(_near_duplicate)
