"""DLMA: the self-rewarding score against an independent computation, and the margin loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cli_args, prompt_weights_args, read_jsonl, run_cli, toy_pairs, train_argv, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from tisdpo.commands import dlma
from tisdpo.losses import dlma_loss
from tisdpo.weights.prompts import PRESETS


def sequence_logp(model, tokenizer, context: str, response: str) -> float:
    context_ids = [tokenizer.bos_token_id] + tokenizer(context, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([context_ids + response_ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(context_ids) + j - 1, t]) for j, t in enumerate(response_ids))


def test_dlma_generate_scores_match_independent_computation(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in toy_pairs(6, seed=4)])

    def generate(out: Path) -> None:
        flags = ["--output_file", out, "--max_new_tokens", "8", "--seed", "3"]
        dlma.run(cli_args("generate", "--model_name_or_path", tiny_model_dir, "--dataset_name", prompts, *flags))

    out = tmp_path / "dlma.jsonl"
    generate(out)
    rows = read_jsonl(out)
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    # Seed 3 gives no empty sample for these 6 prompts (one would need EOS as its first token), and
    # every prompt leaves room under max_length: all 6 prompts make a pair.
    assert len(rows) == 6 and meta["skipped_empty"] == 0 and meta["skipped_no_room"] == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    positive, negative = PRESETS["dlma_harmless"], PRESETS["dlma_harmful"]
    for row in rows:
        a1, a2, q = row["chosen"], row["rejected"], row["prompt"]
        expected = (
            sequence_logp(model, tokenizer, positive.replace("{prompt}", q), a1)
            - sequence_logp(model, tokenizer, negative.replace("{prompt}", q), a1)
        ) - (
            sequence_logp(model, tokenizer, positive.replace("{prompt}", q), a2)
            - sequence_logp(model, tokenizer, negative.replace("{prompt}", q), a2)
        )
        assert row["dlma_score"] == pytest.approx(expected, abs=1e-3)
    assert meta["method"] == "dlma" and meta["positive_prompt"]["name"] == "dlma_harmless"
    # a second run with the same seed gives the same pairs
    again = tmp_path / "again.jsonl"
    generate(again)
    assert again.read_text() == out.read_text()


def test_dlma_margin_loss_hand_computed():
    u_c, u_r = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.2])
    scores = torch.tensor([2.0, -100.0])
    out = dlma_loss(u_c, u_r, scores, beta=0.1, gamma=0.2, clamp=40.0).losses
    expected = [math.log1p(math.exp(-0.1 * (0.5 - 0.2 * 2.0))), math.log1p(math.exp(-0.1 * (-0.2 - 0.2 * -40.0)))]
    assert out.tolist() == pytest.approx(expected, rel=1e-6)


def test_dlma_pairs_train_with_the_margin_and_feed_weights(tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in toy_pairs(16, seed=5)])
    pairs = tmp_path / "dlma.jsonl"
    generate = ["dlma", "generate", "--model_name_or_path", tiny_model_dir, "--dataset_name", prompts]
    assert run_cli(*generate, "--output_file", pairs, "--max_new_tokens", "6") == 0
    common = ["--per_device_train_batch_size", "4", "--save_strategy", "no", "--max_steps", "2", "--max_length", "64"]

    def train(data: Path, loss_type: str, out: Path) -> int:
        return run_cli(*train_argv(tiny_model_dir, data, out, "--loss_type", loss_type, *common))

    assert train(pairs, "dlma", tmp_path / "t") == 0
    # "labels and weights without humans": the same file scores token weights and trains TIS-DPO
    weights = tmp_path / "w.jsonl"
    argv = prompt_weights_args(tiny_model_dir, pairs, weights, positive="dlma_harmless", negative="dlma_harmful")
    assert run_cli(*argv) == 0
    assert train(weights, "tisdpo", tmp_path / "tis") == 0
    plain = write_jsonl(tmp_path / "plain.jsonl", toy_pairs(4))
    assert train(plain, "dlma", tmp_path / "x") == 1
    assert "needs a 'dlma_score' for every pair" in capsys.readouterr().err


def chat_logp(model, tokenizer, system: str, prompt: list[dict], response: list[dict]) -> float:
    """Independently: the chat template's completion tokens (what it adds after the generation prompt,
    rendered without the contrastive system message, as training does) under a system message."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    completion = tokenizer.apply_chat_template(prompt + response, tokenize=False)[len(prompt_text) :]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    context = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}] + prompt, tokenize=False, add_generation_prompt=True
    )
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([context_ids + completion_ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[len(context_ids) + j - 1, t]) for j, t in enumerate(completion_ids))


def test_dlma_on_conversations_writes_conversational_pairs_that_train(tiny_model_dir, tmp_path):
    from tisdpo.cli import main

    questions = ["hello how are you", "what is the item", "tell me about the thing", "why is it kind"]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": q}]} for q in questions])
    pairs = tmp_path / "dlma.jsonl"
    generate = ["dlma", "generate", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(prompts)]
    flags = ["--output_file", str(pairs), "--max_new_tokens", "6", "--seed", "1"]
    assert main([*generate, *flags, "--positive_prompt", "harmless", "--negative_prompt", "harmful"]) == 0
    rows = read_jsonl(pairs)
    assert [row["prompt"] for row in rows] == [[{"role": "user", "content": q}] for q in questions]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for row in rows:
        for side in ("chosen", "rejected"):  # conversational in, conversational out
            assert [message["role"] for message in row[side]] == ["assistant"] and row[side][0]["content"].strip()
        logp = {
            (preset, side): chat_logp(model, tokenizer, PRESETS[preset], row["prompt"], row[side])
            for preset in ("harmless", "harmful")
            for side in ("chosen", "rejected")
        }
        expected = (logp["harmless", "chosen"] - logp["harmful", "chosen"]) - (
            logp["harmless", "rejected"] - logp["harmful", "rejected"]
        )
        assert row["dlma_score"] == pytest.approx(expected, abs=1e-3)
    common = ["--per_device_train_batch_size", "2", "--save_strategy", "no", "--max_steps", "1", "--max_length", "64"]
    train = ["train", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(pairs), "--loss_type", "dlma"]
    assert main([*train, "--output_dir", str(tmp_path / "t"), *common]) == 0
    # a {prompt} template cannot wrap a conversation: the DLMA presets are refused with a hint
    with pytest.raises(Exception, match="is a {prompt} template, which only applies to plain-text data"):
        main(["--debug", *generate, *flags])
