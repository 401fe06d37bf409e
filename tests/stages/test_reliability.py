"""The issue's named cases of bad input, checked one by one beyond the fuzz suite's exit-code contract."""

import pytest

from cxr_audit.errors import UserInputError
from cxr_audit.rundir import RunDir, SynthesisLayout, safe_name


@pytest.mark.parametrize("name", ["../../x", "a/b", "", ".", "..", "x\0y", "/etc/passwd"])
def test_a_name_from_a_document_never_leads_outside_its_folder(tmp_path, name):
    layout = SynthesisLayout(tmp_path / "synthetic")
    for method in (layout.image, layout.mask, layout.record, layout.dicom):
        with pytest.raises(UserInputError, match="not a plain name"):
            method(name)
    with pytest.raises(UserInputError):
        safe_name(name, "edit id")
    with pytest.raises(UserInputError):
        layout.manifest_image(f"images/{name}.png" if name else "../x.png")


def test_a_nan_model_and_a_patient_in_two_splits_write_nothing(phantom_dataset, tmp_path, run_cli):
    import pandas as pd
    import torch
    from torch import nn

    class NaN(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x.mean(dim=(2, 3)).repeat(1, 8)
            return out / (out - out)

    model = tmp_path / "nan.ts"
    torch.jit.script(NaN()).save(str(model))
    card = "input_size: 64\noutput_names: [Cardiomegaly, Pleural Effusion, Pneumothorax, Consolidation, Edema, " \
           "Atelectasis, Nodule, Support Devices]\n"
    model.with_name("nan.ts.card.yaml").write_text(card)
    result = run_cli("evaluate", "--model", model, "--data", phantom_dataset / "labels.csv", "--out", tmp_path / "a",
                     "--mc-samples", 0, "--no-cache")
    assert result.exit_code == 2 and "NaN" in result.output
    assert not (tmp_path / "a").exists()

    frame = pd.read_csv(phantom_dataset / "labels.csv")
    test_patient = frame.loc[frame["split"] == "test", "patient_id"].iloc[0]
    frame.loc[frame.index[0], ["patient_id", "split"]] = [test_patient, "train"]
    leaking = phantom_dataset / "leaking.csv"  # beside the images, so paths resolve
    frame.to_csv(leaking, index=False)
    try:
        for command in (["coverage", "--spec", "coverage_specs/phantom.yaml"], ["plan", "--spec", "coverage_specs/phantom.yaml"],
                        ["evaluate", "--model", model]):
            result = run_cli(*command, "--data", leaking, "--out", tmp_path / "b")
            assert result.exit_code == 2 and "more than one split" in result.output and test_patient in result.output
            assert not (tmp_path / "b").exists()
    finally:
        leaking.unlink()


def test_twelve_bit_images_in_sixteen_bit_pngs_are_read_at_their_depth(tmp_path):
    import numpy as np
    from PIL import Image

    from cxr_audit.data.images import load_image

    values = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)  # a 12-bit detector's range
    Image.fromarray(values).save(tmp_path / "twelve.png")
    image = load_image(tmp_path / "twelve.png")
    assert image.max() == pytest.approx(1.0) and image.mean() == pytest.approx(0.5, abs=0.01)


def test_truncated_images_are_refused_even_after_weasyprint_is_imported(tmp_path):
    import numpy as np
    import weasyprint  # noqa: F401 - it sets Pillow's LOAD_TRUNCATED_IMAGES for the whole process
    from PIL import Image, ImageFile

    from cxr_audit.data.images import load_image

    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])
    assert ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(UserInputError, match="truncated"):
        load_image(tmp_path / "cut.png")


def test_error_messages_are_printed_as_written(tmp_path, run_cli):
    """Square brackets in a user's file name are not markup: the name is printed whole."""
    result = run_cli("coverage", "--data", tmp_path / "labels[v2].csv", "--spec", "coverage_specs/phantom.yaml",
                     "--out", tmp_path / "run")
    assert result.exit_code == 2 and "labels[v2].csv" in result.output
    assert RunDir(tmp_path / "run").path.exists() is False
