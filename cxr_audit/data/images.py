"""Reading radiographs as float arrays in [0, 1], display polarity (air dark, bone bright).

DICOM needs care: the modality LUT and VOI LUT (window) must be applied, MONOCHROME1 images are inverted
(their low values are white), and only `BitsStored` bits carry signal. No header field other than what
decoding needs is read, so no patient identifier can leak from here.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_audit.data.dicom import load_dicom
from cxr_audit.errors import UserInputError

DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:  # DICOM Part 10: 128-byte preamble then 'DICM'
        handle.seek(128)
        return handle.read(4) == b"DICM"


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit (or 16-bit) greyscale array as PNG bytes, with no ancillary chunk (no text, time or gamma)."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def load_image(path: str | Path) -> np.ndarray:
    """A 2-D float32 array in [0, 1] for a DICOM, PNG (8/16 bit) or JPEG radiograph."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"Image {path} does not exist. Check the dataset root and the labels file's paths.")
    try:
        pixels = load_dicom(path) if is_dicom(path) else _load_bitmap(path)
    except UserInputError:
        raise
    except Exception as exc:  # any decoder failure is a bad file, not a bug of ours
        raise UserInputError(f"Image {path} cannot be decoded: {type(exc).__name__}: {exc}. "
                             "Is the file complete and a supported format (DICOM, PNG, JPEG)?") from None
    return pixels


def _full_scale(array: np.ndarray) -> float:
    """The white level of a 16-bit container: CR/DX detectors store 10, 12 or 14 significant bits in it, and
    dividing a 12-bit image by 65535 reads it nearly black. The smallest of those depths that holds every value
    is taken (PNG's sBIT chunk, which would say it, is not exposed by Pillow)."""
    peak = float(array.max()) if array.size else 0.0
    bits = next((b for b in (10, 12, 14) if peak <= 2**b - 1), 16)
    return float(2**bits - 1)


@contextmanager
def _truncated_images_refused():
    """Pillow decodes a truncated file without error when ImageFile.LOAD_TRUNCATED_IMAGES is set, and importing
    weasyprint (the report) sets it for the whole process: a cut-off radiograph would silently become a partly
    grey image. Decoding here always refuses truncated files."""
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _load_bitmap(path: Path) -> np.ndarray:
    with _truncated_images_refused(), Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit PNGs: keep full depth; scale by the detector's range, not by the image's own min/max.
            array = np.asarray(image, dtype=np.float32)
            return np.clip(array / _full_scale(array), 0.0, 1.0)
        if image.mode not in ("L", "LA"):
            image = image.convert("L")  # RGB exports of grayscale films; ITU-R 601 luma
        return np.asarray(image.getchannel(0) if image.mode == "LA" else image, dtype=np.float32) / 255.0


def load_resized(path: str | Path, size: int) -> np.ndarray:
    """A radiograph as float32 (size, size) in [0, 1], resized with area averaging (bilinear for upsizing)."""
    pixels = load_image(path)
    if pixels.shape == (size, size):
        return pixels
    image = Image.fromarray(pixels, mode="F")
    method = Image.Resampling.BOX if min(pixels.shape) >= size else Image.Resampling.BILINEAR
    return np.asarray(image.resize((size, size), method), dtype=np.float32)
