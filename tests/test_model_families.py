"""The model-family matrix: for every causal-LM family of ``model_families.FAMILIES`` (a tiny random model whose
windows are shorter than a pair), ``tisdpo train`` ends with the same parameters in the plain, shared-prompt and
packed layouts, ``tisdpo weights`` writes the same weights with and without a shared prompt, and the family gets the
layout, LoRA and GGUF support that ``docs/models.md`` says. A family whose config class is missing is skipped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers
from conftest import (
    NO_TQDM,
    QUIET_FLAGS,
    prompt_weights_args,
    read_jsonl,
    run_cli,
    run_ok,
    toy_pairs,
    train_argv,
    write_jsonl,
)
from model_families import FAMILIES, PACKED, PLAIN, Family, expected_layouts, families_by_name, support_table
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tisdpo.logprobs import probe_shared_prompt_mismatch, shared_prompt_config_mismatch, shared_prompt_is_exact
from tisdpo.modeling import load_causal_lm

ROOT = Path(__file__).resolve().parents[1]
# A few plain SGD steps: the parameters move by the gradients alone, so a layout that changes a gradient shows.
SGD_FLAGS = ["--optim", "sgd", "--learning_rate", "0.05", "--lr_scheduler_type", "constant", "--max_grad_norm", "0"]
TRAIN_FLAGS = ["--per_device_train_batch_size", "4", "--max_steps", "3", *SGD_FLAGS, *QUIET_FLAGS, *NO_TQDM]
LAYOUTS = {
    "plain": ["--shared_prompt", "false"],
    "shared": ["--shared_prompt", "true"],
    "packed": ["--pack_tokens", "96"],
}
# Layouts that compute the same model agree to float rounding (below 1e-6 of the distance moved); GPT-Neo's local
# window in the shared layout missed by 15%.
SAME_MODEL = 1e-3


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> str:
    """12 toy pairs; each (prompt, chosen and rejected) is far longer than the families' windows."""
    return str(write_jsonl(tmp_path_factory.mktemp("family-pairs") / "pairs.jsonl", toy_pairs(12, seed=5)))


def tiny_family_model(family: Family, tokenizer_dir: str, out: Path) -> str:
    """The family's tiny random model with the tests' tokenizer, saved to OUT (skipped if transformers lacks it)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    special["pad_token_id"] = tokenizer.pad_token_id
    try:
        config = family.config(len(tokenizer), special)
    except LookupError as missing:
        pytest.skip(str(missing))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def layout_and_reason(model_dir: str) -> tuple[str, str]:
    """The layout ``tisdpo`` gives the model as its commands load it, and why it is not the fast one."""
    model = load_causal_lm(model_dir, dtype="float32")
    reason = shared_prompt_config_mismatch(model) or probe_shared_prompt_mismatch(model) or ""
    return (PACKED if shared_prompt_is_exact(model) else PLAIN), reason


def trained_parameters(model_dir: str, data: str, out: Path, *flags: object) -> dict[str, torch.Tensor]:
    run_ok(*train_argv(model_dir, data, out, *TRAIN_FLAGS, *flags))
    return load_file(out / "model.safetensors")


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((a[name].double() - b[name].double()) ** 2).sum() for name in a)))


def assert_layouts_train_alike(model_dir: str, data: str, out: Path, *flags: object) -> None:
    """Plain, shared and packed ``tisdpo train``: the same parameters, relative to how far training moved them."""
    start = load_file(Path(model_dir) / "model.safetensors")
    final = {name: trained_parameters(model_dir, data, out / name, *flags, *extra) for name, extra in LAYOUTS.items()}
    moved = distance(final["plain"], start)
    assert moved > 0
    for name in ("shared", "packed"):
        off = distance(final[name], final["plain"]) / moved
        assert off < SAME_MODEL, f"the {name} layout trained another model: {off:.3g} of the distance training moved"


def assert_same_weights(first: str, second: str) -> None:
    rows, other_rows = read_jsonl(first), read_jsonl(second)
    assert len(rows) == len(other_rows)
    for row, other in zip(rows, other_rows):
        for side in ("chosen_weights", "rejected_weights"):
            torch.testing.assert_close(torch.tensor(row[side]), torch.tensor(other[side]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [family.name for family in FAMILIES])
def test_every_layout_gives_the_same_weights_and_trains_the_same_model(name, tiny_model_dir, pairs_file, tmp_path):
    family = families_by_name()[name]
    model_dir = tiny_family_model(family, tiny_model_dir, tmp_path / "model")
    weights = {}
    for shared in ("false", "true"):
        weights[shared] = str(tmp_path / f"weights-{shared}.jsonl")
        run_ok(*prompt_weights_args(model_dir, pairs_file, weights[shared], "--shared_prompt", shared))
    assert_same_weights(weights["false"], weights["true"])
    assert_layouts_train_alike(model_dir, weights["true"], tmp_path / "train", "--loss_type", "tisdpo")
    layout, reason = layout_and_reason(model_dir)
    assert layout == family.layout, reason
    assert (family.reason in reason) if family.layout == PLAIN else not reason, reason


def test_gpt_neo_with_a_window_shorter_than_a_pair_trains_alike_with_dpo(tiny_model_dir, pairs_file, tmp_path):
    model_dir = tiny_family_model(families_by_name()["gpt_neo"], tiny_model_dir, tmp_path / "model")
    assert_layouts_train_alike(model_dir, pairs_file, tmp_path / "train", "--loss_type", "dpo")


@pytest.mark.parametrize("name", [family.name for family in FAMILIES])
def test_lora_on_all_linear_modules_trains(name, tiny_model_dir, pairs_file, tmp_path):
    family = families_by_name()[name]
    model_dir = tiny_family_model(family, tiny_model_dir, tmp_path / "model")
    out = tmp_path / "lora"
    lora = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "all-linear"]
    argv = train_argv(model_dir, pairs_file, out, *lora, "--loss_type", "dpo", *TRAIN_FLAGS, "--max_steps", "1")
    if not family.lora_trains:
        assert run_cli(*argv) == 1  # refused with a one-line error, before any training
        return
    run_ok(*argv)
    adapter = load_file(out / "adapter_model.safetensors")
    moved = [key for key, value in adapter.items() if "lora_B" in key and bool(value.abs().sum() > 0)]
    assert bool(moved) == family.lora_trains, f"{len(moved)} of {len(adapter)} adapter tensors moved"


def gguf_architecture(model_type: str) -> str:
    """The name transformers' GGUF loader gives a model type (a text-only config drops ``_text``)."""
    return model_type.removesuffix("_text")


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the gguf package")
@pytest.mark.parametrize("name", [family.name for family in FAMILIES])
def test_gguf_support_is_as_the_table_says(name):
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    family = families_by_name()[name]
    config_class = getattr(transformers, family.config_class, None)
    if config_class is None:
        pytest.skip(f"transformers {transformers.__version__} has no {family.config_class}")
    assert (gguf_architecture(config_class.model_type) in GGUF_SUPPORTED_ARCHITECTURES) == family.gguf


def test_the_docs_support_table_is_the_matrix():
    docs = (ROOT / "docs" / "models.md").read_text()
    assert support_table() in docs, "docs/models.md is stale: python scripts/model_support_table.py --write"
    assert set(expected_layouts().values()) <= {PACKED, PLAIN}
