"""`tisdpo weights`: token rewards against an independent computation for P, S and D, transforms,
re-derivation, resumption, tokenizer checks, and training on the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import toy_pairs, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from tisdpo.cli import main
from tisdpo.weights.prompts import PRESETS
from tisdpo.weights.transforms import WeightTransformConfig, transform_pair

COMMON = [
    "--per_device_train_batch_size",
    "8",
    "--save_strategy",
    "no",
    "--seed",
    "0",
    "--max_length",
    "64",
]


def run(*args) -> int:
    return main([str(a) for a in args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def naive_logps(model_dir: str, context_text: str, response: str) -> tuple[list[int], list[float]]:
    """Independent computation: tokenize by hand, one full forward, full log-softmax, pick each label."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    context = [tokenizer.bos_token_id] + tokenizer(context_text, add_special_tokens=False)["input_ids"]
    completion = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([context + completion])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return completion, [float(logp[len(context) + j - 1, token]) for j, token in enumerate(completion)]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    return str(write_jsonl(tmp_path_factory.mktemp("w") / "pairs.jsonl", toy_pairs(12, seed=3)))


def test_prompt_based_rewards_match_independent_computation(tiny_model_dir, small_data, tmp_path):
    out = tmp_path / "p.jsonl"
    assert (
        run(
            "weights",
            "--model_name_or_path",
            tiny_model_dir,
            "--positive_prompt",
            "harmless",
            "--negative_prompt",
            "harmful",
            "--dataset_name",
            small_data,
            "--output_file",
            out,
            "--rows_per_part",
            "5",
            "--batch_size",
            "3",
        )
        == 0
    )
    rows = read_jsonl(out)
    source = read_jsonl(Path(small_data))
    assert len(rows) == len(source)
    for row, original in zip(rows, source):
        assert {k: row[k] for k in original} == original  # every input field kept
        for side in ("chosen", "rejected"):
            ids, pos = naive_logps(tiny_model_dir, PRESETS["harmless"] + original["prompt"], original[side])
            _, neg = naive_logps(tiny_model_dir, PRESETS["harmful"] + original["prompt"], original[side])
            assert row[f"{side}_token_ids"] == ids
            assert row[f"{side}_token_rewards"] == pytest.approx([a - b for a, b in zip(pos, neg)], abs=2e-5)
            expected = transform_pair(
                row["chosen_token_rewards"],
                row["rejected_token_rewards"],
                WeightTransformConfig(),
                0,
            )[0 if side == "chosen" else 1]
            assert row[f"{side}_weights"] == pytest.approx(expected.tolist())
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert (
        meta["method"] == "prompt"
        and meta["positive_prompt"]["name"] == "harmless"
        and meta["transform"]["name"] == "exp"
    )
    assert not Path(str(out) + ".parts").exists()


def test_custom_template_prompt(tiny_model_dir, small_data, tmp_path):
    out = tmp_path / "t.jsonl"
    template_pos, template_neg = "Good answer to: {prompt}", "Bad answer to: {prompt}"
    assert (
        run(
            "weights",
            "--model_name_or_path",
            tiny_model_dir,
            "--positive_prompt",
            template_pos,
            "--negative_prompt",
            template_neg,
            "--dataset_name",
            small_data,
            "--output_file",
            out,
            "--max_samples",
            "2",
        )
        == 0
    )
    row = read_jsonl(out)[0]
    _, pos = naive_logps(tiny_model_dir, template_pos.replace("{prompt}", row["prompt"]), row["chosen"])
    _, neg = naive_logps(tiny_model_dir, template_neg.replace("{prompt}", row["prompt"]), row["chosen"])
    assert row["chosen_token_rewards"] == pytest.approx([a - b for a, b in zip(pos, neg)], abs=2e-5)


def train(model: str, data: str, out: Path, loss_type: str, *extra: str) -> str:
    assert (
        run(
            "train",
            "--model_name_or_path",
            model,
            "--dataset_name",
            data,
            "--output_dir",
            out,
            "--loss_type",
            loss_type,
            "--max_steps",
            "6",
            "--learning_rate",
            "3e-3",
            *COMMON,
            *extra,
        )
        == 0
    )
    return str(out)


@pytest.mark.parametrize("method", ["S", "D"])
def test_two_model_sources_end_to_end(method, tiny_model_dir, toy_data_files, small_data, tmp_path):
    loss = "sft" if method == "S" else "dpo"
    positive = train(tiny_model_dir, toy_data_files[0], tmp_path / "pos", loss)
    negative = train(tiny_model_dir, toy_data_files[0], tmp_path / "neg", loss, "--reverse_pairs")
    out = tmp_path / "w.parquet"
    assert (
        run(
            "weights",
            "--positive_model_name_or_path",
            positive,
            "--negative_model_name_or_path",
            negative,
            "--dataset_name",
            small_data,
            "--output_file",
            out,
            "--weight_transform",
            "rank_based",
        )
        == 0
    )
    import datasets

    rows = datasets.load_dataset("parquet", data_files=str(out), split="train").to_list()
    for row in rows[:4]:
        for side in ("chosen", "rejected"):
            _, pos = naive_logps(positive, row["prompt"], row[side])
            _, neg = naive_logps(negative, row["prompt"], row[side])
            assert row[f"{side}_token_rewards"] == pytest.approx([a - b for a, b in zip(pos, neg)], abs=2e-5)
    # the contrastive pair separates the sides: chosen tokens score higher on average
    mean = lambda key: sum(sum(r[key]) for r in rows) / sum(len(r[key]) for r in rows)  # noqa: E731
    assert mean("chosen_token_rewards") > mean("rejected_token_rewards")
    # and the file trains directly
    tis = tmp_path / "tis"
    assert (
        run(
            "train",
            "--model_name_or_path",
            tiny_model_dir,
            "--dataset_name",
            out,
            "--loss_type",
            "tisdpo",
            "--output_dir",
            tis,
            "--max_steps",
            "2",
            *COMMON,
        )
        == 0
    )
    history = json.loads((tis / "trainer_state.json").read_text())["log_history"]
    assert 0.7 <= history[-1]["weights/chosen_mean"] <= 1.3


def test_from_rewards_rederives_weights_without_models(tiny_model_dir, small_data, tmp_path):
    first = tmp_path / "first.jsonl"
    assert (
        run(
            "weights",
            "--model_name_or_path",
            tiny_model_dir,
            "--positive_prompt",
            "helpful",
            "--negative_prompt",
            "unhelpful",
            "--dataset_name",
            small_data,
            "--output_file",
            first,
        )
        == 0
    )
    second = tmp_path / "second.jsonl"
    assert (
        run(
            "weights",
            "--from_rewards",
            first,
            "--weight_transform",
            "binary",
            "--weight_binary_top_fraction",
            "0.25",
            "--output_file",
            second,
        )
        == 0
    )
    config = WeightTransformConfig(name="binary", binary_top_fraction=0.25)
    for index, (a, b) in enumerate(zip(read_jsonl(first), read_jsonl(second))):
        assert a["chosen_token_rewards"] == b["chosen_token_rewards"]
        chosen, rejected = transform_pair(a["chosen_token_rewards"], a["rejected_token_rewards"], config, index)
        assert b["chosen_weights"] == chosen.tolist() and b["rejected_weights"] == rejected.tolist()
    meta = json.loads(Path(str(second) + ".meta.json").read_text())
    assert (
        meta["transform"]["name"] == "binary"
        and meta["derived_from"] == str(first)
        and meta["positive_prompt"]["name"] == "helpful"
    )


def test_interrupted_scoring_resumes_to_the_same_output(tiny_model_dir, small_data, tmp_path, monkeypatch):
    args = [
        "weights",
        "--model_name_or_path",
        tiny_model_dir,
        "--positive_prompt",
        "harmless",
        "--negative_prompt",
        "harmful",
        "--dataset_name",
        small_data,
        "--rows_per_part",
        "4",
    ]
    reference = tmp_path / "ref.jsonl"
    assert run(*args, "--output_file", reference) == 0

    import tisdpo.commands.weights as weights_command

    real, calls = weights_command.score_part, []

    def crash_on_third_part(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(weights_command, "score_part", crash_on_third_part)
    assert run(*args, "--output_file", out) == 130
    assert not out.exists() and len(list(Path(str(out) + ".parts").glob("part-*.jsonl"))) == 2
    calls.clear()
    assert run(*args, "--output_file", out) == 0
    assert len(calls) == 1  # only the missing part was scored again
    assert out.read_text() == reference.read_text()


def test_weights_made_with_another_tokenizer_are_refused(tiny_model_dir, small_data, tmp_path, capsys):
    from tisdpo.demo.factory import build_tiny_llama, train_tokenizer

    other = tmp_path / "other-model"
    tokenizer = train_tokenizer(
        [r["prompt"] + r["chosen"] for r in toy_pairs(50)] * 2,
        str(other),
        kind="bpe",
        vocab_size=300,
    )
    build_tiny_llama(tokenizer, str(other), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    out = tmp_path / "w.jsonl"
    assert (
        run(
            "weights",
            "--model_name_or_path",
            tiny_model_dir,
            "--positive_prompt",
            "harmless",
            "--negative_prompt",
            "harmful",
            "--dataset_name",
            small_data,
            "--output_file",
            out,
        )
        == 0
    )
    assert (
        run(
            "train",
            "--model_name_or_path",
            other,
            "--dataset_name",
            out,
            "--loss_type",
            "tisdpo",
            "--output_dir",
            tmp_path / "t",
            *COMMON,
        )
        == 1
    )
    assert "was made with another tokenizer" in capsys.readouterr().err
    Path(str(out) + ".meta.json").unlink()  # without provenance, the token ids still catch it
    assert (
        run(
            "train",
            "--model_name_or_path",
            other,
            "--dataset_name",
            out,
            "--loss_type",
            "tisdpo",
            "--output_dir",
            tmp_path / "t",
            *COMMON,
        )
        == 1
    )
    assert "field 'chosen_token_ids': token ids differ from this tokenizer's completion ids" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--positive_prompt", "harmles", "--negative_prompt", "harmful"],
            "unknown prompt preset 'harmles' (did you mean 'harmless'?)",
        ),
        (
            ["--positive_model_name_or_path", "x"],
            "need both --positive_model_name_or_path and --negative_model_name_or_path",
        ),
        (
            ["--positive_prompt", "harmless", "--negative_prompt", "harmful", "--weight_min", "3"],
            "min_weight",
        ),
    ],
)
def test_bad_weight_arguments(args, message, tiny_model_dir, small_data, tmp_path, capsys):
    assert (
        run(
            "weights",
            "--model_name_or_path",
            tiny_model_dir,
            "--dataset_name",
            small_data,
            "--output_file",
            tmp_path / "o.jsonl",
            *args,
        )
        == 1
    )
    assert message in capsys.readouterr().err
