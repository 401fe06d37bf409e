"""Real files decode to display polarity (air dark) and the right orientation."""

import numpy as np
import pytest
from PIL import Image

from cxr_audit.data.images import load_image
from cxr_audit.errors import UserInputError

SIIM_DICOM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def regions(image):
    h, w = image.shape
    return {
        "mediastinum": image[h // 4: 3 * h // 4, 2 * w // 5: 3 * w // 5].mean(),
        "right_lung": image[h // 4: h // 2, w // 8: w // 3].mean(),
        "left_lung": image[h // 4: h // 2, 2 * w // 3: 7 * w // 8].mean(),
        "abdomen": image[7 * h // 8:, :].mean(),
    }


@pytest.mark.parametrize("name", [SIIM_DICOM, "00000001_000.png", "00027426_000.png", "16747_3_1.jpg"])
def test_real_radiographs_have_display_polarity_and_upright_orientation(shared_data, name):
    image = load_image(shared_data / "real_images" / name)
    assert image.ndim == 2 and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    r = regions(image)
    lungs = min(r["right_lung"], r["left_lung"])  # the clearer lung: one may hold an opacity
    assert r["mediastinum"] > lungs + 0.05, r   # bone/soft tissue brighter than air: not inverted
    assert r["abdomen"] > lungs, r               # abdomen at the bottom: not upside down


def test_jpeg_compressed_dicom_decodes_at_full_size(shared_data):
    assert load_image(shared_data / "real_images" / SIIM_DICOM).shape == (1024, 1024)


def test_monochrome1_is_inverted(shared_data):
    # The fake file is the same pixels tagged MONOCHROME1: honouring the tag must invert them.
    normal = load_image(shared_data / "real_images" / SIIM_DICOM)
    tagged = load_image(shared_data / "real_images" / "Fake_MONOHR1.dcm")
    assert np.allclose(tagged, 1.0 - normal, atol=1e-6)


def test_sixteen_bit_png_keeps_its_depth(tmp_path):
    values = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert len(np.unique(image)) > 256  # more levels than 8 bits could carry
    assert np.allclose(image, values / 65535.0, atol=1e-6)


def test_missing_and_corrupt_files_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_image(tmp_path / "absent.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserInputError, match="cannot be decoded"):
        load_image(tmp_path / "broken.png")
