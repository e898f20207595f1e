"""Real-world model configurations: bf16 weights under --bf16, soft-capped logits, dropout.

Each model is built from scratch with a transformers config class, saved with save_pretrained and
run through the `tisdpo` command line, like a hub model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import MethodType

import pytest
import torch
from accelerate.utils import convert_outputs_to_fp32
from conftest import (
    NO_TQDM,
    QUIET_FLAGS,
    batch_inputs,
    log_history,
    naive_completion_logps,
    toy_pairs,
    train_argv,
    write_jsonl,
)
from conftest import evaluate as evaluate_cli
from conftest import run_ok as run
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RecurrentGemmaConfig,
    RecurrentGemmaForCausalLM,
)

from tisdpo.data.collate import PreferenceCollator
from tisdpo.logprobs import chunked_head_is_exact, completion_logps, logit_postprocessing_field

COMMON = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", *QUIET_FLAGS, *NO_TQDM]


def evaluate(model: str | Path, data: str, out: Path, *extra: object) -> dict:
    """`tisdpo evaluate` of MODEL against itself."""
    return evaluate_cli(model, model, data, out, *COMMON, *extra)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> tuple[str, str]:
    path = tmp_path_factory.mktemp("real-config-data")
    return str(write_jsonl(path / "train.jsonl", toy_pairs(24, seed=3))), str(
        write_jsonl(path / "eval.jsonl", toy_pairs(16, seed=4))
    )


def save_model(model: torch.nn.Module, tokenizer_dir: str, out: Path) -> str:
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return str(out)


def completion_batch(count: int = 4) -> dict[str, torch.Tensor]:
    features = [
        {
            "index": i,
            "prompt_input_ids": [0, 5 + i, 6, 7],
            "chosen_input_ids": list(range(8 + i, 8 + 2 * i + 3)) + [1],
        }
        for i in range(count)
    ]
    return PreferenceCollator(pad_token_id=2, sides=("chosen",))(features)


# -- bf16 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(torch.bfloat16)
    return save_model(model, tiny_model_dir, tmp_path_factory.mktemp("tiny-llama-bf16"))


def test_bf16_weights_under_mixed_precision_give_the_models_own_log_probs(bf16_model_dir):
    """accelerate's --bf16 wrapper returns fp32 outputs while the head stays bf16 (this crashed)."""
    model = AutoModelForCausalLM.from_pretrained(bf16_model_dir, dtype=torch.bfloat16)
    model.forward = MethodType(
        convert_outputs_to_fp32(torch.autocast("cpu", dtype=torch.bfloat16)(model.forward.__func__)), model
    )
    batch = completion_batch()
    inputs = batch_inputs(batch)
    chunked = completion_logps(model, *inputs, path="chunked", chunk_size=5)
    assert chunked_head_is_exact(model)  # the chunked path ran, not a fallback to the model's logits
    chunked.logps.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.dtype == torch.bfloat16
    with torch.no_grad():
        own = naive_completion_logps(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch
        )
    assert chunked.logps.dtype == torch.float32
    torch.testing.assert_close(chunked.logps.detach(), own, rtol=0, atol=2e-2)


def test_bf16_model_trains_and_evaluates_alike_on_both_paths(bf16_model_dir, small_data, tmp_path, caplog):
    train_file, eval_file = small_data
    results = {}
    for path in ("chunked", "logits"):
        out = tmp_path / path
        with caplog.at_level(logging.INFO, logger="tisdpo.logprobs"):
            # --use_cpu: bf16 autocast on the CPU (what transformers needs to allow it there)
            flags = ["--eval_dataset_name", eval_file, "--dtype", "bfloat16", "--bf16", "true", "--use_cpu", "true"]
            flags += ["--max_steps", "2", "--learning_rate", "1e-3", "--logging_steps", "1", "--logprob_path", path]
            run(*train_argv(bf16_model_dir, train_file, out, *flags, *COMMON))
        results[path] = json.loads((out / "all_results.json").read_text())
    assert "computed from its own logits" not in caplog.text  # the chunked run stayed on the chunked path
    chunked, logits = results["chunked"], results["logits"]
    for key in ("eval_logps/chosen", "eval_logps/rejected"):  # sums over ~10 tokens of bf16 log-probs
        assert chunked[key] == pytest.approx(logits[key], rel=1e-2), key
    assert chunked["eval_loss"] == pytest.approx(logits["eval_loss"], abs=2e-3)
    assert chunked["train_loss"] == pytest.approx(logits["train_loss"], abs=2e-3)


# -- logits post-processed after the LM head --------------------------------------------------------


@pytest.fixture(scope="module")
def soft_capped_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny RecurrentGemma whose logits (up to ~50) are soft-capped at 30, as Gemma-family models are."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = RecurrentGemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        lru_width=32,
        attention_window_size=16,
        conv1d_width=4,
        block_types=["recurrent", "attention"],
        logits_soft_cap=30.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = RecurrentGemmaForCausalLM(config)
    with torch.no_grad():
        model.model.final_norm.weight.fill_(40.0)  # (1 + w) scaling: logits large enough for the cap to bite
    return Path(save_model(model, tiny_model_dir, tmp_path_factory.mktemp("tiny-recurrent-gemma")))


def test_soft_capped_recurrent_gemma_is_scored_with_its_cap(soft_capped_dir, small_data, tmp_path):
    _, eval_file = small_data
    chunked = evaluate(soft_capped_dir, eval_file, tmp_path / "chunked", "--logprob_path", "chunked")
    logits = evaluate(soft_capped_dir, eval_file, tmp_path / "logits", "--logprob_path", "logits")
    for key in ("eval_logps/chosen", "eval_logps/rejected"):
        assert chunked[key] == pytest.approx(logits[key], rel=1e-5), key
    # The cap matters: the same model without it (what the chunked path computed before) scores far off.
    config = json.loads((soft_capped_dir / "config.json").read_text())
    uncapped_dir = tmp_path / "uncapped"
    uncapped_dir.mkdir()
    for item in soft_capped_dir.iterdir():
        (uncapped_dir / item.name).write_bytes(item.read_bytes())
    (uncapped_dir / "config.json").write_text(json.dumps({**config, "logits_soft_cap": 1e9}))
    uncapped = evaluate(uncapped_dir, eval_file, tmp_path / "uncapped_eval", "--logprob_path", "logits")
    assert abs(uncapped["eval_logps/chosen"] - logits["eval_logps/chosen"]) > 5.0


def test_logits_post_processed_where_no_config_says_so_are_caught_by_the_probe(
    tiny_model_dir, small_data, tmp_path, monkeypatch, caplog
):
    """A model whose forward soft-caps its logits with no config field for it (remote code, a patch)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(100.0)  # logits up to ~45, so that a cap at 30 bites
    model_dir = save_model(model, tiny_model_dir, tmp_path / "large-logits")
    cap = 30.0
    plain_forward = LlamaForCausalLM.forward

    def soft_capped_forward(self, *args, **kwargs):
        outputs = plain_forward(self, *args, **kwargs)
        outputs.logits = cap * torch.tanh(outputs.logits / cap)
        return outputs

    monkeypatch.setattr(LlamaForCausalLM, "forward", soft_capped_forward)
    _, eval_file = small_data
    with caplog.at_level(logging.INFO, logger="tisdpo.logprobs"):
        chunked = evaluate(model_dir, eval_file, tmp_path / "chunked", "--logprob_path", "chunked")
    assert "its logits are post-processed after the LM head" in caplog.text
    logits = evaluate(model_dir, eval_file, tmp_path / "logits", "--logprob_path", "logits")
    for key in ("eval_logps/chosen", "eval_logps/rejected"):
        assert chunked[key] == pytest.approx(logits[key], rel=1e-5), key
    # The cap matters: without it (what the chunked path computed before) the log-probs are far off.
    monkeypatch.setattr(LlamaForCausalLM, "forward", plain_forward)
    uncapped = evaluate(model_dir, eval_file, tmp_path / "uncapped", "--logprob_path", "chunked")
    assert abs(uncapped["eval_logps/chosen"] - chunked["eval_logps/chosen"]) > 5.0


def test_config_check_sees_a_soft_cap_nested_in_text_config():
    config = LlamaConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    assert logit_postprocessing_field(config) is None
    config.text_config = LlamaConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    config.text_config.final_logit_softcapping = 30.0
    assert logit_postprocessing_field(config) == "final_logit_softcapping"


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            attention_dropout=0.5,
        )
    )


def count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.get_input_embeddings().register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("wrapper", ["none", "peft"])
def test_probe_runs_once_per_model_and_leaves_its_state_alone(wrapper):
    model = tiny_llama()
    if wrapper == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.5))
    model.train()
    frozen = model.get_output_embeddings() if wrapper == "none" else model.get_base_model().model.norm
    frozen.eval()  # a submodule whose mode differs from its parent's keeps it
    calls = count_forwards(model)
    batch = completion_batch()
    inputs = batch_inputs(batch)
    with torch.no_grad():
        completion_logps(model, *inputs)
    assert calls[0] == 4  # three probe forwards, then the batch's
    assert torch.is_grad_enabled()
    assert model.training and not frozen.training
    assert all(m.training for m in model.modules() if m is not frozen)
    second = completion_logps(model, *inputs)
    assert calls[0] == 5  # the verdict is cached
    assert second.logps.requires_grad
    assert chunked_head_is_exact(model)
    model.eval()  # dropout is random in training mode; compare the two paths without it
    torch.testing.assert_close(
        completion_logps(model, *inputs).logps, completion_logps(model, *inputs, path="logits").logps
    )


# -- dropout ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_with_dropout_dir(tiny_model_dir, tmp_path_factory) -> str:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return save_model(GPT2LMHeadModel(config), tiny_model_dir, tmp_path_factory.mktemp("tiny-gpt2-dropout"))


def rewards_at_learning_rate_zero(model_dir: str, data: str, out: Path, *extra: str) -> list[dict]:
    run(
        *train_argv(
            model_dir, data, out, "--learning_rate", "0", "--max_steps", "2", "--logging_steps", "1", *COMMON, *extra
        )
    )
    return log_history(out, "rewards/chosen")


def test_dropout_is_off_in_the_policy_by_default(gpt2_with_dropout_dir, small_data, tmp_path):
    """With the policy equal to its reference and no update, every reward is 0 unless dropout is on."""
    train_file, _ = small_data
    default = rewards_at_learning_rate_zero(gpt2_with_dropout_dir, train_file, tmp_path / "default")
    assert len(default) == 2
    for entry in default:
        assert abs(entry["rewards/chosen"]) < 1e-6 and abs(entry["rewards/margins"]) < 1e-6, entry
    # The saved model keeps its own dropout settings.
    assert json.loads((tmp_path / "default" / "config.json").read_text())["attn_pdrop"] == 0.1

    kept = rewards_at_learning_rate_zero(
        gpt2_with_dropout_dir, train_file, tmp_path / "kept", "--disable_dropout", "false"
    )
    assert max(abs(entry["rewards/chosen"]) for entry in kept) > 1e-4


def test_functional_dropout_attributes_and_lora_dropout_are_zeroed():
    from peft import LoraConfig, get_peft_model

    from tisdpo.trainer import config_values_restored, disable_dropout

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.5))
    changed, config_changes = disable_dropout(model)
    attention = model.get_base_model().model.layers[0].self_attn
    assert attention.attention_dropout == 0.0  # a float the attention function reads in training mode
    assert model.get_base_model().config.attention_dropout == 0.0
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert changed >= 2
    with config_values_restored(config_changes):
        assert model.get_base_model().config.attention_dropout == 0.5
    assert model.get_base_model().config.attention_dropout == 0.0
