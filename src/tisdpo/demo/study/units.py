"""The study's units of work, run side by side in worker processes, each resumable on its own.

A unit trains a model, scores weights and/or evaluates generations with the ``tisdpo`` commands
(in-process, through :func:`tisdpo.pipeline.recipe.invoke`, as pipeline stages do). It works in
``<folder>.partial`` and is renamed to ``<folder>`` when done; ``result.json`` in the folder holds
the unit's spec and its results, so a rerun skips every finished unit whose spec is unchanged and
redoes the rest (a killed run loses at most the units that were in flight).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from typing import Any

from tisdpo.errors import UserError
from tisdpo.utils import write_json

RESULT = "result.json"


@dataclass
class Unit:
    """``train`` (then ``evaluate`` its checkpoints and final model, then drop the model unless
    ``keep_model``), ``weights`` (a ``tisdpo weights`` run), or ``evaluate`` alone (of ``model_name_or_path``)."""

    name: str
    folder: str
    train: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None
    evaluate: dict[str, Any] | None = None
    keep_model: bool = False
    tags: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train": self.train,
            "weights": self.weights,
            "evaluate": self.evaluate,
            "keep_model": self.keep_model,
            "tags": self.tags,
        }

    @property
    def model(self) -> str:
        return os.path.join(self.folder, "model")

    @property
    def weights_file(self) -> str:
        return os.path.join(self.folder, "weights.jsonl")


def read_result(unit: Unit) -> dict[str, Any] | None:
    """The unit's results when it finished with the same spec, else None."""
    path = os.path.join(unit.folder, RESULT)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        stored = json.load(handle)
    same = json.dumps(stored.get("unit"), sort_keys=True) == json.dumps(unit.spec(), sort_keys=True, default=str)
    return stored if same else None


def checkpoint_targets(model: str) -> list[tuple[str, int | None, str]]:
    """(label, step, path): the checkpoints in step order, then the final model."""
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(model) if d.startswith("checkpoint-"))
    final_step = None
    state = os.path.join(model, "trainer_state.json")
    if os.path.exists(state):
        with open(state, encoding="utf-8") as handle:
            final_step = json.load(handle).get("global_step")
    targets = [(f"checkpoint-{s}", s, os.path.join(model, f"checkpoint-{s}")) for s in steps if s != final_step]
    return [*targets, ("final", final_step, model)]


def evaluation_point(label: str, step: int | None, path: str) -> dict[str, Any]:
    with open(os.path.join(path, "eval_results.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    return {
        "label": label,
        "step": step,
        "kl": metrics["gen/kl"],
        "reward": metrics["gen/reward_mean"],
        "reward_per_word": metrics.get("gen/reward_per_token_mean"),
        "win_rate": metrics.get("gen/win_rate"),
        "length": metrics.get("gen/length_mean"),
        "eos_rate": metrics.get("gen/eos_rate"),
    }


def run_unit(unit: Unit) -> dict[str, Any]:
    """Do the unit's work in ``<folder>.partial``, write ``result.json``, rename into place."""
    from tisdpo.pipeline.recipe import invoke
    from tisdpo.utils import quiet_libraries

    begun = time.time()
    partial = unit.folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    model = os.path.join(partial, "model")
    result: dict[str, Any] = {}
    with (
        open(os.path.join(partial, "log.txt"), "w", encoding="utf-8") as log,
        redirect_stdout(log),
        redirect_stderr(log),
        quiet_libraries(logs=True),
    ):
        if unit.train is not None:
            invoke("train", {**unit.train, "output_dir": model}, None, unit.name)
        if unit.weights is not None:
            invoke("weights", {**unit.weights, "output_file": os.path.join(partial, "weights.jsonl")}, None, unit.name)
        if unit.evaluate is not None:
            if unit.train is not None:
                targets = checkpoint_targets(model)
            else:
                targets = [("final", None, unit.evaluate["model_name_or_path"])]
            points = []
            for label, step, path in targets:
                out = os.path.join(partial, "eval", label)
                invoke("evaluate", {**unit.evaluate, "model_name_or_path": path, "output_dir": out}, None, unit.name)
                points.append(evaluation_point(label, step, out))
            result["points"] = points
            if unit.train is not None and not unit.keep_model:
                shutil.rmtree(model)
    result["seconds"] = round(time.time() - begun, 2)
    write_json(os.path.join(partial, RESULT), {"unit": json.loads(json.dumps(unit.spec(), default=str)), **result})
    if os.path.exists(unit.folder):
        shutil.rmtree(unit.folder)
    os.rename(partial, unit.folder)
    return result


def _init_worker() -> None:
    os.environ["TQDM_DISABLE"] = "1"
    import torch

    torch.set_num_threads(1)  # a 64-wide model is latency-bound: one thread per worker, workers side by side


def run_units(
    units: Sequence[Unit], workers: int, title: str, progress: Callable[[str], None] = print
) -> dict[str, dict[str, Any]]:
    """Run every unfinished unit (``workers`` at a time); return every unit's results by name."""
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for unit in units:
        stored = read_result(unit)
        if stored is None:
            todo.append(unit)
        else:
            results[unit.name] = stored
    if len(todo) < len(units):
        progress(f"  {title}: {len(units) - len(todo)} of {len(units)} units finished earlier")
    if not todo:
        return results
    begun = time.time()
    done = 0

    def report(unit: Unit, result: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        elapsed = time.time() - begun
        eta = elapsed / done * (len(todo) - done)
        progress(
            f"  {title} {done}/{len(todo)}: {unit.name} in {result['seconds']:.1f}s"
            f" (elapsed {elapsed / 60:.1f} min, about {eta / 60:.1f} min left)"
        )

    def failed(unit: Unit, err: BaseException) -> UserError:
        log = os.path.join(unit.folder + ".partial", "log.txt")
        message = err.format() if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        return UserError(f"study unit '{unit.name}' failed: {message} (its log: {log})")

    if workers <= 1 or len(todo) == 1:
        for unit in todo:
            try:
                result = run_unit(unit)
            except Exception as err:
                raise failed(unit, err) from err
            results[unit.name] = result
            report(unit, result)
        return results
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(run_unit, unit): unit for unit in todo}
        for future in as_completed(futures):
            unit = futures[future]
            try:
                result = future.result()
            except Exception as err:
                for other in futures:
                    other.cancel()
                raise failed(unit, err) from err
            results[unit.name] = result
            report(unit, result)
    return results
