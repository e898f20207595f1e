"""The README.md model card of a saved model, so that a model pushed to the hub explains itself.

:func:`model_card` is a pure function of a :class:`ModelCardInfo`; :func:`write_model_card` writes
it atomically as ``README.md`` in the model's folder. :meth:`ModelCardInfo.from_training` gathers
the facts from the training arguments, the trainer's log history and, for TIS-DPO, the provenance
(``.meta.json``) of the weights file.

The card holds YAML front matter (``library_name: tisdpo``, ``base_model``, ``tags``, ``datasets``
when a hub id is known, ``license`` when known), then the objective with its formula and
parameters, the token-weight source and transform (TIS-DPO only), the training data and
hyperparameters, the final metrics, the tisdpo version and how to load the model.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from tisdpo.objectives import OBJECTIVES
from tisdpo.report.page import write_text
from tisdpo.report.tables import fmt, markdown_table
from tisdpo.version import __version__

# Parameters of each weight transform (tisdpo.weights.transforms.WeightTransformConfig fields).
TRANSFORM_PARAMETERS: dict[str, tuple[str, ...]] = {
    "exp": ("mu", "k", "min_weight", "max_weight"),
    "rank_based": ("rank_min", "rank_max"),
    "threshold_and_scale": ("scale_threshold", "rank_min", "rank_max"),
    "threshold": ("threshold",),
    "binary": ("binary_top_fraction",),
    "random": ("rank_min", "rank_max", "seed"),
    "origin": (),
}
TRAIN_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
EVAL_SKIPPED = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = (".json", ".jsonl", ".gz", ".parquet", ".csv", ".arrow", ".gguf", ".txt")


def hub_id(name: str | None) -> str | None:
    """``name`` when it looks like a hub repository id (``owner/name``) and is no local path, else None."""
    if not name or os.path.exists(name) or name.lower().endswith(_FILE_SUFFIXES):
        return None
    return name if _HUB_ID.match(name) and "/" in name else None


@dataclass
class ModelCardInfo:
    """Everything a model card says; every field but ``model_id`` and ``loss_type`` may be left out.

    Attributes:
        model_id: how to name the model in the loading snippet (hub id or folder).
        loss_type: the objective (``--loss_type``).
        base_model: the model training started from (hub id or path).
        objective: the objective's parameters that are set (``beta`` first).
        dataset_name: the training data as given (a file, folder or hub id).
        datasets: hub ids of the data, for the front matter.
        num_pairs: training pairs (or examples, for SFT) after filtering.
        training: hyperparameters and progress (steps, epochs, learning rate, batch sizes ...).
        train_metrics / eval_metrics: final values from the trainer's log history.
        weights: the token-weight provenance (a weights file's ``.meta.json``), TIS-DPO only.
        is_adapter: the folder holds a PEFT adapter, not full weights.
        license: the license, when known (omitted otherwise).
        tags: extra front-matter tags.
        tisdpo_version: the package version that trained the model.
    """

    model_id: str
    loss_type: str
    base_model: str | None = None
    objective: dict[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None
    datasets: list[str] = field(default_factory=list)
    num_pairs: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    weights: dict[str, Any] | None = None
    is_adapter: bool = False
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    tisdpo_version: str = __version__

    @classmethod
    def from_training(
        cls,
        args: Any,
        model_name: str | None,
        dataset_name: str | None,
        log_history: list[dict[str, Any]],
        weights_meta: dict[str, Any] | None = None,
        num_pairs: int | None = None,
        is_adapter: bool = False,
    ) -> ModelCardInfo:
        """The card's facts from a finished run.

        ``args`` is the run's :class:`tisdpo.config.TisdpoConfig`, ``model_name`` the starting model,
        ``log_history`` the trainer's ``state.log_history``, ``weights_meta`` the weights file's
        provenance (:func:`tisdpo.weights.io.read_meta`; used for TIS-DPO only).
        """
        loss_type = str(args.loss_type)
        data_ids = [hub_id(dataset_name)]
        if weights_meta:
            data_ids.append(hub_id(weights_meta.get("dataset")))
        return cls(
            model_id=getattr(args, "hub_model_id", None) or args.output_dir,
            loss_type=loss_type,
            base_model=model_name,
            objective=objective_parameters(args),
            dataset_name=dataset_name,
            datasets=list(dict.fromkeys(i for i in data_ids if i)),
            num_pairs=num_pairs,
            training=training_parameters(args, log_history),
            train_metrics=final_train_metrics(log_history),
            eval_metrics=final_eval_metrics(log_history),
            weights=weights_meta if loss_type == "tisdpo" else None,
            is_adapter=is_adapter,
        )


# ----------------------------------------------------------------------------- gathering


def objective_parameters(args: Any) -> dict[str, Any]:
    """``beta`` and the parameters of ``args.loss_type`` (those that are set); none of them for SFT."""
    objective = OBJECTIVES.get(args.loss_type)
    if objective is None or not objective.pairs:
        return {}
    values = {"beta": args.beta}
    for name in objective.parameters:
        values[name] = getattr(args, name, None)
    if args.loss_type == "sparsepo" and values.get("sparsepo_mask") == "learned":
        values.pop("sparsepo_threshold", None)  # only the reference masks use it
    return {k: v for k, v in values.items() if v is not None}


def _last(log_history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return next((entry for entry in reversed(log_history) if key in entry), {})


def training_parameters(args: Any, log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Hyperparameters and how far training went (steps and epochs reached, from the log history)."""
    processes = getattr(args, "world_size", 1) or 1
    per_device = args.per_device_train_batch_size
    accumulation = args.gradient_accumulation_steps
    steps = max((entry.get("step", 0) for entry in log_history), default=0)
    epochs = max((entry.get("epoch", 0) for entry in log_history), default=0)
    values: dict[str, Any] = {
        "steps": steps or None,
        "epochs": round(float(epochs), 4) if epochs else None,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "processes": processes,
        "effective_batch_size": per_device * accumulation * processes,
        "seed": args.seed,
    }
    return {k: v for k, v in values.items() if v is not None}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def final_train_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged training values of :data:`TRAIN_METRICS`, and the run's mean ``train_loss``."""
    last = _last(log_history, "loss")
    metrics = {key: last[key] for key in TRAIN_METRICS if _finite(last.get(key))}
    summary = _last(log_history, "train_loss")
    if _finite(summary.get("train_loss")):
        metrics["train_loss"] = summary["train_loss"]
    return metrics


def final_eval_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """Every ``eval_*`` value of the last evaluation (timings left out)."""
    last = _last(log_history, "eval_loss")
    return {
        key: value
        for key, value in last.items()
        if key.startswith("eval_") and key not in EVAL_SKIPPED and _finite(value)
    }


# ----------------------------------------------------------------------------- rendering


def front_matter(info: ModelCardInfo) -> str:
    """The YAML header the hub reads (library, base model, tags, datasets, license)."""
    family = ["sft"] if info.loss_type == "sft" else ["dpo", info.loss_type]
    adapter = ["peft", "lora"] if info.is_adapter else []
    data: dict[str, Any] = {"library_name": "tisdpo"}
    if hub_id(info.base_model):
        data["base_model"] = info.base_model
    if info.license:
        data["license"] = info.license
    data["tags"] = list(dict.fromkeys(["tisdpo", *family, *adapter, *info.tags]))
    if info.datasets:
        data["datasets"] = list(info.datasets)
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---"


def _title(info: ModelCardInfo) -> str:
    name = os.path.basename(os.path.normpath(info.model_id)) or info.model_id
    return f"# {name}"


def _code(value: Any) -> str:
    return f"`{value}`"


def objective_section(info: ModelCardInfo) -> str:
    objective = OBJECTIVES.get(info.loss_type)
    lines = ["## Objective", "", f"{objective.summary}." if objective else f"`{info.loss_type}`", ""]
    rows = [["loss_type", _code(info.loss_type)], *([name, _code(value)] for name, value in info.objective.items())]
    lines.append(markdown_table(["parameter", "value"], rows))
    return "\n".join(lines)


def _prompt_name(prompt: Any) -> str:
    if isinstance(prompt, dict):
        name, text = prompt.get("name"), prompt.get("text", "")
        return f"{name} ({text!r})" if name == "custom" else f"preset `{name}`: {text!r}"
    return repr(prompt)


def weight_source_lines(meta: dict[str, Any]) -> list[str]:
    """How the contrastive pair was built, from a weights file's provenance."""
    method = meta.get("method")
    if method == "prompt":
        return [
            f"- source: TIS-DPO(P), one model under two prompts: `{meta.get('model')}`",
            f"- positive prompt: {_prompt_name(meta.get('positive_prompt'))}",
            f"- negative prompt: {_prompt_name(meta.get('negative_prompt'))}",
        ]
    if method == "models":
        return [
            "- source: two contrastive models (TIS-DPO(S) or (D))",
            f"- positive model: `{meta.get('positive_model')}`",
            f"- negative model: `{meta.get('negative_model')}`",
        ]
    if method == "oracle":
        return ["- source: the task's true token rewards (oracle; the ceiling of token weighting)"]
    if method == "oracle_sign":
        return [
            "- source: estimated rewards with the sign of every truly rewarded token set by the truth (oracle sign)"
        ]
    return ["- source: not recorded"]


def weight_transform_line(transform: dict[str, Any] | None) -> str:
    """``name (param=value, ...)`` of the transform from token rewards to weights."""
    if not transform:
        return "- transform: not recorded"
    name = transform.get("name", "?")
    params = ", ".join(f"{p}={transform[p]}" for p in TRANSFORM_PARAMETERS.get(name, ()) if p in transform)
    normalize = transform.get("normalize", "none")
    scaled = f", normalised to mean 1 per {normalize}" if normalize != "none" else ""
    return f"- transform: `{name}`" + (f" ({params})" if params else "") + scaled


def weights_section(info: ModelCardInfo) -> str | None:
    """Where the token weights came from (TIS-DPO only; None for every other objective)."""
    if info.loss_type != "tisdpo":
        return None
    lines = [
        "## Token weights",
        "",
        "Each token's weight comes from its reward `r_t = log pi+(y_t | x, y_<t) - log pi-(y_t | x, y_<t)` "
        "under a contrastive pair of models, transformed into a weight (`s = r` on the chosen side, "
        "`s = -r` on the rejected side).",
        "",
    ]
    meta = info.weights
    if not meta:
        lines.append("- read from the dataset's `chosen_weights` / `rejected_weights` columns (no provenance recorded)")
        return "\n".join(lines)
    lines += weight_source_lines(meta)
    lines.append(weight_transform_line(meta.get("transform")))
    for key, label in (("tokenizer", "tokenizer"), ("dataset", "scored dataset"), ("derived_from", "derived from")):
        if meta.get(key):
            lines.append(f"- {label}: `{meta[key]}`")
    if meta.get("rows") is not None:
        lines.append(f"- weighted pairs: {meta['rows']}")
    return "\n".join(lines)


def data_section(info: ModelCardInfo) -> str:
    noun = "examples" if info.loss_type == "sft" else "pairs"
    rows = []
    if info.dataset_name:
        rows.append(["dataset", _code(info.dataset_name)])
    if info.num_pairs is not None:
        rows.append([f"training {noun}", str(info.num_pairs)])
    rows += [[name, _code(value)] for name, value in info.training.items()]
    if not rows:
        return "## Training\n\nNot recorded."
    return "## Training\n\n" + markdown_table(["setting", "value"], rows)


def metrics_section(info: ModelCardInfo) -> str | None:
    """Final training metrics, then evaluation metrics, as one table; None when there are none."""
    rows = [[f"train/{k}" if k != "train_loss" else k, fmt(v, 4)] for k, v in info.train_metrics.items()]
    rows += [[k, fmt(v, 4)] for k, v in info.eval_metrics.items()]
    if not rows:
        return None
    note = "`train_loss` is the mean over the run, `train/*` the last logged values"
    if info.loss_type != "sft":
        note += "; `rewards/*` are `beta * sum_t d_t` summed over the completion tokens"
    if info.loss_type == "tisdpo":
        note += " without the token weights (comparable with DPO runs)"
    note += "."
    return "## Results\n\n" + markdown_table(["metric", "value"], rows) + "\n\n" + note


def loading_section(info: ModelCardInfo) -> str:
    """A snippet that loads the model (through peft when the folder is an adapter)."""
    if info.is_adapter:
        code = [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f"model = AutoPeftModelForCausalLM.from_pretrained({json.dumps(info.model_id)})",
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(info.model_id)})",
        ]
    else:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"model = AutoModelForCausalLM.from_pretrained({json.dumps(info.model_id)})",
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(info.model_id)})",
        ]
    lines = ["## How to load", "", "```python", *code, "```"]
    if info.loss_type == "sparsepo" and info.objective.get("sparsepo_mask") == "learned":
        lines += [
            "",
            "The learned SparsePO mask head is saved beside the weights (`sparsepo_mask_head.*`); transformers "
            "skips it, which changes nothing for generation.",
        ]
    return "\n".join(lines)


def model_card(info: ModelCardInfo) -> str:
    """The whole README.md: front matter, then one section per topic (pure: no files read)."""
    intro = f"This model was trained with tisdpo {info.tisdpo_version}"
    intro += f" from `{info.base_model}`." if info.base_model else "."
    if info.is_adapter:
        intro += " The folder holds a LoRA adapter (peft), not full weights."
    sections = [
        front_matter(info),
        _title(info),
        intro,
        objective_section(info),
        weights_section(info),
        data_section(info),
        metrics_section(info),
        loading_section(info),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def write_model_card(output_dir: str, info: ModelCardInfo) -> None:
    """Write ``output_dir/README.md`` atomically (an existing card is replaced)."""
    write_text(os.path.join(output_dir, "README.md"), model_card(info))
