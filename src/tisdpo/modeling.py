"""Load models and tokenizers (hub id or local folder), with dtype, attention and PEFT options."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from tisdpo.errors import UserError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
)


def looks_local(name_or_path: str) -> bool:
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith(".")
        or os.path.exists(name_or_path)
        or name_or_path.count("/") > 1
    )


def check_model_folder(path: str, what: str = "model") -> None:
    """A local model folder must exist and hold a config and weights; say which part is missing."""
    if not os.path.isdir(path):
        raise UserError(f"{what} folder not found (expected a save_pretrained folder or a hub id)", source=path)
    files = set(os.listdir(path))
    if "adapter_config.json" in files:
        return
    if "config.json" not in files:
        raise UserError(f"{what} folder is incomplete: no config.json", source=path)
    if what == "model" and not files.intersection(WEIGHT_FILES):
        raise UserError(f"{what} folder is incomplete: no weights (model.safetensors)", source=path)
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            json.load(handle)
    except json.JSONDecodeError as err:
        raise UserError(f"config.json is not valid JSON ({err.msg})", source=path) from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    if looks_local(name_or_path):
        check_model_folder(name_or_path, what="tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as err:  # transformers raises many kinds for a broken or missing tokenizer
        raise UserError(f"could not load the tokenizer: {type(err).__name__}: {err}", source=name_or_path) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_dtype(dtype: str) -> torch.dtype | str:
    return "auto" if dtype == "auto" else DTYPES[dtype]


def load_causal_lm(
    name_or_path: str,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` with people-friendly errors (a PEFT folder loads its base + adapter)."""
    from transformers import AutoModelForCausalLM

    if looks_local(name_or_path):
        check_model_folder(name_or_path)
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(dtype),
        "trust_remote_code": trust_remote_code,
        "revision": revision,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if os.path.exists(os.path.join(name_or_path, "adapter_config.json")):
            from peft import AutoPeftModelForCausalLM

            return AutoPeftModelForCausalLM.from_pretrained(
                name_or_path, is_trainable=False, **kwargs
            ).merge_and_unload()
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"could not load the model: {type(err).__name__}: {err}", source=name_or_path) from None


def model_fingerprint_parts(name_or_path: str, model: Any) -> dict[str, Any]:
    """What identifies a model's weights cheaply: file sizes and times of a local folder, else the hub commit."""
    parts: dict[str, Any] = {"name": name_or_path, "dtype": str(next(model.parameters()).dtype)}
    if os.path.isdir(name_or_path):
        parts["files"] = sorted(
            (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
            for entry in os.scandir(name_or_path)
            if entry.is_file() and entry.name.endswith((".safetensors", ".bin", ".json"))
        )
    else:
        parts["commit"] = getattr(model.config, "_commit_hash", None)
    return parts


def wrap_with_lora(model: Any, r: int, alpha: int, dropout: float, target_modules: str) -> Any:
    """A trainable LoRA adapter on ``model`` (peft); the base weights stay frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("--use_peft needs the peft package: pip install 'tisdpo[peft]'") from None
    targets: str | list[str] = (
        target_modules
        if target_modules == "all-linear"
        else [m.strip() for m in target_modules.split(",") if m.strip()]
    )
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)
