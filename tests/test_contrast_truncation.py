"""Prompts longer than --max_prompt_length under a contrastive prompt (TIS-DPO(P), DLMA): only the
user's prompt is cut, as training cuts it; the contrastive text and the system message stay whole."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import prompt_weights_args, read_jsonl, toy_pairs, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

import tisdpo.weights.estimate as estimate
from tisdpo.cli import main
from tisdpo.data.formats import RawRecords
from tisdpo.data.prepare import prepare_pairs
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.weights.prompts import PRESETS

LIMIT = 24  # --max_prompt_length: the preset alone is longer (71 tokens), a long prompt too (45)
LONG_PROMPT = "\n\nHuman: " + " ".join(f"tell me about the item and the thing {i}" for i in range(4)) + "\n\nAssistant:"


def p_weights(model: str, data: Path, out: Path) -> list[str]:
    return prompt_weights_args(model, data, out, "--max_prompt_length", LIMIT, "--max_length", "64")


@pytest.fixture
def scored_contexts(monkeypatch) -> dict[str, list[list[int]]]:
    """The prompt ids `tisdpo weights` scores each side under, in row order (one group of two responses a row)."""
    contexts: dict[str, list[list[int]]] = {}
    real = estimate.score_groups

    def recording(model, groups, *args, desc: str = "", **kwargs):
        contexts.setdefault(desc.split()[0], []).extend(list(prompt) for prompt, _ in groups)
        return real(model, groups, *args, desc=desc, **kwargs)

    monkeypatch.setattr(estimate, "score_groups", recording)
    return contexts


def sequence_logps(model, context: list[int], completion: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([context + completion])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return [float(logp[len(context) + j - 1, token]) for j, token in enumerate(completion)]


def test_long_plain_prompts_keep_the_contrastive_text(tiny_model_dir, tmp_path, scored_contexts, caplog):
    caplog.set_level(logging.INFO, logger="tisdpo")
    rows = toy_pairs(6, seed=7)
    for row in rows[:3]:
        row["prompt"] = LONG_PROMPT
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "w.jsonl"
    assert main(p_weights(tiny_model_dir, data, out)) == 0
    assert (
        f"{data}: 3 of 6 pair(s) have a prompt longer than max_prompt_length={LIMIT}; its start was cut as for "
        "training (the contrastive text is kept whole)" in caplog.messages
    )
    assert json.loads(Path(f"{out}.meta.json").read_text())["prompts_cut"] == 3

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for index, (row, source) in enumerate(zip(read_jsonl(out), rows)):
        # Independently: training keeps BOS and the prompt's last LIMIT - 1 tokens; the contrastive
        # text goes before that kept text, whole.
        prompt_ids = tokenizer(source["prompt"], add_special_tokens=False)["input_ids"]
        kept_text = tokenizer.decode(prompt_ids[-(LIMIT - 1) :]) if index < 3 else source["prompt"]
        assert (len(prompt_ids) + 1 > LIMIT) == (index < 3)
        contexts = {}
        for side, preset in (("positive", "harmless"), ("negative", "harmful")):
            text = PRESETS[preset] + ("" if kept_text.startswith("\n") else "\n\n") + kept_text
            contexts[side] = [bos] + tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(scored_contexts[side][index]) == "<s>" + text
        for side in ("chosen", "rejected"):
            completion = tokenizer(source[side], add_special_tokens=False)["input_ids"] + [eos]
            assert row[f"{side}_token_ids"] == completion
            pos = sequence_logps(model, contexts["positive"], completion)
            neg = sequence_logps(model, contexts["negative"], completion)
            assert row[f"{side}_token_rewards"] == pytest.approx([a - b for a, b in zip(pos, neg)], abs=2e-5)
            # Before the fix both contexts of a long prompt were its last LIMIT tokens: every r_t exactly 0.
            assert any(reward != 0 for reward in row[f"{side}_token_rewards"])


def long_conversation(last_user: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "first question " + "hello how are you " * 6},
        {"role": "assistant", "content": "I am fine thank you"},
        {"role": "user", "content": last_user},
    ]


def test_long_conversations_keep_the_system_message_and_the_generation_prompt(
    tiny_model_dir, tmp_path, scored_contexts, caplog
):
    caplog.set_level(logging.INFO, logger="tisdpo")
    limit = 40
    rows = [
        {  # dropping the two oldest turns is enough
            "prompt": long_conversation("what is it about the item"),
            "chosen": [{"role": "assistant", "content": " safe kind"}],
            "rejected": [{"role": "assistant", "content": " rude harm"}],
        },
        {  # the last user message alone is too long: its start is cut too
            "prompt": long_conversation("start of it " + "tell me about the thing " * 8 + "the end"),
            "chosen": [{"role": "assistant", "content": " polite"}],
            "rejected": [{"role": "assistant", "content": " nasty cruel"}],
        },
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "w.jsonl"
    argv = p_weights(tiny_model_dir, data, out)
    argv[argv.index("--max_prompt_length") + 1] = str(limit)
    assert main(argv) == 0
    assert (
        f"{data}: 2 of 2 pair(s) have a prompt longer than max_prompt_length={limit}; its start was cut as for "
        "training (the contrastive text is kept whole)" in caplog.messages
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for index, (row, source) in enumerate(zip(read_jsonl(out), rows)):
        for side, preset in (("positive", "harmless"), ("negative", "harmful")):
            text = tokenizer.decode(scored_contexts[side][index])
            system = f"<s><|system|>\n{PRESETS[preset]}\n\nAnswer briefly.</s>\n"
            assert text.startswith(system) and text.endswith("<|assistant|>\n")
            assert "first question" not in text and "I am fine" not in text  # the oldest turns went first
            last_user = source["prompt"][-1]["content"]
            if index == 0:  # kept whole
                assert f"<|user|>\n{last_user}</s>\n<|assistant|>\n" in text
            else:  # its start cut
                assert "start of it" not in text and "tell me about the thing the end" in text
            assert text.endswith(source["prompt"][-1]["content"][-12:] + "</s>\n<|assistant|>\n")
            # what is left of the user's conversation fits the limit, as training's prompt does
            user_part = text.replace(PRESETS[preset] + "\n\n", "").removeprefix("<s>")
            assert len(tokenizer(user_part)["input_ids"]) <= limit
        # the completion ids are the chat template's, as training tokenizes them
        prompt_text = tokenizer.apply_chat_template(source["prompt"], tokenize=False, add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(source["prompt"] + source[side], tokenize=False)
            completion = tokenizer(full[len(prompt_text) :], add_special_tokens=False)["input_ids"]
            assert row[f"{side}_token_ids"] == completion
            assert any(reward != 0 for reward in row[f"{side}_token_rewards"])


def test_training_counts_the_prompts_it_cuts(tiny_model_dir, caplog):
    from tisdpo.modeling import load_tokenizer

    caplog.set_level(logging.INFO, logger="tisdpo")
    rows = toy_pairs(4, seed=8)
    rows[1]["prompt"] = LONG_PROMPT
    records = RawRecords(rows, "pairs.jsonl", [f"line {i + 1}" for i in range(4)])
    pair_tokenizer = PairTokenizer(load_tokenizer(tiny_model_dir), max_length=64, max_prompt_length=LIMIT)
    prepared = prepare_pairs(rows, records, pair_tokenizer)
    assert [len(ids) == LIMIT for ids in prepared.columns["prompt_input_ids"]] == [False, True, False, False]
    assert f"pairs.jsonl: 1 of 4 pair(s) have a prompt longer than max_prompt_length={LIMIT}; its start was cut" in (
        caplog.messages
    )
