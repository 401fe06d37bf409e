"""Synthetic images as DICOM when the source was DICOM: derived, marked synthetic, with no source PHI.

Nothing is copied from the source header: patient, study and institution fields are new and say they are
synthetic, so the file can travel without the source's protected health information. What the tool does
keep is provenance: the source image's SHA-256 (not its UIDs) and the edit, in the derivation description.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_synthetic_dicom(path: Path, pixels: np.ndarray, edit_id: str, description: str, view: str | None) -> None:
    """Write `pixels` (uint8, H x W) as a Secondary Capture marked DERIVED / synthetic."""
    def fill(ds) -> None:
        ds.PatientName = "SYNTHETIC^CXR-AUDIT"
        ds.PatientID = f"SYNTHETIC-{edit_id}"
        if view:
            ds.ViewPosition = view
        ds.ConversionType = "SYN"                         # synthetic image (DICOM's own code for it)
        ds.ImageType = ["DERIVED", "SECONDARY", "SYNTHETIC"]
        ds.SeriesDescription = "cxr-audit synthetic edit"
        ds.DerivationDescription = description[:1024]

    _write_secondary_capture(path, pixels, lambda kind: ["cxr-audit-synthetic", kind, edit_id], fill)  # per edit


def write_reader_study_dicom(path: Path, pixels: np.ndarray, case_id: str, nonce: str) -> None:
    """A reader-study case as DICOM: the same header for a real and a synthetic case (nothing that tells them
    apart, nothing from any source), UIDs drawn from the kit's nonce and the case id."""
    def fill(ds) -> None:
        ds.PatientName = "READER^STUDY"
        ds.PatientID = case_id
        ds.ConversionType = "WSD"                         # workstation: the same for every case
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SeriesDescription = "reader study case"

    _write_secondary_capture(path, pixels, lambda kind: ["cxr-audit-reader-study", nonce, kind, case_id], fill)


def _write_secondary_capture(path: Path, pixels: np.ndarray, entropy, fill) -> None:
    """A Secondary Capture of `pixels` (uint8, H x W) with new UIDs (`entropy(kind)`: the sources each UID is
    drawn from), nothing copied from any source header; `fill(ds)` adds the patient, type and description."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = lambda kind: generate_uid(entropy_srcs=entropy(kind))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.Modality, ds.BodyPartExamined = "OT", "CHEST"
    ds.BurnedInAnnotation = "NO"
    fill(ds)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    tmp = path.with_name(f".{path.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
