"""Load models and tokenizers (hub id, local folder or GGUF file), with dtype, attention and PEFT options.

A GGUF model is named by the path of its ``.gguf`` file (``folder/model.Q4_1.gguf``, or a hub repo id
followed by the file name): transformers dequantizes it to a plain model and builds the tokenizer and
chat template from the file's metadata (the ``gguf`` package must be installed). What we save from
such a model is an ordinary safetensors folder that reloads without ``gguf``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from tisdpo.errors import UserError
from tisdpo.gguf_names import is_gguf, split_gguf

if TYPE_CHECKING:
    from tisdpo.config import ModelArguments

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
)


_announced = False


def distributed_state() -> Any:
    """accelerate's ``PartialState``, on the CPU when ``ACCELERATE_USE_CPU`` is set (as the Trainer does).

    ``PartialState()`` alone never forms a CPU (gloo) process group: under ``accelerate launch
    --multi_gpu --num_processes N`` on a machine without GPUs and with ``ACCELERATE_USE_CPU=1``, every
    process would think it is alone and do all the work. Commands that run no Trainer (weights,
    generation) must ask for the state through here. The first call in a process fixes the state.
    """
    global _announced
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if not _announced:
        _announced = True
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if state.num_processes > 1:
            logger.info("process %d of %d (%s)", state.process_index, state.num_processes, state.distributed_type)
        elif launched > 1:
            logger.warning(
                "launched as %d processes but this one runs alone: on a machine without GPUs set ACCELERATE_USE_CPU=1",
                launched,
            )
    return state


def check_gguf(path: str) -> None:
    """A GGUF model needs the gguf package, and a local file must exist and start like a GGUF file."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UserError("loading a GGUF file needs the gguf package: pip install gguf", source=path)
    if not looks_local(path):
        return  # a file in a hub repo: from_pretrained fetches it
    if not os.path.isfile(path):
        raise UserError("GGUF file not found", source=path)
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UserError("not a GGUF file (it does not start with the GGUF magic bytes)", source=path)


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
    if what == "tokenizer":
        if not files.intersection({"tokenizer_config.json", "tokenizer.json"}):
            raise UserError("tokenizer folder is incomplete: no tokenizer.json or tokenizer_config.json", source=path)
        if "config.json" not in files:
            return  # a tokenizer-only folder
    elif "config.json" not in files:
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

    folder, gguf_file = split_gguf(name_or_path)
    if gguf_file:
        check_gguf(name_or_path)
    elif looks_local(name_or_path):
        check_model_folder(name_or_path, what="tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, trust_remote_code=trust_remote_code, revision=revision, gguf_file=gguf_file
        )
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
    """``AutoModelForCausalLM.from_pretrained`` with people-friendly errors (a PEFT folder loads its base +
    adapter; a ``.gguf`` path loads dequantized, as a plain model)."""
    from transformers import AutoModelForCausalLM

    folder, gguf_file = split_gguf(name_or_path)
    if gguf_file:
        check_gguf(name_or_path)
    elif looks_local(name_or_path):
        check_model_folder(name_or_path)
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(dtype),
        "trust_remote_code": trust_remote_code,
        "revision": revision,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        is_adapter = os.path.exists(os.path.join(name_or_path, "adapter_config.json"))
        base = adapter_base(name_or_path) if is_adapter else None
        if base is not None and is_gguf(base):
            from peft import PeftModel

            base_model = load_causal_lm(base, dtype, attn_implementation, trust_remote_code, revision)
            return PeftModel.from_pretrained(base_model, name_or_path, is_trainable=False).merge_and_unload()
        if is_adapter:
            from peft import AutoPeftModelForCausalLM

            return AutoPeftModelForCausalLM.from_pretrained(
                name_or_path, is_trainable=False, **kwargs
            ).merge_and_unload()
        if gguf_file:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, **kwargs)
            return without_quantization(model, name_or_path)
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"could not load the model: {type(err).__name__}: {err}", source=name_or_path) from None


def without_quantization(model: Any, gguf_path: str) -> Any:
    """A GGUF model comes dequantized but still labelled with its quantization config, which makes
    ``save_pretrained`` refuse it; its weights are plain tensors, so the label is dropped. The model is
    named by its GGUF path, which a LoRA adapter trained on it records as its base."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # transformers' own way back to a plain model
    for module in model.modules():  # what the quantizer marked: the Trainer refuses to fine-tune it
        if getattr(getattr(module, "config", None), "_is_quantized", False):
            module.config._is_quantized = False
    model.config._name_or_path = gguf_path
    model.name_or_path = gguf_path
    return model


def model_fingerprint_parts(name_or_path: str, model: Any) -> dict[str, Any]:
    """What identifies a model's weights cheaply: file sizes and times of a local folder, else the hub commit.

    A LoRA adapter folder also names its base model's files: the adapter alone does not fix the weights.
    """
    parts: dict[str, Any] = {"name": name_or_path, "dtype": str(next(model.parameters()).dtype)}
    if os.path.isfile(name_or_path):  # a GGUF file
        stat = os.stat(name_or_path)
        parts["files"] = [(os.path.basename(name_or_path), stat.st_size, stat.st_mtime_ns)]
    elif os.path.isdir(name_or_path):
        parts["files"] = folder_files(name_or_path)
        base = adapter_base(name_or_path)
        if base is not None:
            parts["base"] = {"name": base, "files": folder_files(base)} if os.path.isdir(base) else {"name": base}
    else:
        parts["commit"] = getattr(model.config, "_commit_hash", None)
    return parts


def folder_files(path: str) -> list[tuple[str, int, int]]:
    return sorted(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in os.scandir(path)
        if entry.is_file() and entry.name.endswith((".safetensors", ".bin", ".json"))
    )


def adapter_base(path: str) -> str | None:
    """The base model a local PEFT adapter folder was trained on (None for a full model or a hub id)."""
    config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as handle:
        return json.load(handle).get("base_model_name_or_path")


def weights_materialized(model: Any) -> bool:
    """False when this process does not hold the model's full weights: FSDP's CPU-RAM-efficient loading
    (weights on rank 0 only, the meta device elsewhere until the Trainer broadcasts them) or ZeRO-3's
    partitioned parameters. Such a model cannot run a forward pass before the Trainer prepares it."""
    return not any(p.device.type == "meta" or hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def unsharded_loading() -> Iterator[None]:
    """Models loaded in this block hold their full weights on every process, even under FSDP's
    CPU-RAM-efficient loading or ZeRO-3 ``zero.Init``: for scoring done before the Trainer starts
    (precomputed reference log-probs). The setting of each is restored afterwards."""
    from transformers.integrations import deepspeed as hf_deepspeed

    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    saved_env = os.environ.get(key)
    saved_ds = hf_deepspeed._hf_deepspeed_config_weak_ref
    saved_ds = saved_ds() if saved_ds is not None else None
    os.environ[key] = "false"
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved_env
        if saved_ds is not None:
            hf_deepspeed.set_hf_deepspeed_config(saved_ds)


class AdapterView(torch.nn.Module):
    """One named adapter of a PeftModel that holds several: a causal LM for scoring.

    Each forward first activates its adapter, so two views share one copy of the base weights and
    can be used one after the other (``tisdpo.scoring.score_sequences``, ``completion_logps``). The
    shared model is ``.module``, which ``tisdpo.logprobs.unwrap`` follows to the base model's head.
    """

    def __init__(self, peft_model: Any, adapter_name: str) -> None:
        super().__init__()
        self.module = peft_model
        self.adapter_name = adapter_name

    @property
    def config(self) -> Any:
        return self.module.get_base_model().config

    def get_output_embeddings(self) -> Any:
        return self.module.get_base_model().get_output_embeddings()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.module.active_adapter != self.adapter_name:
            self.module.set_adapter(self.adapter_name, inference_mode=True)
        return self.module(*args, **kwargs)


def same_base(first: str, second: str) -> bool:
    if os.path.isdir(first) and os.path.isdir(second):
        return os.path.realpath(first) == os.path.realpath(second)
    return first == second


def adapter_revision(path: str) -> str | None:
    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as handle:
        return json.load(handle).get("revision")


def load_contrastive_pair(
    positive: str,
    negative: str,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[Any, Any]:
    """The two models of a contrastive pair (methods S and D), as (positive, negative).

    When both are local PEFT adapter folders trained on the same base model, the base is loaded
    once with both adapters (named ``positive`` and ``negative``) and each side is an
    :class:`AdapterView` of it: one copy of the base weights in memory, both scored in one process.
    Otherwise each is loaded on its own with :func:`load_causal_lm` (an adapter is merged into its base).
    """
    bases = adapter_base(positive), adapter_base(negative)
    if (
        bases[0] is None
        or bases[1] is None
        or not same_base(bases[0], bases[1])
        or adapter_revision(positive) != adapter_revision(negative)
    ):
        options = (dtype, attn_implementation, trust_remote_code, revision)
        return load_causal_lm(positive, *options), load_causal_lm(negative, *options)
    base_revision = adapter_revision(positive) or revision
    base = load_causal_lm(bases[0], dtype, attn_implementation, trust_remote_code, base_revision)
    try:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, positive, adapter_name="positive", is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"could not load the adapter: {type(err).__name__}: {err}", source=positive) from None
    try:
        model.load_adapter(negative, adapter_name="negative", is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"could not load the adapter: {type(err).__name__}: {err}", source=negative) from None
    model.eval()
    logger.info("one base model %s with the adapters %s (positive) and %s (negative)", bases[0], positive, negative)
    return AdapterView(model, "positive"), AdapterView(model, "negative")


# -- from the command-line options (ModelArguments) ---------------------------------------------
def load_tokenizer_for(model_args: ModelArguments) -> Any:
    """The tokenizer of ``--tokenizer_name_or_path``, else of ``--model_name_or_path``."""
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    return load_tokenizer(name, trust_remote_code=model_args.trust_remote_code, revision=model_args.revision)


def load_model(model_args: ModelArguments, name: str) -> Any:
    """The model ``name`` with the dtype, attention and remote-code options of ``model_args``."""
    return load_causal_lm(
        name,
        model_args.dtype,
        model_args.attn_implementation,
        model_args.trust_remote_code,
        model_args.revision,
    )


def load_model_pair(model_args: ModelArguments, positive: str, negative: str) -> tuple[Any, Any]:
    """The contrastive pair of ``tisdpo weights`` (S, D): two LoRA adapters on one base share it."""
    return load_contrastive_pair(
        positive,
        negative,
        model_args.dtype,
        model_args.attn_implementation,
        model_args.trust_remote_code,
        model_args.revision,
    )
