"""Scorers of generated responses behind one small interface.

A scorer has a ``name`` and ``score(prompts, responses) -> {key: [value per response]}``: ``prompts``
are :class:`ScoringPrompt` (the prompt text as the policy saw it, the data's messages for message
prompts, the reference texts), ``responses`` the decoded texts. A value may be ``None`` (ROUGE of a
prompt without references). ``close()`` frees what the scorer loaded.

* :class:`CallableScorer` (``--scorer module:function``): ``function(prompts: list[str],
  responses: list[str]) -> list[float]``; key ``scorer``.
* :class:`RewardModelScorer` (``--reward_model_name_or_path``): an
  ``AutoModelForSequenceClassification`` with exactly one output; key ``reward_model``.
* :class:`SafetyClassifierScorer` (``--safety_classifier_name_or_path``, ``--safe_label``): a
  classifier with several labels; keys ``safe`` (1 when the argmax label is the safe label, else 0)
  and ``safe_prob`` (softmax probability of the safe label).
* :class:`RougeScorer`: ROUGE-1/2/L F1 against the references; keys ``rouge1``, ``rouge2``, ``rougeL``.

Model inputs (reward model, classifier): when the scorer's tokenizer has a chat template, the
conversation ``[user: prompt, assistant: response]`` (the data's messages plus the response for
message prompts) rendered by that template; otherwise ``prompt + response`` as text (a space between
them when neither side has one), encoded with the tokenizer's special tokens. Inputs longer than
``--scorer_max_length`` keep their end. Remote code runs only with ``--trust_remote_code``.
"""

from __future__ import annotations

import gc
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tisdpo.errors import UserError
from tisdpo.evaluation.rouge import ROUGE_KEYS, rouge_scores
from tisdpo.scoring import length_sorted_batches

Scores = dict[str, list[float | None]]


@dataclass(frozen=True)
class ScoringPrompt:
    text: str  # the prompt as the policy saw it (chat template applied to message prompts)
    messages: list[dict[str, str]] | None = None  # the data's messages, for message prompts
    references: tuple[str, ...] = ()


class Scorer:
    name = "scorer"

    def score(self, prompts: Sequence[ScoringPrompt], responses: Sequence[str]) -> Scores:
        raise NotImplementedError

    def close(self) -> None:
        """Free the memory the scorer holds."""


def join_text(prompt: str, response: str) -> str:
    if prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        return f"{prompt} {response}"
    return prompt + response


# -- Python callables -----------------------------------------------------------------------------


def load_callable(spec: str, flag: str = "scorer") -> Callable[..., Any]:
    """``module:function`` (the module importable from sys.path) -> the function."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(f"expected 'module:function', got '{spec}'", field=flag)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"cannot import module '{module_name}' ({err})", field=flag) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserError(f"module '{module_name}' has no attribute '{attribute}'", field=flag)
        target = getattr(target, part)
    if not callable(target):
        raise UserError(f"'{spec}' is not callable", field=flag)
    return target


class CallableScorer(Scorer):
    name = "scorer"

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.function = load_callable(spec)

    def score(self, prompts: Sequence[ScoringPrompt], responses: Sequence[str]) -> Scores:
        values = self.function([p.text for p in prompts], list(responses))
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise UserError(f"'{self.spec}' must return a list of numbers", field="scorer") from None
        if len(values) != len(responses):
            raise UserError(
                f"'{self.spec}' returned {len(values)} scores for {len(responses)} responses", field="scorer"
            )
        if any(math.isnan(v) for v in values):
            raise UserError(f"'{self.spec}' returned NaN", field="scorer")
        return {self.name: values}


# -- sequence classifiers -------------------------------------------------------------------------


def load_classifier(
    name_or_path: str,
    flag: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) of an ``AutoModelForSequenceClassification``, with people-friendly errors."""
    from transformers import AutoModelForSequenceClassification

    from tisdpo.modeling import check_model_folder, load_tokenizer, looks_local, resolve_dtype

    if looks_local(name_or_path):
        check_model_folder(name_or_path)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name_or_path,
            dtype=resolve_dtype(dtype),
            trust_remote_code=trust_remote_code,
            revision=revision,
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = "" if trust_remote_code else " (models with their own code need --trust_remote_code)"
        raise UserError(
            f"could not load a sequence classifier for --{flag}: {type(err).__name__}: {message}{hint}",
            source=name_or_path,
        ) from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(
            f"--{flag} must be a trained sequence classifier, but the checkpoint has no weights for "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} (a causal LM is not a reward model)",
            source=name_or_path,
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def classifier_config(
    name_or_path: str, flag: str, trust_remote_code: bool = False, revision: str | None = None
) -> Any:
    """The model config alone (cheap), to check the head before any generation runs."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError, KeyError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = "" if trust_remote_code else " (models with their own code need --trust_remote_code)"
        raise UserError(
            f"could not read the config for --{flag}: {type(err).__name__}: {message}{hint}", source=name_or_path
        ) from None


class ClassifierScorer(Scorer):
    """Shared by the reward model and the safety classifier: batched logits of prompt + response."""

    flag = "reward_model_name_or_path"

    def __init__(
        self,
        name_or_path: str,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        revision: str | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.name_or_path = name_or_path
        self.model, self.tokenizer = load_classifier(name_or_path, self.flag, dtype, trust_remote_code, revision)
        self.check_head(self.model.config, name_or_path)
        if device is not None:
            self.model.to(device)
        self.batch_size = batch_size
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None)

    @classmethod
    def check_head(cls, config: Any, name_or_path: str) -> None:
        raise NotImplementedError

    @classmethod
    def check(cls, name_or_path: str, trust_remote_code: bool = False, revision: str | None = None, **_: Any) -> Any:
        """Check the head from the config alone; returns the config."""
        config = classifier_config(name_or_path, cls.flag, trust_remote_code, revision)
        cls.check_head(config, name_or_path)
        return config

    def encode(self, prompt: ScoringPrompt, response: str) -> list[int]:
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            messages = list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.text}]
            text = tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": response}], tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(join_text(prompt.text, response))["input_ids"]
        if self.max_length and len(ids) > self.max_length:
            ids = ids[len(ids) - self.max_length :]
        return ids

    @torch.no_grad()
    def logits(self, prompts: Sequence[ScoringPrompt], responses: Sequence[str]) -> torch.Tensor:
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        pad = self.model.config.pad_token_id
        pad = pad if pad is not None else 0
        device = next(self.model.parameters()).device
        out = torch.zeros((len(encoded), self.model.config.num_labels), dtype=torch.float32)
        for batch in length_sorted_batches([len(ids) for ids in encoded], self.batch_size):
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(encoded[i])] = torch.as_tensor(encoded[i], dtype=torch.long)
                attention_mask[row, : len(encoded[i])] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            out[torch.as_tensor(batch)] = logits.float().cpu()
        return out

    def close(self) -> None:
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class RewardModelScorer(ClassifierScorer):
    name = "reward_model"
    flag = "reward_model_name_or_path"

    @classmethod
    def check_head(cls, config: Any, name_or_path: str) -> None:
        if config.num_labels != 1:
            raise UserError(
                f"a reward model must have exactly one output (num_labels=1), this one has {config.num_labels} "
                "(for a classifier with several labels use --safety_classifier_name_or_path)",
                source=name_or_path,
                field=cls.flag,
            )

    def score(self, prompts: Sequence[ScoringPrompt], responses: Sequence[str]) -> Scores:
        return {self.name: self.logits(prompts, responses)[:, 0].tolist()}


def resolve_label(config: Any, label: str | None, source: str) -> int:
    """Index of a classifier label given by name or index (default: the label named 'safe')."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = ", ".join(f"{i}={n}" for i, n in sorted(id2label.items())) or "none"
    if label is None:
        matches = [i for i, n in id2label.items() if n.lower() == "safe"]
        if len(matches) == 1:
            return matches[0]
        raise UserError(
            f"which label means safe? pass --safe_label (a label name or index); the labels are: {names}",
            source=source,
            field="safe_label",
        )
    if label.strip().lstrip("-").isdigit():
        index = int(label)
        if not 0 <= index < config.num_labels:
            raise UserError(
                f"label index {index} is out of range (the classifier has {config.num_labels} labels: {names})",
                source=source,
                field="safe_label",
            )
        return index
    matches = [i for i, n in id2label.items() if n == label] or [
        i for i, n in id2label.items() if n.lower() == label.lower()
    ]
    if len(matches) != 1:
        raise UserError(f"no label named '{label}' (the labels are: {names})", source=source, field="safe_label")
    return matches[0]


class SafetyClassifierScorer(ClassifierScorer):
    name = "safety"
    flag = "safety_classifier_name_or_path"

    def __init__(self, name_or_path: str, safe_label: str | None = None, **kwargs: Any) -> None:
        super().__init__(name_or_path, **kwargs)
        self.safe_index = resolve_label(self.model.config, safe_label, name_or_path)

    @classmethod
    def check(
        cls,
        name_or_path: str,
        trust_remote_code: bool = False,
        revision: str | None = None,
        safe_label: str | None = None,
        **_: Any,
    ) -> Any:
        config = super().check(name_or_path, trust_remote_code, revision)
        resolve_label(config, safe_label, name_or_path)
        return config

    @classmethod
    def check_head(cls, config: Any, name_or_path: str) -> None:
        if config.num_labels < 2:
            raise UserError(
                f"a safety classifier needs several labels, this model has {config.num_labels} output "
                "(for a one-output reward or cost model use --reward_model_name_or_path)",
                source=name_or_path,
                field=cls.flag,
            )

    def score(self, prompts: Sequence[ScoringPrompt], responses: Sequence[str]) -> Scores:
        logits = self.logits(prompts, responses)
        safe = (logits.argmax(-1) == self.safe_index).float().tolist()
        return {"safe": safe, "safe_prob": logits.softmax(-1)[:, self.safe_index].tolist()}


# -- ROUGE ----------------------------------------------------------------------------------------


class RougeScorer(Scorer):
    name = "rouge"

    def score(self, prompts: Sequence[ScoringPrompt], responses: Sequence[str]) -> Scores:
        out: Scores = {key: [] for key in ROUGE_KEYS}
        for prompt, response in zip(prompts, responses):
            values = rouge_scores(response, prompt.references) if prompt.references else None
            for key in ROUGE_KEYS:
                out[key].append(None if values is None else values[key])
        return out
