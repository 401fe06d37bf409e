"""The stage runner: the one skip rule every stage of a run goes through.

The skip rule (`run_stage`): a stage is skipped iff its record says it finished with exactly the inputs it
declares now and its outputs are as it left them. A record with the same inputs that never finished (a
killed run) is resumed in place. Anything else in the stage's folder came from other inputs: refused
(exit 2) unless --force, which clears the folder and runs the stage again. Before a command writes anything,
every stage the run has a record of is checked the same way against the command's configuration
(`stale_inputs`), so a refusal leaves the run as it was.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from cxr_audit import distributed
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_bytes, atomic_write_json, sha256_file
from cxr_audit.rundir import RunDir


class Stage(Protocol):
    """One step of the audit flow. `inputs()` declares everything that changes its outputs (file hashes and
    options, never paths or device settings); `folder` is the one path it writes (a folder, or a single file),
    inside the run; `outputs()` are the files whose hashes the record keeps; `needs` names the stages whose
    outputs it reads (the pipeline orders stages and finds a command's dependants from them)."""

    name: str
    folder: Path
    needs: tuple[str, ...]

    def outputs(self) -> list[Path]: ...

    def inputs(self) -> dict[str, Any]: ...

    def run(self) -> None: ...


def _normalise(inputs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def stale_inputs(run: RunDir, stage: Stage) -> list[str] | None:
    """For a stage the run has a record of: the inputs that differ from what it declares now (empty when
    none); None when the run has no record of it, or when an output it reads is missing (the stage that makes
    that output runs again first, and this one is judged when its turn comes)."""
    path = run.stage_record(stage.name)
    if not path.exists():
        return None
    try:
        declared = stage.inputs()
    except FileNotFoundError:
        return None
    return _differences(_read_record(path, stage.name)["inputs"], _normalise(declared))


def _declared_inputs(stage: Stage) -> dict[str, Any]:
    try:
        return _normalise(stage.inputs())
    except FileNotFoundError as error:
        raise UserInputError(f"The '{stage.name}' stage reads {error.filename}, which is missing. Run the command "
                             f"that makes it again (its stage among: {', '.join(stage.needs) or 'none'}), or pass "
                             "--force to redo the run's stages.") from None


def _read_record(path: Path, name: str) -> dict:
    try:
        record = json.loads(path.read_text())
        record["inputs"], record["status"]  # noqa: B018 - the keys a record must have
        return record
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserInputError(f"{path} is not a stage record (was it edited?). Pass --force to redo the "
                             f"'{name}' stage.") from None


def run_stage(run: RunDir, stage: Stage, force: bool = False, log: Callable[[str], None] = print) -> bool:
    """Run `stage` unless it is finished with the same inputs; returns whether it ran.

    Under several processes (torchrun) the main process decides, runs and records the stage; a stage that
    shares its work (`shares_work`: fine-tuning, inference) also runs on the others, which write nothing; every
    process waits for the stage's end, and an error is raised on all of them. One process: plainly run."""
    plan = distributed.broadcast(distributed.on_main(lambda: plan_stage(run, stage, force, log)))
    if plan is None:
        return False
    stopped = None
    if getattr(stage, "shares_work", False) and not distributed.is_main():
        try:
            stage.run()
        except UserInputError as error:  # raised once the main process has said how the stage ended
            stopped = error
    distributed.on_main(lambda: execute_stage(run, stage, plan))
    if stopped is not None:
        raise stopped
    return True


def plan_stage(run: RunDir, stage: Stage, force: bool, log: Callable[[str], None]) -> dict | None:
    """Whether `stage` must run (None: finished with the same inputs, skipped), refusing to replace outputs
    made from other inputs without `force`. Writes nothing."""
    declared = _declared_inputs(stage)
    path = run.stage_record(stage.name)
    record = _read_record(path, stage.name) if path.exists() else None
    same_inputs = record is not None and record["inputs"] == declared
    if same_inputs and record["status"] == "done" and _outputs_intact(run, record):
        log(f"stage {stage.name}: inputs unchanged, skipped")
        return None
    resumable = same_inputs and record["status"] == "running"
    if not resumable and stage.folder.exists():
        if record is None:
            why = "it holds files that no finished stage of this run wrote"
        elif not same_inputs:
            why = f"they were made from other inputs (differs in: {', '.join(_differences(record['inputs'], declared))})"
        else:
            why = "its outputs were changed or removed after the stage wrote them"
        if not force:
            raise UserInputError(f"{run.path}: the '{stage.name}' stage's outputs exist, but {why}. A run never "
                                 "overwrites results silently: pass --force to redo this stage, or choose a new "
                                 "--out folder.")
    log(f"stage {stage.name}" + (": resuming" if resumable else ""))
    return {"inputs": declared, "resumable": resumable}


def execute_stage(run: RunDir, stage: Stage, plan: dict) -> None:
    """Run a planned stage between its 'running' and 'done' records (old outputs kept until it succeeds)."""
    path = run.stage_record(stage.name)
    with _old_outputs_kept_until_done(stage, path, replace=not plan["resumable"] and stage.folder.exists()):
        started = time.monotonic()
        atomic_write_json(path, {"stage": stage.name, "status": "running", "inputs": plan["inputs"]})
        stage.run()
        outputs = {run.relative(p): sha256_file(p) for p in stage.outputs()}
        atomic_write_json(path, {"stage": stage.name, "status": "done", "inputs": plan["inputs"],
                                 "outputs": outputs, "seconds": round(time.monotonic() - started, 1)})


@contextmanager
def _old_outputs_kept_until_done(stage: Stage, record: Path, replace: bool):
    """With --force, a stage's old outputs are moved aside, not deleted: if the new run of the stage fails,
    they (and the old record) are put back, so a failed redo loses nothing."""
    if not replace:
        yield
        return
    aside = stage.folder.with_name(f".{stage.folder.name}.replaced")
    if aside.exists():
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
    old_record = record.read_bytes() if record.exists() else None
    stage.folder.rename(aside)
    try:
        yield
    except BaseException:
        if stage.folder.exists():
            shutil.rmtree(stage.folder) if stage.folder.is_dir() else stage.folder.unlink()
        aside.rename(stage.folder)
        if old_record is not None:
            atomic_write_bytes(record, old_record)
        raise
    shutil.rmtree(aside) if aside.is_dir() else aside.unlink()


def _outputs_intact(run: RunDir, record: dict) -> bool:
    for relative, digest in record.get("outputs", {}).items():
        file = run.resolve(relative)
        if not file.is_file() or sha256_file(file) != digest:
            return False
    return True


def stage_seconds(run: RunDir) -> dict[str, float | None]:
    """Seconds each finished stage took (for the provenance appendix)."""
    out = {}
    for path in sorted(run.stages.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text()).get("seconds")
        except json.JSONDecodeError:
            out[path.stem] = None
    return out
