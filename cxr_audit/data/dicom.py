"""Reading DICOM radiographs: pixels as display values in [0, 1], and the equipment fields subgroup metrics use.

Decoding goes through pydicom's plugins: its own for uncompressed data, Pillow for 8-bit JPEG, and GDCM
(python-gdcm, installed with cxr-audit) for JPEG Lossless, JPEG-LS, JPEG 2000 and RLE. 12-bit JPEG Extended
needs pylibjpeg-libjpeg, which is GPLv3 and therefore opt-in (`pip install 'cxr-audit[gpl-decoders]'`).
Colour encodings (PALETTE COLOR, RGB, YBR) are converted to grey with ITU-R 601 luma, as colour PNG exports
are. No header field other than those needed for decoding, and the non-identifying equipment fields, is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_audit.errors import UserInputError

# What would decode each transfer syntax that the default install cannot (pydicom's names).
_DECODERS = {
    "JPEG Extended (Process 2 and 4)": "pylibjpeg with pylibjpeg-libjpeg for 12-bit data (GPLv3, not installed by "
                                       "default): pip install 'cxr-audit[gpl-decoders]'",
}
EQUIPMENT_FIELDS = ("Manufacturer", "ManufacturerModelName")  # identify a device type, never a person


def read_dicom(path: Path):
    """The dataset, also for a file without its file meta header (read anyway, its transfer syntax inferred
    from how the data set is encoded)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        dataset = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise UserInputError(f"DICOM {path} cannot be read ({type(error).__name__}: {str(error)[:160]}). Is the file "
                             "complete and a DICOM file?") from None
    meta = dataset.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = dataset.original_encoding
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return dataset


# The header fields that decoding reads as numbers (a value such as NumberOfFrames '1A' is named, not
# mistaken for a file cut short).
_IMAGE_HEADER_FIELDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
                        "PixelRepresentation", "NumberOfFrames")


def _check_image_header(dataset, path: Path) -> None:
    import warnings

    for keyword in _IMAGE_HEADER_FIELDS:
        if keyword not in dataset:
            continue
        with warnings.catch_warnings():  # pydicom warns about the invalid value it keeps as text
            warnings.simplefilter("ignore")
            value = dataset.data_element(keyword).value
        try:
            if value not in (None, ""):
                int(value)
        except (TypeError, ValueError):
            raise UserInputError(f"DICOM {path}: header field {keyword} is {value!r}, not a whole number, so the "
                                 "image cannot be decoded. Fix the header (or export the image again).") from None


def _missing_decoder(syntax_name: str) -> str | None:
    """What to install for a transfer syntax the default install cannot decode, when that decoder is absent
    (when it is installed and failed, the data is at fault, not the install)."""
    import importlib.util

    if syntax_name in _DECODERS and importlib.util.find_spec("libjpeg") is None:
        return _DECODERS[syntax_name]
    return None


def load_dicom(path: Path) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    dataset = read_dicom(path)
    if "PixelData" not in dataset:
        raise UserInputError(f"DICOM {path} holds no pixel data: a structured report, a header-only file, or a file "
                             f"cut short ({path.stat().st_size:,} bytes). Check that the file is complete.")
    syntax = dataset.file_meta.TransferSyntaxUID
    _check_image_header(dataset, path)
    try:
        pixels = dataset.pixel_array
    except ValueError as error:  # pydicom's message for pixel data shorter than the header says
        raise UserInputError(f"DICOM {path} has less pixel data than its header describes ({str(error)[:120]}): the "
                             "file was cut short. Copy it again.") from None
    except (RuntimeError, NotImplementedError, AttributeError) as error:
        decoder = _missing_decoder(syntax.name) or ("the decoders installed (python-gdcm, Pillow, and any opt-in "
                                                    "one) all failed on it, so the data is probably damaged")
        raise UserInputError(f"DICOM {path} uses transfer syntax {syntax.name} ({syntax}), which could not be decoded: "
                             f"{decoder}. ({str(error).splitlines()[-1][:160]})") from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)  # indices -> RGB through the palette
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UserInputError(f"DICOM {path} holds {frames} frames; a single-frame radiograph is expected.")
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB (pydicom converts YBR to RGB): grey by luma
        pixels = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return _rescale(pixels)
    if pixels.ndim != 2:
        raise UserInputError(f"DICOM {path} has pixel array shape {pixels.shape}; a single-frame grayscale "
                             "radiograph is expected.")
    bits_stored = int(getattr(dataset, "BitsStored", 0) or 0)
    if bits_stored and dataset.get("PixelRepresentation", 0) == 0 and pixels.dtype.kind == "u":
        pixels = pixels & ((1 << bits_stored) - 1)  # bits above BitsStored may hold overlays or noise
    values = apply_modality_lut(pixels, dataset)
    values = apply_voi_lut(values, dataset, prefer_lut=True)
    values = _rescale(np.asarray(values))
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    return values


def equipment(path: Path) -> dict[str, str | None]:
    """The device fields of a DICOM header (manufacturer and model), for subgroup metrics; nothing else."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(EQUIPMENT_FIELDS), force=True)
    except Exception:  # noqa: BLE001 - an unreadable header leaves the subgroup unknown; decoding reports it
        return {field: None for field in EQUIPMENT_FIELDS}
    return {field: (str(dataset.get(field)).strip() or None) if dataset.get(field) is not None else None
            for field in EQUIPMENT_FIELDS}


def _rescale(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)
