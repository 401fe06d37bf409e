"""The audit is an ordered list of stages; a stand-alone command runs one stage and what it depends on.

Order: coverage, evaluate the deployed model, plan, generator and checker (unless given), the CARS edits
the unconstrained ablation and the null edits, their realism, each fine-tune arm and its evaluation, probe, gallery, assemble, report.
Every stage goes through `runner.run_stage`: finished stages with unchanged inputs are skipped, a killed
stage resumes, and results made from other inputs are refused without --force. Each stage names the stages it
reads (`needs`); a command's stages and their order follow from that.
"""

from __future__ import annotations

from collections.abc import Iterable

from cxr_audit import distributed
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_bytes
from cxr_audit.rundir import RunDir
from cxr_audit.stages.assemble import AssembleStage
from cxr_audit.stages.checker import CheckerStage
from cxr_audit.stages.config import ARMS, POSTHOC_ARMS, merge_config, recorded_settings
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.coverage import CoverageStage
from cxr_audit.stages.datasheet import DataSheetStage
from cxr_audit.stages.evaluate import EvaluateStage
from cxr_audit.stages.finetune import FinetuneStage
from cxr_audit.stages.gallery import GalleryStage
from cxr_audit.stages.generator import GeneratorStage
from cxr_audit.stages.plan import PlanStage
from cxr_audit.stages.probe import ProbeStage
from cxr_audit.stages.realism import RealismStage
from cxr_audit.stages.report import ReportStage
from cxr_audit.stages.runner import Stage, run_stage, stale_inputs
from cxr_audit.stages.synthesize import SynthesizeStage


def audit_stages(ctx: RunContext, report: bool = True, command_line: str = "") -> list[Stage]:
    """Every stage of the audit, in order."""
    return _stages(ctx, ctx.arms, report, command_line)


def _stages(ctx: RunContext, arms: list[str], report: bool, command_line: str = "") -> list[Stage]:
    """The stages of a run evaluating `arms`. A black box (predictions only) has no fine-tune arm, synthesizes
    only with a given generator and is probed only with its scores of the edits."""
    config = ctx.config
    if ctx.black_box:
        arms = ctx.arms
    modes = ctx.modes_for(arms)
    stages: list[Stage] = [DataSheetStage(ctx), CoverageStage(ctx), EvaluateStage(ctx, "baseline"), PlanStage(ctx)]
    if modes and config.generator is None:
        stages.append(GeneratorStage(ctx))
    if modes and config.checker is None:
        stages.append(CheckerStage(ctx))
    stages += [SynthesizeStage(ctx, mode) for mode in modes]
    if modes:
        stages.append(RealismStage(ctx))
    for arm in arms[1:]:
        stages += [EvaluateStage(ctx, arm)] if arm in POSTHOC_ARMS else [FinetuneStage(ctx, arm), EvaluateStage(ctx, arm)]
    if modes and (not ctx.black_box or config.probe_predictions):
        stages.append(ProbeStage(ctx))
    if modes:
        stages.append(GalleryStage(ctx))
    stages.append(AssembleStage(ctx, command_line))
    if report:
        stages.append(ReportStage(ctx.run))
    return stages


def stages_for(ctx: RunContext, targets: Iterable[str]) -> list[Stage]:
    """The audit's stages that `targets` need (themselves included), in the audit's order: what a stand-alone
    command runs (finished ones are skipped)."""
    stages = _stages(ctx, list(ARMS), report=False)
    by_name = {s.name: s for s in stages}
    wanted: set[str] = set()
    todo = list(targets)
    while todo:
        name = todo.pop()
        if name not in by_name:  # (refused before any work: the run keeps the options it had)
            restore_request(ctx)
            raise UserInputError(f"{ctx.run.path} has no '{name}' stage: {ctx.why_no_stage(name)}")
        if name not in wanted:
            wanted.add(name)
            # a stage the run does not have (the generator, given with --generator) is simply absent
            todo += [need for need in by_name[name].needs if need in by_name]
    return [s for s in stages if s.name in wanted]


def open_run(run: RunDir, given: dict, force: bool, defaults: dict | None = None, **context) -> RunContext:
    """A command's view of a run: the options typed (`given`) merged into what the run recorded, checked
    against every stage the run has finished, then recorded. A configuration that would change a finished
    stage's inputs is refused without --force, before anything is written. Under several processes the main
    process checks and records; the others then read the recorded configuration."""
    ctx = distributed.on_main(lambda: _open_checked(run, given, force, defaults, context))
    if ctx is None:
        ctx = RunContext(run, merge_config(run, given, defaults), **{**context, "progress": False})
    return ctx


def _open_checked(run: RunDir, given: dict, force: bool, defaults: dict | None, context: dict) -> RunContext:
    run.check_writable()
    ctx = RunContext(run, merge_config(run, given, defaults), **context)
    ctx.created = not run.path.exists()
    ctx.previous_request = run.request.read_bytes() if run.request.exists() else None
    recorded = run.recorded_config().get("data")
    if recorded and recorded != ctx.config.data and any(run.stages.glob("*.json")) and not force:
        raise UserInputError(f"{run.path} is a run on other data ({recorded}), not {ctx.config.data}. A run never "
                             "mixes datasets: choose a new --out folder, or pass --force to redo its stages on "
                             "this data.")
    if ctx.config.data and ctx.path("data").exists():  # (a run's own inputs/ are made by its first stages)
        ctx.notes  # noqa: B018 - the data is read and checked (duplicates, splits, leakage) before any write
    if run.request.exists():
        stale = {}
        for stage in _stages(ctx, list(ARMS), report=True):
            differences = stale_inputs(run, stage)
            if differences:
                stale[stage.name] = differences
        if stale and not force:
            listed = "; ".join(f"{name} (differs in: {', '.join(keys)})" for name, keys in stale.items())
            raise UserInputError(f"{run.path} holds results made from other inputs or options: {listed}. A run never "
                                 "overwrites another run: choose a new --out folder, or pass --force to redo what "
                                 "depends on the changed values.")
    run.claim(recorded_settings(ctx.config))
    return ctx


def run_stages(ctx: RunContext, stages: list[Stage], force: bool = False) -> None:
    """Run (or skip) each stage. A stage that stops on bad input is rolled back when this command started it
    (its folder and record removed), and a run directory this command created is removed if nothing in it
    finished: a refused command leaves the disk as it found it."""
    ran = False
    for stage in stages:
        started_here = distributed.is_main() and not ctx.run.stage_record(stage.name).exists()
        try:
            ran = run_stage(ctx.run, stage, force, ctx.log) or ran
        except UserInputError:
            if started_here:
                _roll_back(ctx, stage)
            if not ran:  # nothing was made with the command's options: the run keeps the ones it had
                restore_request(ctx)
            raise


def restore_request(ctx: RunContext) -> None:
    """Put back request.json as the command found it: a refused option is not recorded (the next command on
    the run would fail on it)."""
    if not distributed.is_main() or not ctx.run.path.exists():
        return
    if ctx.previous_request is None:
        ctx.run.request.unlink(missing_ok=True)
        if ctx.created and not any(ctx.run.path.iterdir()):
            ctx.run.path.rmdir()
    else:
        atomic_write_bytes(ctx.run.request, ctx.previous_request)


def _roll_back(ctx: RunContext, stage: Stage) -> None:
    import shutil

    ctx.run.stage_record(stage.name).unlink(missing_ok=True)
    if stage.folder.is_dir():
        shutil.rmtree(stage.folder)
    elif stage.folder.exists():
        stage.folder.unlink()
    if getattr(ctx, "created", False) and not any(ctx.run.stages.glob("*.json")):
        shutil.rmtree(ctx.run.path, ignore_errors=True)


def preflight(ctx: RunContext) -> None:
    """What can be checked before any work: the spec, the data and its splits, the model and its card, and
    that the fine-tune arms have a trainable model. An audit that would fail late fails here."""
    ctx.require_spec()
    ctx.manifest.require_concepts(ctx.require_spec().concepts, f"The coverage spec {ctx.path('spec')}")
    for split in ("train", "val", "test"):
        if len(ctx.frontal(split)) == 0:
            raise UserInputError(f"{ctx.path('data')}: the audit needs train, val and test splits; '{split}' has no "
                                 "frontal image. Fix the split column, or drop it to let the tool assign patients "
                                 "to splits.")
    if ctx.config.models and ctx.config.predictions:
        raise UserInputError("Pass one of --model (the deployed model's weights) or --predictions (its outputs, "
                             "for a model known only as a black box), not both.")
    if ctx.black_box:
        from cxr_audit.classifier.blackbox import read_predictions

        read_predictions(ctx.path("predictions"), ctx.frontal("test"))  # every test image scored, each value valid
        check_generator_and_checker(ctx)
        return
    if len(ctx.config.models) != 1:
        raise UserInputError("The audit takes exactly one --model (the deployed model), or --predictions for a model "
                             "known only by its outputs; `cxr-audit evaluate` scores ensembles.")
    if len(ctx.arms) > 1:  # the processes must share each fine-tune batch evenly
        from cxr_audit.classifier.micro_batches import effective_micro_batches

        finetune = ctx.config.finetune_config
        effective_micro_batches(finetune.micro_batches, finetune.batch_size, distributed.world_size())
    model = ctx.model
    if len(ctx.arms) > 1 and model.module is None:
        raise UserInputError(f"Model {model.path} is {model.format}: the fine-tune arms ({', '.join(ctx.config.arms[1:])}) "
                             "need a PyTorch model (TorchScript, torchvision or torchxrayvision weights). Pass "
                             "--arms baseline to audit it without fine-tuning; the probe works with any model.")
    check_generator_and_checker(ctx)


def check_generator_and_checker(ctx: RunContext) -> None:
    """A given generator and checker load (a checker is never unpickled); a refusal names the option."""
    from cxr_audit.classifier.loading import load_model
    from cxr_audit.synthesis.backends import backend_sha256

    for key, option, check in (("generator", "--generator", backend_sha256),
                               ("checker", "--checker", lambda path: load_model(path, pickle_option=None))):
        if getattr(ctx.config, key):
            try:
                check(ctx.path(key))
            except UserInputError as error:
                raise UserInputError(f"{option}: {error}") from None


def run_audit(ctx: RunContext, force: bool = False, report: bool = True, command_line: str = ""):
    """The whole audit into ctx.run: check what can be checked, then every stage; returns the AuditDocument."""
    from cxr_audit.audit.document import load_audit

    try:
        preflight(ctx)
    except UserInputError:
        restore_request(ctx)
        raise
    run_stages(ctx, audit_stages(ctx, report=report, command_line=command_line), force)
    return load_audit(ctx.run.audit)
