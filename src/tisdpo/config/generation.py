"""Flags of ``tisdpo evaluate --generate`` (parsed together with the model, data and training flags).

The seed (``--seed``), the weights dtype (``--dtype``), ``--trust_remote_code`` and ``--output_dir``
are the existing flags of the other argument groups and are not repeated here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tisdpo.errors import UserError


@dataclass
class GenerationArguments:
    generate: bool = field(
        default=False,
        metadata={
            "help": "Sample responses from the policy and a baseline for held-out prompts, score them "
            "and estimate KL(policy || reference) (in addition to the preference metrics with --preference_metrics)."
        },
    )
    preference_metrics: bool = field(
        default=False,
        metadata={"help": "With --generate: also compute the preference metrics (needs chosen/rejected pairs)."},
    )
    baseline_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model whose samples the policy's are compared with (default: the reference model)."},
    )
    sample_baseline: bool = field(
        default=True,
        metadata={
            "help": "Sample the baseline too (win rate, baseline reward); false halves the sampling when only "
            "the policy's reward, KL and length are needed (e.g. at every checkpoint of a sweep)."
        },
    )
    num_samples: int = field(default=1, metadata={"help": "Responses sampled per prompt from each model."})
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens generated per response (EOS stops)."})
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature (0 = greedy). KL is an unbiased estimate only at 1 with top_p 1."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1 = off)."})
    top_k: int = field(default=0, metadata={"help": "Keep only the k most likely tokens (0 = off)."})
    generation_batch_size: int = field(
        default=32, metadata={"help": "Sequences per generate call (and per teacher-forced scoring batch)."}
    )
    max_prompts: int | None = field(
        default=None, metadata={"help": "Use only the first N distinct prompts of the dataset."}
    )
    prompt_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the prompt (default: prompt, post, or the prompt of a chosen/rejected pair)."
        },
    )
    reference_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding reference texts for ROUGE (default: summary, reference, label or completion)."
        },
    )
    scorer: str | None = field(
        default=None,
        metadata={
            "help": "A Python scorer 'module:function' taking (prompts: list[str], responses: list[str]) "
            "and returning one float per response; the primary reward when given."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A reward model: AutoModelForSequenceClassification with one output (higher = better)."},
    )
    safety_classifier_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A safety/cost classifier: AutoModelForSequenceClassification with several labels."},
    )
    safe_label: str | None = field(
        default=None,
        metadata={
            "help": "The classifier's safe label: its name (id2label) or index (default: the label named 'safe')."
        },
    )
    scorer_batch_size: int = field(default=16, metadata={"help": "Texts per reward model / classifier batch."})
    scorer_max_length: int | None = field(
        default=None,
        metadata={
            "help": "Most tokens a reward model / classifier reads; longer inputs keep their end "
            "(default: the model's max_position_embeddings)."
        },
    )
    bootstrap_samples: int = field(
        default=1000, metadata={"help": "Bootstrap resamples of prompts for the win-rate interval."}
    )

    def __post_init__(self) -> None:
        for name in (
            "num_samples",
            "max_new_tokens",
            "generation_batch_size",
            "scorer_batch_size",
            "bootstrap_samples",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise UserError(f"--max_prompts must be at least 1, got {self.max_prompts}")
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"--top_k must be >= 0, got {self.top_k}")
        if self.scorer is not None and ":" not in self.scorer:
            raise UserError(f"--scorer must be 'module:function', got '{self.scorer}'")

    @property
    def exact_sampling(self) -> bool:
        """Samples come from the model's own distribution (the KL estimate is unbiased)."""
        return self.temperature == 1.0 and self.top_p == 1.0 and self.top_k == 0
