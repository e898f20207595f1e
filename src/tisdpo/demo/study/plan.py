"""What the study runs: its settings (``study.yaml``, or a user's file over it) and the arms it compares.

An *arm* is one way to train: DPO, or TIS-DPO with one weight source (oracle, oracle_sign, D, S, P,
random) and one transform variant. Every arm is trained with the same budget (``policy_args``) at
every beta of the sweep, for every seed of a phase, in every *regime* (training-set size and label
noise). Each seed draws its own task data and trains its own contrastive models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from tisdpo.config import load_yaml_config
from tisdpo.demo.oracle import ORACLE_SOURCES
from tisdpo.errors import UserError, did_you_mean

ESTIMATED_SOURCES: tuple[str, ...] = ("D", "S", "P")
SOURCES: tuple[str, ...] = (*ORACLE_SOURCES, *ESTIMATED_SOURCES, "random")
DEFAULT_VARIANT = "default"
ESTIMATE_KEYS: tuple[str, ...] = ("seconds_per_unit", "seconds_per_step", "seconds_per_evaluation")


def load_plan(
    plan_class: type,
    package: str,
    filename: str,
    override_path: str | None,
    quick: bool,
    build: Callable[..., Any] | None = None,
) -> Any:
    """A packaged plan (with its ``quick`` overrides when ``quick``), the keys of ``override_path`` (a YAML
    mapping) replacing its own, each checked against ``plan_class``'s fields, built by ``build`` (default:
    the class itself) from the values, then validated (``plan.validate(source)``)."""
    source = str(resources.files(package).joinpath(filename))
    values = load_yaml_config(source)
    quick_overrides = values.pop("quick", {})
    if quick:
        values.update(quick_overrides)
    if override_path:
        source = override_path
        values.update(load_yaml_config(override_path))
    known = [f.name for f in dataclasses.fields(plan_class)]
    for key in values:
        if key not in known:
            raise UserError(f"unknown study key '{key}'{did_you_mean(key, known)}", source=source)
    try:
        plan = (build or plan_class)(**values)
    except TypeError as err:
        raise UserError(f"study settings: {err}", source=source) from None
    plan.validate(source)
    return plan


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
    drop_label_ties: bool = True
    estimate: dict[str, float] = field(default_factory=dict)
    workers: int = 2

    @classmethod
    def load(cls, override_path: str | None = None, quick: bool = False) -> StudyPlan:
        """The packaged plan (with its ``quick`` overrides when ``quick``), with the keys of
        ``override_path`` (a YAML mapping) replacing its own."""

        def build(**values: Any) -> StudyPlan:
            regimes = {name: Regime(**spec) for name, spec in (values.get("regimes") or {}).items()}
            return cls(**{**values, "regimes": regimes})

        return load_plan(cls, "tisdpo.demo.study", "study.yaml", override_path, quick, build)

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
        if len(self.betas) < 1 or any(b <= 0 for b in self.betas):
            fail(f"betas must be positive numbers, got {self.betas}", "betas")
        if not self.explore_seeds:
            fail("at least 1 explore seed is needed", "explore_seeds")
        if len(self.confirm_seeds) < 2:
            fail("at least 2 seeds are needed for an interval", "confirm_seeds")
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
        unknown = set(self.estimate) - set(ESTIMATE_KEYS)
        if unknown:
            fail(f"unknown estimate key(s) {sorted(unknown)}; expected {', '.join(ESTIMATE_KEYS)}", "estimate")

    def settings(self, *keys: str) -> dict[str, Any]:
        """The named fields (a stage's fingerprint holds only the settings it uses)."""
        values = dataclasses.asdict(self)
        return {key: values[key] for key in keys}

    def transform(self, variant: str) -> dict[str, Any]:
        """The ``weight_*`` flags of a variant (``default``: ``weights`` itself)."""
        return {**self.weights, **(self.variants.get(variant, {}) if variant != DEFAULT_VARIANT else {})}

    def main_arms(self) -> list[Arm]:
        """DPO and every source with the default transform (explored in every regime)."""
        return [DPO, *(Arm(source) for source in self.sources)]

    def variant_arms(self) -> list[Arm]:
        """D under every variant (explored in the main regime only)."""
        return [Arm("D", name) for name in self.variants]

    def confirm_arms(self, chosen_variant: str) -> list[Arm]:
        """DPO and every source, D with the chosen transform (confirmed in every regime)."""
        return [DPO, *(Arm(source, chosen_variant if source == "D" else DEFAULT_VARIANT) for source in self.sources)]

    def contrast_methods(self) -> list[str]:
        """The sources that need contrastive models (trained per seed and regime)."""
        return [source for source in ("S", "D") if source in self.sources]

    def train_seeds(self) -> list[int]:
        return [*self.explore_seeds, *self.confirm_seeds]

    def unit_counts(self) -> dict[str, int]:
        """How many units each stage runs (training runs, weight scorings, evaluations)."""
        per_seed_regime = 2 * len(self.contrast_methods()) + ("P" in self.sources)
        n_regimes, n_betas = len(self.regimes), len(self.betas)
        return {
            "models": len(self.train_seeds()) * (n_regimes * per_seed_regime + 1),
            "weights": len(self.train_seeds()) * n_regimes * len(self.contrast_methods()),
            "explore": n_betas * len(self.explore_seeds) * (n_regimes * len(self.main_arms()) + len(self.variants)),
            "confirm": n_betas * len(self.confirm_seeds) * n_regimes * len(self.main_arms()),
        }

    def estimated_minutes(self) -> float:
        """The run's estimated wall time from ``estimate`` (seconds per unit, per training step and per
        evaluation, measured on this model size), with ``workers`` units side by side."""
        per_unit = self.estimate.get("seconds_per_unit", 0.0)
        per_step = self.estimate.get("seconds_per_step", 0.0)
        per_evaluation = self.estimate.get("seconds_per_evaluation", 0.0)
        policy_steps = self.policy_args.get("max_steps", 0)
        evaluations = policy_steps // max(1, self.policy_args.get("save_steps") or policy_steps or 1)
        counts = self.unit_counts()
        n_contrast = len(self.train_seeds()) * len(self.regimes) * 2 * len(self.contrast_methods())
        n_sft_steps = 2 * self.sft_pairs * self.sft_args.get("num_train_epochs", 1)
        n_sft_steps //= self.train_defaults.get("per_device_train_batch_size", 8)
        n_grid = counts["explore"] + counts["confirm"]
        unit_seconds = (
            (counts["models"] + counts["weights"] + n_grid) * per_unit
            + n_contrast * self.contrastive_args.get("max_steps", 0) * per_step
            + len(self.train_seeds()) * per_evaluation
            + n_grid * (policy_steps * per_step + evaluations * per_evaluation)
        )
        return (n_sft_steps * per_step + unit_seconds / max(1, self.workers)) / 60
