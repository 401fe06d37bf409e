"""The stage contract: one implementation per stage, one skip rule, one run layout.

Every stand-alone command works on a run that `audit` or another command made; a changed input re-runs exactly
the stages that depend on it; a refused command changes no file; a copied run resumes in its new place; and
two runs of the same inputs in fresh folders write the same audit.json.
"""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from cxr_audit.rundir import RunDir
from cxr_audit.stages.pipeline import open_run, run_audit

SPEC = Path("coverage_specs/phantom.yaml")
PACKAGE = Path(__file__).resolve().parents[2] / "cxr_audit"


def _options(phantom_dataset, phantom_model, spec, **changes) -> dict:
    """A small audit that trains its own generator and checker in the run (tiny budgets, the real flow). The
    small phantom's validation split has under 10 positives of most concepts, so its checker grades none of
    them: the edits are kept as ungradable, or the probe would have nothing to score."""
    return {"models": [phantom_model], "data": phantom_dataset / "labels.csv", "spec": spec, "accept_ungradable": True,
            "generator_training": {"steps": 3, "batch_size": 4, "channels": [8, 16]},
            "edit": {"steps": 3, "strength": 0.5, "guidance": 2.0}, "bootstrap": 100, "mc_samples": 2,
            "finetune": {"steps": 4, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2}, **changes}


def _audit(out, options, force=False, report=True):
    ctx = open_run(RunDir(out), options, force, progress=False, log=lambda message: None, workers=0)
    return run_audit(ctx, force, report=report)


def _records(run: Path) -> dict[str, str]:
    """Each stage record's content: what changes when a stage runs again."""
    return {p.stem: p.read_text() for p in sorted(RunDir(run).stages.glob("*.json"))}


def _ran_again(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in after if before.get(name) != after[name]}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(phantom_dataset, phantom_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract")
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.read_text() + "synthesis: {budget_per_cell: 2, attempts_per_edit: 1}\n")
    card = folder / "card.yaml"  # the model's card, copied so that tests can change it
    shutil.copy(phantom_model.with_name(phantom_model.name + ".card.yaml"), card)
    run = folder / "run"
    _audit(run, _options(phantom_dataset, phantom_model, spec, card=card))
    return folder, run, spec, card


@pytest.fixture()
def copy_of(finished, tmp_path):
    """A copy of the finished run in a new place, with its card beside it: the copy must work on its own."""
    folder, run, spec, card = finished
    shutil.copytree(run, tmp_path / "run")
    shutil.copy(card, tmp_path / "card.yaml")
    return tmp_path / "run", spec, tmp_path / "card.yaml"


def test_the_audit_is_the_list_of_stages(finished):
    _, run, _, _ = finished
    assert set(_records(run)) == {"datasheet", "coverage", "evaluate_baseline", "evaluate_recalibrated", "plan", "generator", "checker", "synthetic",
                                  "unconstrained", "finetune_real_only", "evaluate_real_only", "finetune_cars",
                                  "evaluate_cars", "finetune_unconstrained", "evaluate_unconstrained", "null_edits",
                                  "finetune_null_edits", "evaluate_null_edits", "realism", "probe", "gallery", "assemble",
                                  "report"}
    assert all(json.loads(text)["status"] == "done" for text in _records(run).values())


def test_a_copied_run_resumes_in_its_new_place(copy_of, phantom_dataset, phantom_model, run_cli):
    run, spec, card = copy_of
    before = _records(run)
    _audit(run, _options(phantom_dataset, phantom_model, spec, card=card))
    assert _ran_again(before, _records(run)) == set()  # every stage skipped: nothing refers to the old place
    result = run_cli("probe", "--run", run)
    assert result.exit_code == 0, result.output
    assert f"Wrote {RunDir(run).probe}" in result.output.replace("\n", "")


# The report re-runs whenever audit.json changes; the card case renders it, the others stop at audit.json.
@pytest.mark.parametrize("change,expected", [
    ("card", {"evaluate_baseline", "evaluate_recalibrated", "finetune_real_only", "finetune_cars", "finetune_unconstrained",
              "finetune_null_edits", "probe", "assemble", "report"}),
    pytest.param("bootstrap", {"evaluate_baseline", "evaluate_recalibrated", "evaluate_real_only", "evaluate_cars", "evaluate_unconstrained", "realism",
                   "evaluate_null_edits", "probe", "assemble"}, marks=pytest.mark.slow),  # (about 25 s)
    # the synthesis re-runs; the arms trained on it re-run only if what they read (the accepted edits) changed
    pytest.param("generator budget", {"generator", "synthetic", "unconstrained", "null_edits", "realism", "probe", "gallery",
                                      "assemble"}, marks=pytest.mark.slow),  # (about 25 s)
    # everything seeded; the coverage and data sheet of official splits do not depend on the seed
    pytest.param("seed", None, marks=pytest.mark.slow),  # (every stage again: about 15 s)
])
def test_a_changed_input_reruns_exactly_the_stages_that_depend_on_it(copy_of, phantom_dataset, phantom_model,
                                                                     change, expected):
    run, spec, card = copy_of
    options = _options(phantom_dataset, phantom_model, spec, card=card)
    if change == "card":
        text = yaml.safe_load(card.read_text())
        text["thresholds"] = {"Cardiomegaly": 0.3}
        card.write_text(yaml.safe_dump(text))
    elif change == "bootstrap":
        options["bootstrap"] = 150
    elif change == "generator budget":
        options["generator_training"] = {**options["generator_training"], "steps": 4}
    else:
        options["seed"] = 7
    before = _records(run)
    modes = ("cars", "unconstrained", "null_edits")
    accepted = {mode: RunDir(run).synthesis(mode).manifest.read_bytes() for mode in modes}
    with pytest.raises(Exception, match="other inputs"):  # without --force a changed run is refused
        _audit(run, options)
    assert _records(run) == before
    _audit(run, options, force=True, report=change == "card")
    ran = _ran_again(before, _records(run))
    if expected is None:
        assert ran == set(before) - {"datasheet", "coverage", "report"}
        return
    for mode in modes:  # each arm is named after the synthesis it trains on
        if RunDir(run).synthesis(mode).manifest.read_bytes() != accepted[mode]:
            expected = expected | {f"finetune_{mode}", f"evaluate_{mode}"}
    assert ran == expected


@pytest.mark.slow  # every stage through its own command, then the audit (about 40 s)
def test_stand_alone_commands_build_a_run_the_audit_then_finishes(phantom_dataset, phantom_model, tmp_path,
                                                                   run_cli):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.read_text() + "synthesis: {budget_per_cell: 2, attempts_per_edit: 1}\n")
    run = tmp_path / "run"
    data = ["--data", phantom_dataset / "labels.csv"]
    assert run_cli("plan", "--out", run, *data, "--spec", spec).exit_code == 0
    result = run_cli("train-generator", "--out", run, "--steps", 3, "--batch-size", 4, "--channels", "8,16")
    assert result.exit_code == 0, result.output
    result = run_cli("synthesize", "--run", run, "--steps", 3, "--strength", 0.5, "--guidance", 2)
    assert result.exit_code == 0, result.output
    result = run_cli("finetune", "--run", run, "--model", phantom_model, "--arms", "real_only,cars", "--steps", 4)
    assert result.exit_code == 0, result.output
    layout = RunDir(run)
    assert layout.finetune("cars").candidate().exists() and layout.evaluation("cars").metrics.exists()
    before = _records(run)
    # the audit picks the run up: what the commands made is skipped, the rest is added
    result = run_cli("audit", "--out", run, "--no-report")
    assert result.exit_code == 0, result.output
    ran = _ran_again(before, _records(run))
    assert not ran & {"coverage", "plan", "generator", "checker", "synthetic", "finetune_cars", "finetune_real_only"}
    assert {"evaluate_baseline", "unconstrained", "probe", "assemble"} <= ran


def test_a_refused_command_changes_no_file(finished, tmp_path, run_cli, phantom_dataset):
    folder, run, spec, card = finished
    policy = folder / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - {type: min_metric, metric: auroc, min: 0.5}\n")
    evaluate = tmp_path / "eval"
    assert run_cli("evaluate", "--out", evaluate, "--data", phantom_dataset / "labels.csv", "--predictions",
                   _predictions(phantom_dataset, tmp_path), "--bootstrap", 100).exit_code == 0
    runs = {"audit": run, "evaluate": evaluate, "folder": folder}
    before = {name: _hashes(path) for name, path in runs.items()}
    layout = RunDir(run)
    refused = [
        ("evaluate", "--out", evaluate, "--bootstrap", 200),                        # another option, same run
        ("coverage", "--out", layout.coverage.folder, "--data", phantom_dataset / "labels.csv", "--spec", spec),
        ("evaluate", "--out", layout.evaluation("baseline").folder, "--data", phantom_dataset / "labels.csv",
         "--model", folder / "nothing.pt"),                                         # inside a stage folder
        ("gate", "--candidate", run, "--policy", policy, "--junit", layout.audit),  # an output onto an input
        ("gate", "--candidate", run, "--policy", policy, "--summary", policy),
        ("gate", "--candidate", run, "--policy", policy, "--junit", folder),        # a folder where a file is due
        ("report", "--run", run, "--pdf", layout.audit),
        ("coverage", "--out", policy, "--data", phantom_dataset / "labels.csv", "--spec", spec),  # --out a file
        ("audit", "--out", run, "--seed", 5),                                       # a run of other inputs
    ]
    for args in refused:
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
    assert {name: _hashes(path) for name, path in runs.items()} == before


def _predictions(phantom_dataset, tmp_path) -> Path:
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(phantom_dataset / "labels.csv")
    rng = np.random.default_rng(0)
    path = tmp_path / "predictions.csv"
    pd.DataFrame({"Path": frame["Path"], "prob_Cardiomegaly": (0.6 * frame["Cardiomegaly"] + 0.4 * rng.random(
        len(frame))).round(4)}).to_csv(path, index=False)
    return path


def _demo_flow(root: Path, name: str) -> Path:
    """The demo's flow (dataset and model made in the run, the shipped generator, then every stage), from its
    own working folder `root/name` with a relative --out."""
    import os

    from cxr_audit.stages.demo import demo_context

    # A small synthesis budget: the same flow, fewer edits. 240 studies leave under 10 validation positives per
    # concept, so the checker grades none: the edits are kept as ungradable, or the probe has nothing to score.
    spec = root / "spec.yaml"
    if not spec.exists():
        spec.write_text(SPEC.read_text() + "synthesis: {budget_per_cell: 2, attempts_per_edit: 1}\n")
    here = os.getcwd()
    try:
        (root / name).mkdir()
        os.chdir(root / name)
        ctx = demo_context(Path("demo"), images=240, progress=False, log=lambda message: None,
                           check_generator=False, bootstrap=100, mc_samples=2, edit={"steps": 3}, spec=spec,
                           accept_ungradable=True,
                           finetune={"steps": 4, "eval_every": 2, "checkpoint_every": 2})
        run_audit(ctx, report=False)  # the PDF is rendered from audit.json, which is compared
    finally:
        os.chdir(here)
    return root / name / "demo"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    return _demo_flow(tmp_path_factory.mktemp("demo-flow"), "a")


@pytest.fixture(scope="module")
def demo_runs(demo_run) -> tuple[Path, Path]:
    """The demo's flow twice, each in a fresh folder."""
    return demo_run, _demo_flow(demo_run.parents[1], "b")


@pytest.mark.slow  # a second demo flow (about 45 s)
def test_two_runs_in_fresh_folders_write_the_same_audit_json(demo_runs):
    """Only the keys listed may differ (when it was made, how long each stage took)."""
    documents = [json.loads(RunDir(run).audit.read_text()) for run in demo_runs]
    may_differ = {"created", "stage_seconds"}
    for document in documents:
        for key in may_differ:
            document.pop(key)
        for arm in document["arms"].values():
            if arm["finetune"]:
                arm["finetune"].pop("seconds_this_call")  # a duration
                # the base model by its place in the run: a copied run names its own copy
                assert arm["finetune"]["base_model"]["path"] == "inputs/model/deployed_model.safetensors"
    assert documents[0] == documents[1]


@pytest.mark.slow  # the demo flow (about 45 s with its fixture)
def test_a_demo_run_whose_inputs_were_deleted_makes_them_again(demo_run, tmp_path):
    """RUN/inputs (the demo's dataset and model) removed: the demo makes them again (the same, from their seed)
    and every later stage is found finished; no message about a --data the demo does not have."""
    from cxr_audit.stages.demo import demo_context

    run = tmp_path / "demo"
    shutil.copytree(demo_run, run)
    shutil.rmtree(RunDir(run).inputs)
    before = _records(run)
    ctx = demo_context(run, images=240, progress=False, log=lambda message: None, check_generator=False,
                       bootstrap=100, mc_samples=2, edit={"steps": 3}, spec=demo_run.parents[1] / "spec.yaml",
                       accept_ungradable=True, finetune={"steps": 4, "eval_every": 2, "checkpoint_every": 2})
    run_audit(ctx, report=False)
    assert _ran_again(before, _records(run)) <= {"demo_phantom", "demo_model", "assemble"}
    assert RunDir(run).made_model.is_file() and RunDir(run).made_dataset.is_file()


@pytest.mark.slow  # the demo flow from its reports (about 15 s)
def test_the_demo_with_labels_from_its_reports(tmp_path):
    """`demo --labels-from-reports`: the phantom's reports are labelled (a stage of the run), the audit runs on
    those labels with the phantom's images, and audit.json names the labeler's record in its provenance."""
    import pandas as pd

    from cxr_audit.stages.demo import demo_context

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.read_text() + "synthesis: {budget_per_cell: 1, attempts_per_edit: 1}\n")
    ctx = demo_context(tmp_path / "demo", images=240, progress=False, log=lambda message: None, check_generator=False,
                       labels_from_reports=True, bootstrap=100, mc_samples=0, edit={"steps": 2}, spec=spec,
                       arms=["baseline"])
    run_audit(ctx, report=False)
    layout = RunDir(tmp_path / "demo")
    assert "demo_report_labels" in _records(tmp_path / "demo")
    audit = json.loads(layout.audit.read_text())
    assert audit["inputs"]["data"]["path"] == "inputs/report_labels/labels.csv"
    assert audit["inputs"]["report_labels"]["path"] == "inputs/report_labels/labeling.json"
    labels = pd.read_csv(layout.made_report_labels)
    train = labels[labels["split"] == "train"]
    cell = next(c for c in audit["coverage"]["cells"] if c["id"] == "PHANTOM-COV-001")
    assert cell["count"] == int(((train["Cardiomegaly"] == 1) & (train["Pleural Effusion"] == 1)).sum())


@pytest.mark.slow  # the demo flow (about 45 s with its fixture)
def test_the_probe_by_round_trip_equals_the_probe_with_the_model_in_hand(demo_run, tmp_path, run_cli):
    """A vendor's model known only by its outputs: it scores the images the run lists (score_me.csv), and
    `probe --predictions` reads the scores back. With the deployed model exported that way, probe.json is the
    one the model in hand made (pairs, side effects against the null edits), and audit.json takes it."""
    import pandas as pd

    from cxr_audit.classifier.inference import predict
    from cxr_audit.classifier.loading import load_model
    from cxr_audit.provenance import sha256_file

    run = tmp_path / "demo"
    shutil.copytree(demo_run, run)
    layout = RunDir(run)
    listed = pd.concat([pd.read_csv(layout.synthesis(mode).score_list) for mode in ("cars", "null_edits")])
    assert set(listed["role"]) == {"source", "edited", "null_edit"}
    assert not layout.synthesis("unconstrained").score_list.exists()  # the ablation is never probed
    model = load_model(layout.made_model)
    scores = pd.DataFrame(predict(model, [run / p for p in listed["path"]], progress=False),
                          columns=[f"prob_{c}" for c in model.concepts])
    scores.insert(0, "path", listed["path"].to_numpy())
    exported = run.parent / "vendor_scores.csv"
    scores.to_csv(exported, index=False, float_format="%.9g")
    in_process = json.loads(layout.probe.read_text())
    result = run_cli("probe", "--run", run, "--predictions", exported, "--force")
    assert result.exit_code == 0, result.output
    round_trip = json.loads(layout.probe.read_text())
    assert round_trip["model"] == {"path": exported.name, "sha256": sha256_file(exported), "format": "predictions csv"}
    assert in_process["pairs_scored"] > 0
    assert {k: v for k, v in round_trip.items() if k != "model"} == {k: v for k, v in in_process.items() if k != "model"}
    audit = json.loads(layout.audit.read_text())
    assert audit["probe"] == round_trip and audit["inputs"]["probe_scores"]["sha256"] == sha256_file(exported)
    # a listed image the vendor did not score is named (a null edit: the side effects' baseline is read too)
    probed = set(listed["edit_id"][listed["role"] == "edited"])
    unscored = listed["path"][(listed["role"] == "null_edit") & listed["edit_id"].isin(probed)].iloc[0]
    scores[scores["path"] != unscored].to_csv(exported, index=False)
    missing = run_cli("probe", "--run", run, "--predictions", exported, "--force")
    assert missing.exit_code == 2 and unscored in missing.output.replace("\n", "")


def test_every_run_path_is_spelled_in_rundir_only():
    """Paths inside a run are built in rundir.py; nothing else joins a run's file or folder names."""
    names = ("plan.json|metrics.json|predictions.npz|replicates.npz|synthetic_manifest.csv|synthesis.json|"
             "probe.json|audit.json|report.pdf|request.json|gallery.json|finetune.json|coverage.json|"
             "candidate.pt|candidate.safetensors|checker.safetensors|synthetic|unconstrained|evaluate|finetune|"
             "stages|records")
    joined = re.compile(rf'/ ?"({names})"')
    offenders = [f"{path.relative_to(PACKAGE)}:{number}" for path in PACKAGE.rglob("*.py") if path.name != "rundir.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if joined.search(line)]
    assert offenders == []


def test_only_the_stages_and_the_commands_touch_a_run_directory():
    """The algorithms take arrays and documents; stages/, cli/ and rundir.py itself are the only importers of
    the run's layout."""
    importer = re.compile(r"^\s*(from cxr_audit\.rundir import|from cxr_audit import rundir|import cxr_audit\.rundir)")
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path.relative_to(PACKAGE).parts[0] not in ("stages", "cli", "rundir.py")
                 and any(importer.match(line) for line in path.read_text().splitlines())]
    assert offenders == []


def test_no_code_branches_on_an_operation_name():
    """Insert, delete (and any new perturbation) carry their behaviour (synthesis/operations.py): nothing
    else compares operation names."""
    compared = re.compile(r"""(\bop\b|operation)\s*(==|!=)\s*["']|["'](insert|delete)["']\s*(==|!=)""")
    offenders = [f"{path.relative_to(PACKAGE)}:{number}" for path in PACKAGE.rglob("*.py")
                 if path.name != "operations.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if compared.search(line)]
    assert offenders == []
