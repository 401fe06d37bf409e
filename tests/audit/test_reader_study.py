"""The blinded reader study: choosing and scoring (planted readers), the kit as readers get it (nothing in it
unblinds a case), the scoring command, and the form in a real headless browser."""

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr_audit.audit.reader_study import (
    KeyCase,
    Response,
    SyntheticCandidate,
    agreement,
    choose_cases,
    detection_auroc,
    score_reader_study,
)

KEY = {f"c{i}": KeyCase("synthetic", "insert", "insert Cardiomegaly", ("Cardiomegaly",)) for i in range(20)}
KEY.update({f"r{i}": KeyCase("real") for i in range(20)})


def _answers(reader, judge, confidence=lambda case: 3, findings=lambda case: frozenset()):
    return [Response(case, reader, judge(case), confidence(case), findings(case)) for case in KEY]


def test_a_reader_who_calls_everything_real():
    results = score_reader_study(KEY, _answers("A", lambda case: "real"))
    fooled = results["overall"]["synthetic_judged_real"]
    assert fooled["value"] == 1.0 and fooled["n"] == 20 and fooled["ci_low"] < 1.0 and fooled["ci_high"] == 1.0
    assert results["overall"]["real_judged_real"]["value"] == 1.0
    assert results["by_reader"]["A"]["detection_auroc"]["value"] == 0.5  # one answer for all: no discrimination


def test_a_reader_with_the_key_detects_perfectly_and_two_identical_readers_agree():
    truth = lambda case: KEY[case].truth
    key_reader = _answers("K", truth, confidence=lambda case: 5)
    results = score_reader_study(KEY, key_reader)
    assert results["by_reader"]["K"]["detection_auroc"]["value"] == 1.0
    assert results["overall"]["synthetic_judged_real"]["value"] == 0.0
    twins = _answers("A", truth) + _answers("B", truth)
    assert agreement(twins) == {"method": "Cohen's kappa", "kappa": 1.0, "readers": 2, "cases": 40}
    triplets = twins + _answers("C", truth)
    assert agreement(triplets)["method"] == "Fleiss' kappa" and agreement(triplets)["kappa"] == 1.0
    # two readers who always disagree: kappa -1 (Cohen)
    flipped = _answers("A", truth) + _answers("B", lambda case: "real" if truth(case) == "synthetic" else "synthetic")
    assert agreement(flipped)["kappa"] == pytest.approx(-1.0)


def test_confidence_orders_the_detection_auroc():
    rng = np.random.default_rng(0)
    noisy = _answers("N", lambda case: "synthetic" if rng.uniform() < (0.8 if KEY[case].truth == "synthetic" else 0.2)
                     else "real", confidence=lambda case: int(rng.integers(1, 6)))
    auroc = detection_auroc(noisy, KEY)
    assert 0.6 < auroc["value"] < 1.0 and auroc["ci_low"] < auroc["value"] < auroc["ci_high"]


def test_finding_agreement_needs_the_shown_finding_and_not_the_removed_one():
    key = {"s": KeyCase("synthetic", "swap", "swap Pleural Effusion -> Pneumothorax", ("Pneumothorax",),
                        ("Pleural Effusion",)), "r": KeyCase("real")}
    def share(findings):
        responses = [Response("s", "A", "real", 3, frozenset(findings)), Response("r", "A", "real", 3, frozenset())]
        return score_reader_study(key, responses)["overall"]["finding_agreement"]["value"]
    assert share({"Pneumothorax"}) == 1.0
    assert share({"Pneumothorax", "Pleural Effusion"}) == 0.0  # still sees the finding the edit removed
    assert share(set()) == 0.0


def test_cases_are_drawn_evenly_across_edits_and_never_with_their_source():
    synthetic = [SyntheticCandidate(f"E{i:03d}", f"img{i}", KeyCase("synthetic", "insert", edit, ("X",)))
                 for i, edit in enumerate(["insert A"] * 30 + ["delete B"] * 3 + ["insert C"] * 5)]
    real = [f"img{i}" for i in range(80)]
    cases, notes = choose_cases(synthetic, real, 20, 0.5, seed=4)
    edits = [case.edit for _, case, _ in cases if case.truth == "synthetic"]
    assert len(edits) == 10 and edits.count("delete B") == 3 and edits.count("insert C") >= 3
    sources = {f"img{int(shown[1:])}" for _, case, shown in cases if case.truth == "synthetic"}
    assert not sources & {shown for _, case, shown in cases if case.truth == "real"}
    assert [c for c, _, _ in cases] == [f"case_{i:04d}" for i in range(1, 21)] and not notes
    assert choose_cases(synthetic, real, 20, 0.5, seed=4) == (cases, notes)  # seeded
    paired, _ = choose_cases(synthetic, real, 20, 0.5, seed=4, pairs=True)
    paired_sources = {f"img{int(shown[1:])}" for _, case, shown in paired if case.truth == "synthetic"}
    assert paired_sources == {shown for _, case, shown in paired if case.truth == "real"}
    few, notes = choose_cases(synthetic[:2], real, 20, 0.5, seed=0)
    assert sum(case.truth == "synthetic" for _, case, _ in few) == 2 and "only 2 accepted edits" in notes[0]


# -- the kit and the commands, on an audited phantom run -----------------------------------------------------------
@pytest.fixture(scope="module")
def kit_run(audit_run, tmp_path_factory):
    """A copy of the audited run (the reader study re-assembles its audit) and a kit exported from it. The tests'
    generator has no skill, so QC rejected its edits: the copy's records are marked accepted, so that the kit
    has synthetic cases to hide (what is tested here is the kit, not QC)."""
    from typer.testing import CliRunner

    from cxr_audit.cli import app

    folder = tmp_path_factory.mktemp("reader_study")
    run = folder / "run"
    shutil.copytree(audit_run[0], run)
    for record in (run / "synthetic" / "records").glob("*.json"):
        document = json.loads(record.read_text())
        document["qc"]["passed"] = True
        record.write_text(json.dumps(document))
    kit = folder / "kit"
    result = CliRunner().invoke(app, ["reader-study", "export", "--run", str(run), "--out", str(kit), "--n", "12",
                                      "--seed", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run, kit


def _key(run: Path) -> dict:
    return json.loads((run / "reader_study" / "key.json").read_text())


def _png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        chunks.append(data[offset + 4:offset + 8].decode())
        offset += 12 + length
    return chunks


def test_the_kit_carries_nothing_that_unblinds_a_case(kit_run, phantom_dataset):
    import hashlib

    import pandas as pd

    run, kit = kit_run
    key = _key(run)
    cases = sorted(key["cases"])
    assert sorted(p.stem for p in (kit / "images").iterdir()) == cases
    assert {e["truth"] for e in key["cases"].values()} == {"real", "synthetic"}
    # what could link a case to its source or its truth: ids, file names, hashes, patient ids, run paths
    records = [json.loads(p.read_text()) for p in (run / "synthetic" / "records").glob("*.json")]
    labels = pd.read_csv(phantom_dataset / "labels.csv")
    secrets = {e.get("edit_id") or e.get("image_id") for e in key["cases"].values()}
    secrets |= {r["edit_id"] for r in records} | {r["source_sha256"] for r in records}
    secrets |= {r["source_image_id"] for r in records} | set(labels["patient_id"].astype(str))
    secrets |= {Path(p).name for p in labels["Path"]} | {str(run), "source", "edit_id", "truth"}
    secrets |= {hashlib.sha256(p.read_bytes()).hexdigest() for p in (run / "synthetic" / "images").glob("*.png")}
    for path in kit.rglob("*"):
        if path.is_dir():
            continue
        assert re.fullmatch(r"case_\d{4}\.png|form\.html|kit\.json|responses_template\.csv", path.name), path.name
        if path.suffix == ".png":
            assert _png_chunks(path.read_bytes()) == ["IHDR", "IDAT", "IEND"]  # no text, time or other chunk
            continue
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", path.read_text())  # the images: checked above
        for secret in secrets:
            assert secret.lower() not in text.lower(), (path.name, secret)
    manifest = json.loads((kit / "kit.json").read_text())
    assert manifest["key_sha256"] == hashlib.sha256((run / "reader_study" / "key.json").read_bytes()).hexdigest()
    assert manifest["cases"] == cases
    uris = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", (kit / "form.html").read_text())
    import base64

    assert sorted(base64.b64decode(u) for u in uris) == sorted((kit / "images" / f"{c}.png").read_bytes() for c in cases)


def _write_answers(path: Path, kit: Path, reader: str, judge) -> Path:
    manifest = json.loads((kit / "kit.json").read_text())
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kit_key_sha256", "case_id", "reader", "judged", "confidence", "findings"])
        for case in manifest["cases"]:
            judged, confidence, findings = judge(case)
            writer.writerow([manifest["key_sha256"], case, reader, judged, confidence, findings])
    return path


def test_scoring_two_readers_adds_the_study_to_the_audit_and_report(kit_run, run_cli, tmp_path):
    run, kit = kit_run
    key = _key(run)["cases"]
    oracle = lambda case: (key[case]["truth"], 5, ";".join(key[case].get("shown", [])))
    naive = lambda case: ("real", 2, "")
    first = _write_answers(tmp_path / "r1.csv", kit, "R1", oracle)
    second = _write_answers(tmp_path / "r2.csv", kit, "R2", naive)
    result = run_cli("reader-study", "score", "--run", run, "--responses", first, "--responses", second)
    assert result.exit_code == 0, result.output
    document = json.loads((run / "reader_study" / "reader_study.json").read_text())
    assert document["readers"] == ["R1", "R2"]
    assert document["by_reader"]["R1"]["detection_auroc"]["value"] == 1.0
    assert document["by_reader"]["R1"]["finding_agreement"]["value"] == 1.0
    assert document["by_reader"]["R2"]["synthetic_judged_real"]["value"] == 1.0
    assert document["agreement"]["method"] == "Cohen's kappa"
    audit = json.loads((run / "audit.json").read_text())
    assert audit["reader_study"]["key_sha256"] == document["key_sha256"]
    evidence = {f["framework"]: f for f in audit["evidence"]["frameworks"]}
    synthetic_item = next(i for i in evidence["fda-ai-dsf-2025"]["items"] if i["id"].startswith("Synthetic data"))
    assert synthetic_item["status"] == "filled"  # with the reader study scored, the item is answered
    from pypdf import PdfReader

    text = "\n".join(page.extract_text() for page in PdfReader(run / "report.pdf").pages)
    assert "Blinded reader study of the synthetic images" in text and "reader R1" in text


@pytest.mark.slow  # a headless chromium session (about 15 s)
def test_the_form_in_a_real_browser_saves_answers_that_score(kit_run, run_cli, tmp_path):
    """Debian's chromium, headless, driven by selenium: open the kit's form offline, answer every case, save;
    the saved file scores."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "chromium and chromium-driver are installed by `make setup` (Debian packages)"
    run, kit = kit_run
    key = _key(run)["cases"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = Options()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get((kit / "form.html").as_uri())
        cases = driver.execute_script("return CASES")
        assert cases == sorted(key)
        driver.find_element(By.ID, "save").click()  # no reader name yet: refused, nothing saved
        assert "reader" in driver.find_element(By.ID, "status").text
        driver.find_element(By.ID, "reader").send_keys("B 7")
        driver.find_element(By.ID, "save").click()  # no case answered: refused
        assert "not answered" in driver.find_element(By.ID, "status").text
        for case in cases:
            truth = key[case]["truth"]
            driver.find_element(By.CSS_SELECTOR, f'input[name="judged-{case}"][value="{truth}"]').click()
            driver.find_element(By.CSS_SELECTOR, f'input[name="confidence-{case}"][value="4"]').click()
            for finding in key[case].get("shown", []):
                driver.find_element(By.CSS_SELECTOR, f'input[name="findings-{case}"][value="{finding}"]').click()
        driver.find_element(By.ID, "save").click()
        saved = downloads / "responses_B_7.csv"
        for _ in range(100):
            if saved.is_file() and saved.stat().st_size:
                break
            import time

            time.sleep(0.1)
        assert "Saved responses_B_7.csv" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
    result = run_cli("reader-study", "score", "--run", run, "--responses", saved)
    assert result.exit_code == 0, result.output
    document = json.loads((run / "reader_study" / "reader_study.json").read_text())
    assert document["readers"] == ["B 7"]
    assert document["by_reader"]["B 7"]["detection_auroc"]["value"] == 1.0
    assert document["overall"]["finding_agreement"]["value"] == 1.0


def test_export_refuses_a_folder_inside_the_run_and_a_second_key_without_force(kit_run, run_cli, tmp_path):
    run, kit = kit_run
    inside = run_cli("reader-study", "export", "--run", run, "--out", run / "kit")
    assert inside.exit_code == 2 and "outside the run" in inside.output
    again = run_cli("reader-study", "export", "--run", run, "--out", tmp_path / "kit2", "--n", "10", "--seed", "9")
    assert again.exit_code == 2 and "another kit" in again.output and not (tmp_path / "kit2").exists()
    same = run_cli("reader-study", "export", "--run", run, "--out", tmp_path / "kit3", "--n", "12", "--seed", "3")
    assert same.exit_code == 0, same.output  # the same kit again: the same key, nothing lost
    assert (tmp_path / "kit3" / "kit.json").read_text() == (kit / "kit.json").read_text()
    not_a_run = run_cli("reader-study", "export", "--run", tmp_path / "nothing", "--out", tmp_path / "kit4")
    assert not_a_run.exit_code == 2 and "not a run" in not_a_run.output


def test_a_dicom_case_header_says_nothing_of_its_origin(tmp_path):
    """Where the data was DICOM each case is also a DICOM: one header for a real and a synthetic case, with no
    'synthetic' marker, no source UID and no source PHI; only the pixels differ."""
    import pydicom

    from cxr_audit.synthesis.dicom_out import write_reader_study_dicom

    pixels = [np.full((16, 16), 10, np.uint8), np.full((16, 16), 200, np.uint8)]
    for case_id, image in zip(("case_0001", "case_0002"), pixels):
        write_reader_study_dicom(tmp_path / f"{case_id}.dcm", image, case_id, nonce="k" * 64 + ":0")
    first, second = (pydicom.dcmread(tmp_path / f"case_000{k}.dcm") for k in (1, 2))
    varying = {"SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PixelData"}
    assert {e.keyword for e in first if e.keyword not in varying} == {e.keyword for e in second if e.keyword not in varying}
    for element in first:
        if element.keyword not in varying:
            assert element.value == second[element.keyword].value, element.keyword
    text = (tmp_path / "case_0001.dcm").read_bytes()
    assert b"SYN" not in text.replace(b"SYNTAX", b"") and b"synthetic" not in text.lower()
    assert first.PatientID == "case_0001" and str(first.PatientName) == "READER^STUDY"
    assert first.pixel_array.max() == 10 and second.pixel_array.max() == 200
