"""The phantom's scenario knobs: coverage failures as they occur in real films (interaction, confounding,
difficulty), each recorded in labels.csv so rows re-render exactly and counterfactuals stay exact."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from cxr_audit.data import phantom
from cxr_audit.data.phantom.dataset import (
    AppearanceSettings,
    Combination,
    Prevalence,
    study_of,
    write_phantom_dataset,
)
from cxr_audit.stages.demo import DEMO_SCENARIO

SILHOUETTE = phantom.Appearance(silhouette=True)


def _rate(prevalence: Prevalence, split: str, n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [prevalence.sample_present(rng, split) for _ in range(n)]
    return pd.DataFrame([{f: f in present for f in phantom.PHANTOM_FINDINGS} for present in rows])


def test_dependence_plants_a_confounder_in_training_only():
    drawn = _rate(DEMO_SCENARIO, "train")
    effusion, devices = drawn["Pleural Effusion"], drawn["Support Devices"]
    assert devices[effusion].mean() == pytest.approx(0.95, abs=0.04)
    assert devices[~effusion].mean() == pytest.approx(0.05, abs=0.02)
    test = _rate(DEMO_SCENARIO, "test")
    # at the deployment site devices and effusion are independent
    assert test["Support Devices"][test["Pleural Effusion"]].mean() == pytest.approx(0.25, abs=0.05)
    assert test["Support Devices"][~test["Pleural Effusion"]].mean() == pytest.approx(0.25, abs=0.03)


def test_a_combination_left_null_in_a_split_keeps_findings_independent():
    scenario = Prevalence(findings={"Cardiomegaly": 0.5, "Pleural Effusion": 0.5},
                          combinations=[Combination(all_of=["Cardiomegaly", "Pleural Effusion"],
                                                    probability={"train": 0.0, "test": None})])
    assert (_rate(scenario, "train")[["Cardiomegaly", "Pleural Effusion"]].all(axis=1)).mean() == 0
    both = _rate(scenario, "test")[["Cardiomegaly", "Pleural Effusion"]].all(axis=1).mean()
    assert both == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("bad", [
    {"appearance": {"severity": [0.8, 0.2]}},
    {"appearance": {"contrast": 0}},
    {"dependencies": [{"finding": "Not A Finding", "on": "Pleural Effusion", "if_present": 1, "if_absent": 0}]},
    {"dependencies": [{"finding": "Support Devices", "on": "Pleural Effusion", "if_present": 1.5, "if_absent": 0}]},
])
def test_bad_scenarios_are_refused(bad):
    with pytest.raises(ValidationError):
        Prevalence.model_validate(bad)


def _heart_border_contrast(image: np.ndarray, study: phantom.Study, size: int) -> float:
    """Mean intensity step across the heart's right border (patient's right: image left), at the heart's lower
    half, where an effusion tracks up beside it."""
    rendered = phantom.render(study, size)
    heart = rendered.masks["heart"]
    rows = np.flatnonzero(heart.any(axis=1))
    steps = []
    for y in rows[len(rows) // 2:]:
        x = int(np.flatnonzero(heart[y])[0])
        if x >= 3:
            steps.append(image[y, x + 2] - image[y, x - 3])
    return float(np.mean(steps))


def test_silhouette_sign_effaces_the_heart_border_next_to_an_effusion():
    size = 128
    base = phantom.make_study("p", 1, "F", 11, 22, {"Cardiomegaly", "Pleural Effusion"}, SILHOUETTE)
    right = replace(base.findings, side={**base.findings.side, "Pleural Effusion": "right"})
    base = replace(base, findings=right)
    without = phantom.counterfactual(base, remove="Pleural Effusion")
    effaced = _heart_border_contrast(phantom.render(base, size).image, base, size)
    visible = _heart_border_contrast(phantom.render(without, size).image, without, size)
    assert visible > 0.05          # the heart is brighter than the lung beside it
    assert effaced < 0.5 * visible  # fluid as dense as the heart: the border disappears
    # the same study without the interaction keeps its border
    plain = replace(base, findings=replace(base.findings, appearance=phantom.Appearance()))
    assert _heart_border_contrast(phantom.render(plain, size).image, plain, size) > effaced


def test_contrast_makes_findings_subtler_and_severity_follows_its_range():
    loud = phantom.make_study("p", 1, "M", 5, 6, {"Pleural Effusion", "Consolidation"})
    quiet = phantom.make_study("p", 1, "M", 5, 6, {"Pleural Effusion", "Consolidation"}, phantom.Appearance(contrast=0.5))
    normal = phantom.render(phantom.make_study("p", 1, "M", 5, 6, set()), 64).image
    assert np.abs(phantom.render(quiet, 64).image - normal).mean() < np.abs(phantom.render(loud, 64).image - normal).mean()
    narrow = phantom.make_study("p", 1, "M", 5, 6, {"Nodule"}, phantom.Appearance(severity_min=0.3, severity_max=0.35))
    assert all(0.3 <= v <= 0.35 for v in narrow.findings.severity.values())


def test_scenario_is_recorded_per_row_and_rows_render_again_exactly(tmp_path):
    scenario = Prevalence(findings={"Cardiomegaly": 0.5, "Pleural Effusion": 0.6, "Support Devices": 0.3},
                          appearance=AppearanceSettings(silhouette=True, contrast=0.7, severity=(0.3, 1.0)))
    frame = write_phantom_dataset(tmp_path / "d", 12, size=64, seed=3, prevalence=scenario, workers=1, progress=False)
    on_disk = pd.read_csv(tmp_path / "d" / "labels.csv")
    assert set(on_disk["silhouette"]) == {1} and set(on_disk["finding_contrast"]) == {0.7}
    for _, row in on_disk.iterrows():
        written = np.asarray(Image.open(tmp_path / "d" / row["Path"]), dtype=np.float32) / 255
        again = phantom.render(study_of(row), 64).image
        assert np.abs(written - again).max() <= 1 / 255 + 1e-6
    assert len(frame) == 12
    # a counterfactual of a recorded row keeps its appearance
    row = on_disk.iloc[0]
    assert phantom.counterfactual(study_of(row), add="Nodule").findings.appearance == study_of(row).findings.appearance
