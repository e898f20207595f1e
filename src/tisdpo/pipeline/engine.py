"""A tiny stage runner: cached, fingerprinted, atomic, resumable.

Each stage writes into ``RUN_DIR/.<name>.partial/`` and, when it finishes, that folder is renamed
to ``RUN_DIR/<name>/`` with a ``stage.json`` holding the stage's fingerprint: a hash of its own
config and of its inputs' fingerprints. Re-running skips a stage whose folder has the same
fingerprint, redoes a stage whose inputs or config changed (and so everything downstream, whose
fingerprints change with it), and hands an interrupted stage its ``.partial`` folder back so the
command inside can resume (training from its last checkpoint, weight scoring from its last part).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tisdpo.errors import UserError
from tisdpo.utils import atomic_path, digest, write_json

logger = logging.getLogger(__name__)

# Bump when a stage's meaning changes in a way its config does not show.
ENGINE_VERSION = 1


@dataclass
class StageContext:
    work_dir: str  # where the stage writes (the .partial folder)
    inputs: dict[str, str]  # dependency name -> its finished folder
    resumed: bool  # True when an interrupted attempt left work in work_dir


@dataclass
class Stage:
    name: str
    action: Callable[[StageContext], None]
    config: dict[str, Any] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class PlannedStage:
    stage: Stage
    fingerprint: str
    status: str  # done | stale | partial | pending


class Pipeline:
    def __init__(self, run_dir: str, stages: list[Stage]) -> None:
        self.run_dir = run_dir
        self.stages = {stage.name: stage for stage in stages}
        if len(self.stages) != len(stages):
            raise UserError("two pipeline stages share a name")
        self.order = self._topological_order()
        self._fingerprints: dict[str, str] = {}

    def _topological_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                raise UserError(f"pipeline stages form a cycle: {' -> '.join(chain + (name,))}")
            if name not in self.stages:
                raise UserError(f"stage '{chain[-1]}' depends on unknown stage '{name}'")
            state[name] = "visiting"
            for dep in self.stages[name].deps:
                visit(dep, chain + (name,))
            state[name] = "done"
            order.append(name)

        for name in self.stages:
            visit(name, ())
        return order

    def fingerprint(self, name: str) -> str:
        if name not in self._fingerprints:
            stage = self.stages[name]
            payload = {
                "name": name,
                "config": stage.config,
                "deps": {dep: self.fingerprint(dep) for dep in stage.deps},
                "engine": ENGINE_VERSION,
            }
            self._fingerprints[name] = digest(payload)
        return self._fingerprints[name]

    def final_dir(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def partial_dir(self, name: str) -> str:
        return os.path.join(self.run_dir, f".{name}.partial")

    @staticmethod
    def _recorded_fingerprint(folder: str, filename: str) -> str | None:
        """The fingerprint recorded in a stage's file; None when absent or unreadable (a write cut short)."""
        path = os.path.join(folder, filename)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            if filename.endswith(".json"):
                data = json.loads(text)
                return data.get("fingerprint") if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None
        return text.strip()

    def status(self, name: str) -> str:
        fingerprint = self.fingerprint(name)
        recorded = self._recorded_fingerprint(self.final_dir(name), "stage.json")
        if recorded == fingerprint:
            return "done"
        partial = self.partial_dir(name)
        if fingerprint in (
            self._recorded_fingerprint(partial, "fingerprint"),
            self._recorded_fingerprint(partial, "stage.json"),  # finished, killed before its rename
        ):
            return "partial"
        return "stale" if recorded is not None else "pending"

    def plan(self) -> list[PlannedStage]:
        return [PlannedStage(self.stages[n], self.fingerprint(n), self.status(n)) for n in self.order]

    def describe_plan(self) -> str:
        words = {"done": "skip (finished)", "stale": "redo (inputs changed)", "partial": "resume", "pending": "run"}
        lines = [f"pipeline in {self.run_dir}: {len(self.order)} stages"]
        for index, planned in enumerate(self.plan(), start=1):
            deps = f" <- {', '.join(planned.stage.deps)}" if planned.stage.deps else ""
            lines.append(
                f"  {index:>2}. {planned.stage.name:<24} {words[planned.status]:<22} {planned.stage.description}{deps}"
            )
        return "\n".join(lines)

    def run(self, progress: Callable[[str], None] = print) -> dict[str, str]:
        """Run every stage that is not finished; return each stage's folder."""
        os.makedirs(self.run_dir, exist_ok=True)
        total, started = len(self.order), time.time()
        for index, name in enumerate(self.order, start=1):
            stage, status = self.stages[name], self.status(name)
            prefix = f"[{index}/{total}] {name}"
            if status == "done":
                progress(f"{prefix}: finished earlier, skipped")
                continue
            progress(f"{prefix}: {'resuming' if status == 'partial' else 'running'} - {stage.description}")
            stage_start = time.time()
            self._run_stage(stage, resumed=status == "partial")
            progress(f"{prefix}: done in {time.time() - stage_start:.1f}s (total {time.time() - started:.0f}s)")
        return {name: self.final_dir(name) for name in self.order}

    def _run_stage(self, stage: Stage, resumed: bool) -> None:
        partial, final = self.partial_dir(stage.name), self.final_dir(stage.name)
        fingerprint = self.fingerprint(stage.name)
        if not resumed and os.path.exists(partial):
            shutil.rmtree(partial)
        os.makedirs(partial, exist_ok=True)
        if self._recorded_fingerprint(partial, "stage.json") != fingerprint:  # else finished, not yet renamed
            with atomic_path(os.path.join(partial, "fingerprint")) as tmp, open(tmp, "w", encoding="utf-8") as handle:
                handle.write(fingerprint)
            begun = time.time()
            stage.action(StageContext(partial, {dep: self.final_dir(dep) for dep in stage.deps}, resumed))
            # stage.json (written atomically) is what marks the work complete, before the rename.
            write_json(
                os.path.join(partial, "stage.json"),
                {
                    "fingerprint": fingerprint,
                    "config": stage.config,
                    "deps": stage.deps,
                    "seconds": round(time.time() - begun, 2),
                },
            )
        if os.path.exists(os.path.join(partial, "fingerprint")):
            os.remove(os.path.join(partial, "fingerprint"))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(partial, final)
