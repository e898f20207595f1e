"""The shared-prompt layout (each prompt once, before its completions) gives the same log-probs and gradients as
one row per completion, on RoPE and learned-position models, sdpa and eager, packed or not; models that cannot
honour it fall back, said once in the log."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from tisdpo import logprobs
from tisdpo.data.collate import PreferenceCollator, pack_rows, shared_prompt_layout
from tisdpo.logprobs import (
    batch_logps,
    shared_attention_mask,
    shared_positions,
    shared_prompt_config_mismatch,
    shared_prompt_is_exact,
    unshared,
)
from tisdpo.scoring import score_groups, score_sequences

VOCAB = 64
FEATURES = [
    {
        "index": 7,
        "prompt_input_ids": [3, 5, 6, 7],
        "chosen_input_ids": [8, 9, 1],
        "rejected_input_ids": [10, 1],
        "chosen_weights": [0.5, 1.0, 2.0],
        "rejected_weights": [1.5, 1.0],
        "dlma_score": 0.25,
    },
    {
        "index": 3,
        "prompt_input_ids": [4, 11],
        "chosen_input_ids": [12, 13, 14, 15, 1],
        "rejected_input_ids": [16, 17, 1],
        "chosen_weights": [1.0] * 5,
        "rejected_weights": [2.0] * 3,
        "dlma_score": -1.0,
    },
    {
        "index": 5,
        "prompt_input_ids": [20, 21, 22, 23, 24, 25, 26],
        "chosen_input_ids": [27],
        "rejected_input_ids": [28, 29, 30, 31],
        "chosen_weights": [1.0],
        "rejected_weights": [0.1, 0.2, 0.3, 0.4],
        "dlma_score": 0.0,
    },
]


def tiny_model(kind: str, attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128)
        model = GPT2LMHeadModel(config)
    model.config._attn_implementation = attention
    return model.eval()


def grads_of(model: torch.nn.Module, batch: dict, path: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    out = batch_logps(model, batch, path=path, chunk_size=3)
    scale = torch.arange(1, out.logps.numel() + 1, dtype=torch.float32).view_as(out.logps)
    (out.logps * scale).sum().backward()
    return out.logps.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# -- the layout ---------------------------------------------------------------------------------
def test_layout_of_one_pair_a_row():
    batch = PreferenceCollator(pad_token_id=0, shared_prompt=True)(FEATURES[:2])
    assert batch["input_ids"].tolist() == [
        [3, 5, 6, 7, 8, 9, 1, 10, 1, 0],
        [4, 11, 12, 13, 14, 15, 1, 16, 17, 1],
    ]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 4, 5, 0],
        [0, 1, 2, 3, 4, 5, 6, 2, 3, 4],
    ]
    assert batch["side_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 0]
    assert batch["group_ids"].tolist() == [[0] * 9 + [-1], [1] * 10]
    # rows of completion_mask: chosen of pair 0, 1, then rejected of pair 0, 1 (as the unshared layout)
    assert batch["completion_mask"].sum(-1).tolist() == [3, 5, 2, 3]
    assert batch["completion_offset"].tolist() == [4, 10 + 2, 7, 10 + 7]
    assert batch["prompt_offset"].tolist() == [0, 10, 0, 10]
    predictors, tokens = shared_positions(batch)
    flat = batch["input_ids"].flatten()
    # rejected of pair 0 ([10, 1]): its first token is predicted by the last prompt token (7, at flat 3)
    assert predictors[8:10].tolist() == [3, 7]
    assert flat[tokens].tolist() == [8, 9, 1, 12, 13, 14, 15, 1, 10, 1, 16, 17, 1]
    assert batch["pair_index"].tolist() == [7, 3]
    assert "attention_mask" not in batch and "completion_start" not in batch


def test_the_mask_hides_the_other_completion_and_other_groups():
    batch = PreferenceCollator(pad_token_id=0, pack_tokens=32)(FEATURES[:2])
    assert batch["input_ids"].shape[0] == 1
    mask = shared_attention_mask(batch["group_ids"], batch["side_ids"], None)[0, 0]
    groups, sides = batch["group_ids"][0], batch["side_ids"][0]
    for q in range(mask.shape[0]):
        for k in range(mask.shape[1]):
            same = groups[q] == groups[k]
            expected = k <= q and bool(same) and (sides[k] == 0 or sides[k] == sides[q])
            assert bool(mask[q, k]) == expected, (q, k)
        assert mask[q, q]  # every query sees itself: no empty softmax row
    additive = shared_attention_mask(batch["group_ids"], batch["side_ids"], torch.float32)[0, 0]
    assert torch.equal(additive == 0, mask)


def test_per_token_columns_and_scores_are_as_in_the_unshared_layout():
    plain = PreferenceCollator(pad_token_id=0)(FEATURES)
    for options in ({"shared_prompt": True}, {"pack_tokens": 16}, {"pack_tokens": 16, "pad_to_multiple_of": 8}):
        shared = PreferenceCollator(pad_token_id=0, **options)(FEATURES)
        for key in ("completion_mask", "weights", "pair_index", "dlma_score"):
            assert torch.equal(shared[key], plain[key]), (options, key)
        rewritten = unshared(shared)
        valid = plain["attention_mask"].bool()
        assert torch.equal(rewritten["attention_mask"].bool(), valid)
        assert torch.equal(rewritten["input_ids"][valid], plain["input_ids"][valid])
        assert torch.equal(rewritten["completion_start"], plain["completion_start"])
        assert torch.equal(rewritten["weights"], plain["weights"])


def test_packing_is_first_fit_decreasing_within_the_budget():
    assert pack_rows([5, 9, 3, 4], None) == [[0], [1], [2], [3]]
    assert pack_rows([5, 9, 3, 4], 10) == [[1], [0, 3], [2]]
    assert pack_rows([12, 3], 10) == [[0], [1]]  # a group longer than the budget gets its own row
    batch = PreferenceCollator(pad_token_id=0, pack_tokens=20)(FEATURES)
    assert batch["input_ids"].shape == (2, 19)  # rows [pair 2 (12 tokens)] and [pair 1 (10), pair 0 (9)]
    assert batch["group_ids"][:, 0].tolist() == [2, 1] and batch["group_ids"][1, 10].tolist() == 0
    assert int(((batch["position_ids"] == 0) & (batch["group_ids"] >= 0)).sum()) == 3


def test_sft_batches_share_nothing_but_still_work():
    batch = PreferenceCollator(pad_token_id=0, sides=("chosen",), pack_tokens=64)(FEATURES)
    assert batch["input_ids"].shape[0] == 1
    assert batch["completion_mask"].sum(-1).tolist() == [3, 5, 1]


def test_an_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="non-empty prompt"):
        shared_prompt_layout([([], [[1, 2]])], pad_token_id=0)


# -- exactness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("path", ["chunked", "logits"])
@pytest.mark.parametrize("pack_tokens", [None, 20])
def test_log_probs_and_gradients_equal_the_unshared_layout(kind, attention, path, pack_tokens):
    model = tiny_model(kind, attention)
    assert shared_prompt_is_exact(model)
    plain = PreferenceCollator(pad_token_id=0)(FEATURES)
    shared = PreferenceCollator(pad_token_id=0, shared_prompt=True, pack_tokens=pack_tokens)(FEATURES)
    expected, expected_grads = grads_of(model, plain, path)
    logps, grads = grads_of(model, shared, path)
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)
    assert torch.all(logps[~plain["completion_mask"]] == 0)
    assert expected_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_logits_and_hidden_states_come_in_mask_order(kind):
    model = tiny_model(kind, "sdpa")
    plain = PreferenceCollator(pad_token_id=0)(FEATURES)
    shared = PreferenceCollator(pad_token_id=0, pack_tokens=20)(FEATURES)
    with torch.no_grad():
        expected = batch_logps(model, plain, path="logits", return_logits=True, return_hidden=True)
        out = batch_logps(model, shared, path="logits", return_logits=True, return_hidden=True)
        chunked = batch_logps(model, shared, path="chunked", return_hidden=True)
    count = int(plain["completion_mask"].sum())
    assert out.logits.shape == (count, VOCAB) and out.hidden.shape == (count, 32)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.hidden, expected.hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked.hidden, expected.hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mean_logits, expected.mean_logits, rtol=1e-5, atol=1e-5)


# -- fallbacks ---------------------------------------------------------------------------------
class IgnoresTheMask(LlamaForCausalLM):
    """Takes position ids, but drops a 4D mask (plain causal attention): the rejected side would see the chosen."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


def test_a_model_that_ignores_the_mask_is_caught_by_the_probe_and_unshared(caplog):
    reference = tiny_model("llama", "sdpa")
    model = IgnoresTheMask(reference.config).eval()
    model.load_state_dict(reference.state_dict())
    with caplog.at_level(logging.INFO, logger="tisdpo"):
        assert not shared_prompt_is_exact(model)
        assert not shared_prompt_is_exact(model)
    lines = [r.getMessage() for r in caplog.records if "shared prompt differ" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    plain = PreferenceCollator(pad_token_id=0)(FEATURES)
    shared = PreferenceCollator(pad_token_id=0, shared_prompt=True)(FEATURES)
    expected, expected_grads = grads_of(model, plain, "chunked")
    logps, grads = grads_of(model, shared, "chunked")
    torch.testing.assert_close(logps, expected, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-6)


def test_config_reasons_to_not_share():
    model = tiny_model("llama", "sdpa")
    assert shared_prompt_config_mismatch(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in shared_prompt_config_mismatch(model)
    model.config._attn_implementation = "sdpa"
    model.config.sliding_window = 4
    assert "sliding_window=4" in shared_prompt_config_mismatch(model)


def test_windows_and_recurrent_layers_of_any_spelling_are_refused_from_the_config():
    """Window-like fields, layer-kind lists and recurrent fields, as the families that use them spell them."""
    refusals = {
        "window_size": (8, "window_size=8"),  # GPT-Neo's local layers
        "attention_window_size": (16, "attention_window_size=16"),  # RecurrentGemma
        "attention_chunk_size": (8192, "attention_chunk_size=8192"),  # Llama 4
        "local_attention": (128, "local_attention=128"),  # ModernBERT decoder
        "use_sliding_window": (True, "use_sliding_window=True"),
        "attention_types": ([[["global", "local"], 1]], "not all full attention (local)"),  # GPT-Neo
        "layers_block_type": (["hybrid", "attention"], "not all full attention (hybrid)"),  # Zamba
        "block_types": (["recurrent", "attention"], "not all full attention (recurrent)"),
        "mamba_d_state": (16, "mamba_d_state=16 (a recurrent"),  # Jamba, Falcon-H1
        "conv_L_cache": (3, "conv_L_cache=3 (a recurrent"),  # LFM2
        "alibi": (True, "alibi=True (a position bias by column distance)"),  # Falcon-RW
    }
    for field, (value, reason) in refusals.items():
        model = tiny_model("llama", "sdpa")
        setattr(model.config, field, value)
        assert reason in (shared_prompt_config_mismatch(model) or ""), field


def test_settings_that_are_not_windows_keep_the_shared_layout():
    model = tiny_model("llama", "sdpa")
    model.config.use_sliding_window = False  # Qwen2/Qwen3: the window size below is not used
    model.config.sliding_window = 4096
    model.config.max_window_layers = 28
    model.config.num_local_experts = 8
    model.config.layer_types = ["full_attention", "full_attention"]
    assert shared_prompt_config_mismatch(model) is None


def test_a_model_type_not_known_to_be_exact_keeps_the_plain_layout():
    model = tiny_model("llama", "sdpa")
    model.config.model_type = "llama_with_something_new"
    assert "model type 'llama_with_something_new' is not one" in shared_prompt_config_mismatch(model)
    assert not shared_prompt_is_exact(model)


def test_a_model_refused_by_the_config_check_scores_shared_batches_unshared(caplog):
    model = tiny_model("llama", "eager")
    model.config.sliding_window = 4  # a flag Llama ignores: only the check reads it
    shared = PreferenceCollator(pad_token_id=0, pack_tokens=20)(FEATURES)
    plain = PreferenceCollator(pad_token_id=0)(FEATURES)
    with caplog.at_level(logging.INFO, logger="tisdpo"), torch.no_grad():
        out = batch_logps(model, shared, path="logits", return_logits=True)
        expected = batch_logps(model, plain, path="logits", return_logits=True)
    assert "sliding_window=4 (windowed, chunked or local attention); each prompt is computed once" in caplog.text
    assert torch.equal(out.logps, expected.logps) and torch.equal(out.logits, expected.logits)


def test_the_verdict_is_cached_per_model(monkeypatch):
    model = tiny_model("llama", "sdpa")
    calls = []
    real_probe = logprobs.probe_shared_prompt_mismatch
    monkeypatch.setattr(logprobs, "probe_shared_prompt_mismatch", lambda m: calls.append(m) or real_probe(m))
    assert shared_prompt_is_exact(model) and shared_prompt_is_exact(model)
    assert len(calls) == 1


# -- scoring -----------------------------------------------------------------------------------
def test_score_groups_equals_scoring_each_sequence():
    model = tiny_model("llama", "sdpa")
    groups = [(f["prompt_input_ids"], [f["chosen_input_ids"], f["rejected_input_ids"]]) for f in FEATURES]
    groups.append(([30, 31], [[32, 33, 34]]))  # K = 1 beside K = 2
    groups.append(([40, 41, 42], [[43], [44, 45], [46, 47, 48]]))  # K = 3
    sequences = [(prompt, completion) for prompt, completions in groups for completion in completions]
    expected = score_sequences(model, sequences, pad_token_id=0, batch_size=3, progress=False)
    for batch_size, max_tokens in ((2, None), (16, None), (16, 24)):
        scored = score_groups(model, groups, 0, batch_size=batch_size, max_tokens=max_tokens, progress=False)
        assert [len(c) for c in scored] == [len(c) for _, c in groups]
        flat = [values for completions in scored for values in completions]
        assert [len(v) for v in flat] == [len(c) for _, c in sequences]
        torch.testing.assert_close(
            torch.tensor([x for v in flat for x in v]),
            torch.tensor([x for v in expected for x in v]),
            atol=1e-5,
            rtol=0,
        )


# -- the real model ----------------------------------------------------------------------------
def test_the_real_model_with_real_hh_pairs(real_model_dir):
    from conftest import HH_TEST_FILE

    from tisdpo.data.hh import read_hh_conversations
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.demo.real import rows_that_fit
    from tisdpo.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(real_model_dir)
    rows = rows_that_fit(read_hh_conversations(str(HH_TEST_FILE)).rows, tokenizer, 3, 96, 64)
    pair_tokenizer = PairTokenizer(tokenizer, max_length=None, max_prompt_length=None)
    features = []
    for index, row in enumerate(rows):
        pair = pair_tokenizer.tokenize(row)
        features.append(
            {
                "index": index,
                "prompt_input_ids": pair.prompt_ids,
                "chosen_input_ids": pair.chosen_ids,
                "rejected_input_ids": pair.rejected_ids,
            }
        )
    model = load_causal_lm(real_model_dir, dtype="float32").eval()
    assert shared_prompt_is_exact(model)
    plain = PreferenceCollator(tokenizer.pad_token_id)(features)
    shared = PreferenceCollator(tokenizer.pad_token_id, pack_tokens=256)(features)
    expected, expected_grads = grads_of(model, plain, "chunked")
    logps, grads = grads_of(model, shared, "chunked")
    assert float((logps - expected).abs().max()) < 1e-4
    for name, grad in grads.items():  # summed in another order over ~28M entries: compare as vectors
        error = float((grad - expected_grads[name]).norm() / expected_grads[name].norm().clamp_min(1e-12))
        assert error < 1e-4, name
