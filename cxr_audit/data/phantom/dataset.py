"""A phantom dataset on disk: patients, studies, joint prevalence control, CheXpert-format labels, masks.

Layout of the output folder::

    labels.csv                      CheXpert columns + patient_id, study, split, seeds, ground-truth CTR
    images/patient00001/study1/view1_frontal.png   (or .dcm with --dicom)
    masks/patient00001/study1/view1_frontal/{lung_right,lung_left,heart,mediastinum,<finding>}.png
    phantom.json                    generator version, seed, size, prevalence, counts
    samples_grid.png                16 labelled samples: normal and each finding

The scenario (`Prevalence`, the `--prevalence` YAML) sets, per split, how often each finding and each
combination occurs (so that a cell, say Pleural Effusion + Cardiomegaly, can be rare in training and common
in the test split), findings that depend on another (a confounder: Support Devices with Effusion in ICU
films), and how findings look (`appearance`: difficulty, and the silhouette sign between fluid and the heart).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxr_audit import concepts
from cxr_audit.data import phantom
from cxr_audit.data.phantom.scenario import (  # noqa: F401 - the scenario's names, where callers import them
    SPLIT_NAMES,
    AppearanceSettings,
    Combination,
    Dependence,
    Prevalence,
    load_prevalence,
)
from cxr_audit.errors import UserInputError
from cxr_audit.progress import progress_bar
from cxr_audit.provenance import atomic_write_json, atomic_write_text

PHANTOM_VERSION = "1"
MADE_UP_NAMES = ("DOE^JANE", "ROE^RICHARD", "PUBLIC^JOHN", "SMITH^ALEX", "MUSTERMANN^ERIKA", "DUPONT^MARIE")
_RULES = concepts.RuleSet()

# ---------------------------------------------------------------------------------------------------------
# Cohort


def plan_cohort(n_images: int, prevalence: Prevalence, seed: int) -> pd.DataFrame:
    """One row per study: who, which split, which findings, and the seeds that render it."""
    rng = np.random.default_rng(seed)
    appearance = prevalence.appearance.to_appearance()
    lo, hi = prevalence.studies_per_patient
    per_patient: list[int] = []
    while sum(per_patient) < n_images:
        per_patient.append(min(int(rng.integers(lo, hi + 1)), n_images - sum(per_patient)))
    n_patients = len(per_patient)
    order = rng.permutation(n_patients)
    bounds = np.round(np.cumsum(list(prevalence.splits.values())) * n_patients).astype(int)
    split_of = np.empty(n_patients, dtype=object)
    start = 0
    for name, stop in zip(prevalence.splits, bounds):
        split_of[order[start:stop]] = name
        start = stop

    rows = []
    for p, n_studies in enumerate(per_patient):
        sex = "M" if rng.random() < 0.5 else "F"
        age = int(rng.integers(20, 91))
        patient_seed = int(rng.integers(2**31))
        for s in range(n_studies):
            present = prevalence.sample_present(rng, split_of[p])
            rows.append({
                "patient_id": f"patient{p + 1:05d}", "study": s + 1, "split": split_of[p], "sex": sex,
                "age": age + s, "view": "AP" if rng.random() < prevalence.ap_fraction else "PA",
                "patient_seed": patient_seed, "study_seed": int(rng.integers(2**31)),
                "present": sorted(present), **appearance_columns(appearance),
            })
    return pd.DataFrame(rows)


def study_of(row: pd.Series | dict) -> phantom.Study:
    """Rebuild a study from a row of the cohort or of labels.csv."""
    present = row["present"] if "present" in row else [
        f for f in phantom.PHANTOM_FINDINGS if float(row[f]) == 1.0]
    sex = row["sex"] if row.get("sex") in ("M", "F") else ("M" if str(row.get("Sex")) == "Male" else "F")
    return phantom.make_study(row["patient_id"], int(row["study"]), sex, int(row["patient_seed"]),
                              int(row["study_seed"]), set(present), appearance_of(row))


# labels.csv columns that record each row's appearance (absent in datasets written before they existed)
APPEARANCE_COLUMNS = {"silhouette": "silhouette", "finding_contrast": "contrast",
                      "severity_min": "severity_min", "severity_max": "severity_max"}


def appearance_columns(appearance: phantom.Appearance) -> dict:
    return {column: (int(getattr(appearance, field)) if field == "silhouette" else getattr(appearance, field))
            for column, field in APPEARANCE_COLUMNS.items()}


def appearance_of(row: pd.Series | dict) -> phantom.Appearance:
    values = {field: row[column] for column, field in APPEARANCE_COLUMNS.items()
              if column in row and not pd.isna(row[column])}
    if "silhouette" in values:
        values["silhouette"] = bool(int(values["silhouette"]))
    return phantom.Appearance(**{k: (v if k == "silhouette" else float(v)) for k, v in values.items()})


def mask_slug(name: str) -> str:
    return name.lower().replace(" ", "_")


# ---------------------------------------------------------------------------------------------------------
# Writing


def _write_one(job: tuple[dict, str, int, bool]) -> dict:
    """Render one study and write its image and masks (runs in worker processes)."""
    row, out, size, dicom = job
    out_path = Path(out)
    rendered = phantom.render(study_of(row), size)
    stem = f"{row['patient_id']}/study{row['study']}/view1_frontal"
    image_rel = f"images/{stem}.{'dcm' if dicom else 'png'}"
    (out_path / image_rel).parent.mkdir(parents=True, exist_ok=True)
    pixels = np.round(rendered.image * 255).astype(np.uint8)
    if dicom:
        _write_dicom(out_path / image_rel, pixels, row)
    else:
        Image.fromarray(pixels).save(out_path / image_rel, optimize=False)
    mask_dir = out_path / "masks" / stem
    mask_dir.mkdir(parents=True, exist_ok=True)
    for name, mask in rendered.masks.items():
        Image.fromarray((mask * 255).astype(np.uint8)).save(mask_dir / f"{mask_slug(name)}.png")
    return {"Path": image_rel, "ctr": round(phantom.cardiothoracic_ratio(rendered.masks), 4)}


def _write_dicom(path: Path, pixels: np.ndarray, row: dict) -> None:
    """A DX DICOM with made-up patient name and id, so that PHI handling can be tested end to end."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    # UIDs derived from the seeds keep the output deterministic.
    uid = lambda kind: generate_uid(entropy_srcs=[kind, str(row["patient_seed"]), str(row["study_seed"])])  # noqa: E731
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - Presentation
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    number = int(row["patient_id"].removeprefix("patient"))
    ds.PatientName = MADE_UP_NAMES[number % len(MADE_UP_NAMES)]
    ds.PatientID = f"PHANTOM-{number:05d}-MRN"
    ds.PatientSex = row["sex"]
    ds.PatientAge = f"{int(row['age']):03d}Y"
    ds.PatientBirthDate = f"{1990 - int(row['age']) % 60}0101"
    ds.InstitutionName = "Phantom General Hospital"
    # Made-up devices, two models, so that device subgroups can be tested (never a real vendor's name).
    ds.Manufacturer = "Phantom Imaging"
    ds.ManufacturerModelName = ("PX-100", "PX-200")[number % 2]
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", row["view"], "CHEST"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def labels_frame(cohort: pd.DataFrame, written: list[dict]) -> pd.DataFrame:
    """labels.csv in CheXpert's format (1.0 / 0.0), parents set per the CheXpert hierarchy."""
    rows = []
    for (_, study), files in zip(cohort.iterrows(), written):
        present = set(study["present"])
        labels = {name: 0.0 for name in concepts.CHEXPERT_14}
        for name in _RULES.implied_positives(present):  # parents per the CheXpert hierarchy
            labels[name] = 1.0
        pathology = present - {"Support Devices"}
        labels[concepts.NO_FINDING] = 0.0 if pathology else 1.0
        labels["Nodule"] = 1.0 if "Nodule" in present else 0.0  # NIH's finding, kept beside Lung Lesion
        rows.append({
            "Path": files["Path"], "Sex": "Male" if study["sex"] == "M" else "Female", "Age": study["age"],
            "Frontal/Lateral": "Frontal", "AP/PA": study["view"], **labels,
            "patient_id": study["patient_id"], "study": study["study"], "split": study["split"],
            "patient_seed": study["patient_seed"], "study_seed": study["study_seed"], "ctr": files["ctr"],
            **{column: study[column] for column in APPEARANCE_COLUMNS},
        })
    return pd.DataFrame(rows)


def reports_frame(labels: pd.DataFrame) -> pd.DataFrame:
    """reports.csv: each image's radiology-style report (phantom/reports.py) with the columns a labels file
    needs besides its concepts, so `label-reports` on it gives a dataset `--format csv` reads."""
    from cxr_audit.data.phantom.reports import study_report

    texts = [study_report(study_of(row), int(row["study_seed"]))[0] for _, row in labels.iterrows()]
    return pd.DataFrame({"Path": labels["Path"], "patient_id": labels["patient_id"], "split": labels["split"],
                         "Sex": labels["Sex"], "Age": labels["Age"], "AP/PA": labels["AP/PA"], "report": texts})


def write_phantom_dataset(out: str | Path, n_images: int, size: int = 128, seed: int = 0,
                          prevalence: Prevalence | None = None, dicom: bool = False,
                          workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Generate and write a phantom dataset; returns the labels frame (also in out/labels.csv)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; the phantom needs a folder. Choose a new --out.")
    if (out / "labels.csv").exists():
        raise UserInputError(f"{out} already holds a phantom dataset (labels.csv). Choose a new --out; a "
                             "dataset is never overwritten.")
    if not 1 <= n_images <= 1_000_000 or not 32 <= size <= 2048:
        raise UserInputError(f"--n must be 1 to 1,000,000 and --size 32 to 2048 (got {n_images}, {size}).")
    prevalence = prevalence or Prevalence()
    cohort = plan_cohort(n_images, prevalence, seed)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(row, str(out), size, dicom) for row in cohort.to_dict("records")]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    bar = dict(total=len(jobs), desc=f"phantom {size}px", unit="img", disable=not progress)
    if workers > 1 and len(jobs) >= 64:
        with ProcessPoolExecutor(workers) as pool:
            written = list(progress_bar(pool.map(_write_one, jobs, chunksize=16), **bar))
    else:
        written = [_write_one(job) for job in progress_bar(jobs, **bar)]
    frame = labels_frame(cohort, written)
    atomic_write_text(out / "reports.csv", reports_frame(frame).to_csv(index=False))
    atomic_write_text(out / "labels.csv", frame.to_csv(index=False))
    save_samples_grid(out / "samples_grid.png", size=size, seed=seed, appearance=prevalence.appearance.to_appearance())
    atomic_write_json(out / "phantom.json", {
        "generator": "cxr-audit phantom", "phantom_version": PHANTOM_VERSION, "seed": seed, "size": size,
        "n_images": len(frame), "n_patients": int(frame["patient_id"].nunique()), "dicom": dicom,
        "prevalence": prevalence.model_dump(mode="json"),
        "counts": {split: {f: int(frame.loc[frame["split"] == split, f].sum()) for f in phantom.PHANTOM_FINDINGS}
                   for split in SPLIT_NAMES},
    })
    return frame


def save_samples_grid(path: str | Path, size: int = 128, seed: int = 0,
                      appearance: phantom.Appearance | None = None) -> None:
    """16 labelled samples: two normal studies, each finding alone, and six combinations."""
    import matplotlib.pyplot as plt

    from cxr_audit.plots import save_png

    findings = phantom.PHANTOM_FINDINGS
    cases: list[set[str]] = [set(), set(), *({f} for f in findings),
                             {"Cardiomegaly", "Pleural Effusion"}, {"Edema", "Cardiomegaly"},
                             {"Pneumothorax", "Support Devices"}, {"Consolidation", "Pleural Effusion"},
                             {"Atelectasis", "Nodule"}, {"Edema", "Pleural Effusion", "Support Devices"}]
    rng = np.random.default_rng(seed)
    figure, axes = plt.subplots(4, 4, figsize=(10, 10.8))
    for k, (axis, present) in enumerate(zip(axes.flat, cases)):
        sex = "M" if k % 2 else "F"
        study = phantom.make_study(f"sample{k}", 1, sex, int(rng.integers(2**31)), int(rng.integers(2**31)), present,
                                   appearance or phantom.Appearance())
        axis.imshow(phantom.render(study, size).image, cmap="gray", vmin=0, vmax=1)
        axis.set_title(" + ".join(sorted(present)) or "No Finding", fontsize=7)
        axis.axis("off")
    figure.suptitle("Procedural chest X-ray phantom: samples", fontsize=11)
    figure.tight_layout()
    save_png(figure, path)


def phantom_prevalence_summary(frame: pd.DataFrame) -> str:
    lines = []
    for split in SPLIT_NAMES:
        part = frame[frame["split"] == split]
        counts = ", ".join(f"{f} {int(part[f].sum())}" for f in phantom.PHANTOM_FINDINGS)
        lines.append(f"{split}: {len(part)} images, {part['patient_id'].nunique()} patients; {counts}")
    return "\n".join(lines)
