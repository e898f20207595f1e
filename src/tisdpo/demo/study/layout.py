"""Where the study's stages put their products, and how later stages and the report get them back:
the folders of a run (:class:`Layout`), the weights file an arm trains on, a finished grid's runs and
the SFT model's rewards.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tisdpo.demo.oracle import ORACLE_SOURCES, write_oracle_weights
from tisdpo.demo.study.plan import DEFAULT_VARIANT, Arm, StudyPlan


class Layout:
    """Where every stage's products live, once the stages before it have finished."""

    def __init__(self, plan: StudyPlan, inputs: dict[str, str]) -> None:
        self.plan = plan
        self.inputs = inputs

    def train_file(self, regime: str, seed: int) -> str:
        return os.path.join(self.inputs["task"], f"s{seed}", regime, "train.jsonl")

    @property
    def prompts(self) -> str:
        return os.path.join(self.inputs["task"], "prompts.jsonl")

    @property
    def sft(self) -> str:
        return self.inputs["sft"]

    def contrast_model(self, regime: str, seed: int, method: str, side: str) -> str:
        return os.path.join(self.inputs["models"], "contrast", f"s{seed}", regime, f"{method}_{side}", "model")

    def estimated_weights(self, regime: str, seed: int, source: str) -> str:
        if source == "P":
            return os.path.join(self.inputs["models"], "weights_P", f"s{seed}", regime, "weights.jsonl")
        return os.path.join(self.inputs["weights"], f"s{seed}", regime, source, "weights.jsonl")

    def sft_point(self, seed: int) -> dict[str, Any]:
        """The SFT model's evaluation with seed ``seed`` (reward, reward per word, length, ...)."""
        path = os.path.join(self.inputs["models"], "sft_eval", f"s{seed}", "result.json")
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)["points"][0]

    def common(self) -> dict[str, Any]:
        return dict(self.plan.data_args)

    def train_args(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {**self.plan.data_args, **self.plan.train_defaults, **extra}

    def evaluate_args(self, seed: int) -> dict[str, Any]:
        return {
            **self.plan.data_args,
            **self.plan.evaluate_args,
            "generate": True,
            "seed": seed,
            "ref_model_name_or_path": self.sft,
            "dataset_name": self.prompts,
        }


def transform_config_of(flags: dict[str, Any]):
    from tisdpo.config import WeightsArguments, transform_config

    return transform_config(WeightsArguments(**flags))


def derive_weights(layout: Layout, arm: Arm, regime: str, seed: int, out_dir: str) -> str:
    """The weights file ``arm`` trains on in ``regime`` with seed ``seed``'s data: the estimated file itself
    when its transform is the default, else re-derived from its rewards (or the oracle's) into ``out_dir``."""
    from tisdpo.weights.estimate import rederive_weights
    from tisdpo.weights.io import write_weights_file

    plan = layout.plan
    if arm.source in ("D", "S", "P") and arm.variant == DEFAULT_VARIANT:
        return layout.estimated_weights(regime, seed, arm.source)
    relative = os.path.join(f"s{seed}", regime, f"{arm.folder}.jsonl")
    derived_earlier = os.path.join(layout.inputs["weights"], "derived", relative)
    if os.path.exists(derived_earlier):
        return derived_earlier
    path = os.path.join(out_dir, relative)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flags = plan.transform(arm.variant)
    if arm.source == "random":
        flags = {"weight_transform": "random"}
    config = transform_config_of(flags)
    source_file = layout.estimated_weights(regime, seed, arm.source if arm.source in ("D", "S", "P") else "D")
    if arm.source in ORACLE_SOURCES:
        write_oracle_weights(source_file, path, arm.source, config)
    else:
        rows, meta = rederive_weights(source_file, config)
        write_weights_file(path, rows, meta)
    return path


def finished_grid(folder: str, metric: str = "reward") -> dict[str, dict[str, dict[int, list]]]:
    """A finished grid stage's runs, read back from its units' result files: regime -> arm -> seed ->
    the (KL, ``metric``) points of every beta and checkpoint (``metric``: ``reward``, ``reward_per_word``)."""
    runs: dict[str, dict[str, dict[int, list]]] = {}
    for stored in finished_results(folder):
        tags = stored["unit"]["tags"]
        points = [(p["kl"], p[metric]) for p in stored["points"]]
        by_seed = runs.setdefault(tags["regime"], {}).setdefault(tags["arm"], {})
        by_seed.setdefault(int(tags["seed"]), []).extend(points)
    return runs


def finished_results(folder: str) -> list[dict[str, Any]]:
    """The result files of a finished grid stage's units."""
    results = []
    for root, _dirs, files in os.walk(folder):
        if "result.json" in files and not root.endswith(".partial"):
            with open(os.path.join(root, "result.json"), encoding="utf-8") as handle:
                results.append(json.load(handle))
    return results


def sft_values(layout: Layout, seeds: list[int], metric: str = "reward") -> dict[int, float]:
    return {seed: layout.sft_point(seed)[metric] for seed in seeds}
