"""What the study runs: its settings (``study.yaml``, or a user's file over it) and the arms it compares.

An *arm* is one way to train: DPO, or TIS-DPO with one weight source (oracle, oracle_sign, D, S, P,
random) and one transform variant. Each arm is trained at every beta of the sweep and every seed of
a phase, in one or more *regimes* (training-set size and label noise).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from tisdpo.config import load_yaml_config
from tisdpo.demo.oracle import ORACLE_SOURCES
from tisdpo.errors import UserError, did_you_mean

ESTIMATED_SOURCES: tuple[str, ...] = ("D", "S", "P")
SOURCES: tuple[str, ...] = (*ORACLE_SOURCES, *ESTIMATED_SOURCES, "random")
DEFAULT_VARIANT = "default"


@dataclass(frozen=True)
class Arm:
    """DPO (``source`` None) or TIS-DPO with weights from ``source`` under transform ``variant``."""

    source: str | None = None
    variant: str = DEFAULT_VARIANT

    @property
    def name(self) -> str:
        if self.source is None:
            return "dpo" if self.variant == DEFAULT_VARIANT else f"dpo_{self.variant}"
        return f"tisdpo_{self.source}" + ("" if self.variant == DEFAULT_VARIANT else f"/{self.variant}")

    @property
    def folder(self) -> str:
        return self.name.replace("/", "__")


DPO = Arm()
DPO_REACH = Arm(None, "reach")  # DPO at smaller betas, trained longer: how far can DPO go?


@dataclass
class Regime:
    """The preference data: the first ``n_pairs`` pairs of the task, labelled with ``label_temperature``."""

    n_pairs: int
    label_temperature: float


@dataclass
class StudyPlan:
    """The study's settings (``tisdpo/demo/study/study.yaml`` documents each with its default)."""

    factory: dict[str, Any]
    task_seed: int
    n_eval_prompts: int
    data_args: dict[str, Any]
    train_defaults: dict[str, Any]
    sft_pairs: int
    sft_args: dict[str, Any]
    contrastive_args: dict[str, Any]
    contrastive_prompts: dict[str, str]
    policy_args: dict[str, Any]
    evaluate_args: dict[str, Any]
    betas: list[float]
    explore_seeds: list[int]
    confirm_seeds: list[int]
    kl_fractions: list[float]
    regimes: dict[str, Regime]
    main_regime: str
    sources: list[str]
    weights: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    oracle_variants: list[str] = field(default_factory=list)
    dpo_reach: dict[str, Any] = field(default_factory=dict)
    workers: int = 2

    @classmethod
    def load(cls, override_path: str | None = None) -> StudyPlan:
        """The packaged plan, with the keys of ``override_path`` (a YAML mapping) replacing its own."""
        source = str(resources.files("tisdpo.demo.study").joinpath("study.yaml"))
        values = load_yaml_config(source)
        if override_path:
            source = override_path
            values.update(load_yaml_config(override_path))
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise UserError(f"unknown study key '{key}'{did_you_mean(key, known)}", source=source)
        try:
            regimes = {name: Regime(**spec) for name, spec in (values.get("regimes") or {}).items()}
            plan = cls(**{**values, "regimes": regimes})
        except TypeError as err:
            raise UserError(f"study settings: {err}", source=source) from None
        plan.validate(source)
        return plan

    def validate(self, source: str) -> None:
        def fail(message: str, key: str) -> None:
            raise UserError(message, source=source, field=key)

        if self.main_regime not in self.regimes:
            fail(f"'{self.main_regime}' is not one of the regimes ({', '.join(self.regimes)})", "main_regime")
        for name, regime in self.regimes.items():
            if regime.n_pairs < 2 or regime.n_pairs > self.sft_pairs:
                fail(f"n_pairs must be in [2, sft_pairs={self.sft_pairs}], got {regime.n_pairs}", f"regimes.{name}")
            if not regime.label_temperature > 0:
                fail(f"label_temperature must be > 0, got {regime.label_temperature}", f"regimes.{name}")
        for value in self.sources:
            if value not in SOURCES:
                fail(f"unknown weight source '{value}'{did_you_mean(value, SOURCES)}", "sources")
        if "D" not in self.sources:
            fail("the study compares D weights across regimes: sources must include D", "sources")
        for name in self.oracle_variants:
            if name not in self.variants:
                fail(f"'{name}' is not one of the variants", "oracle_variants")
        if len(self.betas) < 1 or any(b <= 0 for b in self.betas):
            fail(f"betas must be positive numbers, got {self.betas}", "betas")
        for key in ("explore_seeds", "confirm_seeds"):
            if len(getattr(self, key)) < 2:
                fail("at least 2 seeds are needed for an interval", key)
        if set(self.explore_seeds) & set(self.confirm_seeds):
            fail("confirmation seeds must be fresh (none of the explore_seeds)", "confirm_seeds")
        if not self.kl_fractions or any(not 0 < f <= 1 for f in self.kl_fractions):
            fail(f"kl_fractions must be in (0, 1], got {self.kl_fractions}", "kl_fractions")
        if self.workers < 1:
            fail(f"workers must be >= 1, got {self.workers}", "workers")
        from tisdpo.config import TisdpoConfig, WeightsArguments, check_values

        check_values(self.weights, [WeightsArguments], source, "weights")
        for name, flags in self.variants.items():
            check_values(flags, [WeightsArguments], source, f"variants.{name}")
        for key in ("train_defaults", "sft_args", "contrastive_args", "policy_args"):
            check_values(getattr(self, key), [TisdpoConfig], source, key)
        if self.dpo_reach:
            unknown = set(self.dpo_reach) - {"betas", "args"}
            if unknown or not self.dpo_reach.get("betas"):
                fail("expected {betas: [...], args: {...}} (DPO's extra runs)", "dpo_reach")
            check_values(self.dpo_reach.get("args") or {}, [TisdpoConfig], source, "dpo_reach.args")

    def settings(self, *keys: str) -> dict[str, Any]:
        """The named fields (a stage's fingerprint holds only the settings it uses)."""
        values = dataclasses.asdict(self)
        return {key: values[key] for key in keys}

    def transform(self, variant: str) -> dict[str, Any]:
        """The ``weight_*`` flags of a variant (``default``: ``weights`` itself)."""
        return {**self.weights, **(self.variants.get(variant, {}) if variant != DEFAULT_VARIANT else {})}

    def main_arms(self) -> list[Arm]:
        """DPO and every source with the default transform, in the main regime."""
        return [DPO, *(Arm(source) for source in self.sources)]

    def regime_arms(self, chosen_d: Arm) -> list[Arm]:
        """DPO, D with the chosen transform and (the ceiling) the oracle, in every other regime."""
        return [DPO, chosen_d, *([Arm("oracle")] if "oracle" in self.sources else [])]

    def variant_arms(self) -> list[Arm]:
        """D under every variant, and the oracle under ``oracle_variants``."""
        arms = [Arm("D", name) for name in self.variants]
        if "oracle" in self.sources:
            arms += [Arm("oracle", name) for name in self.oracle_variants]
        return arms

    def other_regimes(self) -> list[str]:
        return [name for name in self.regimes if name != self.main_regime]
