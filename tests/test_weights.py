"""`tisdpo weights`: token rewards against an independent computation for P, S and D, transforms,
re-derivation, resumption, tokenizer checks, and training on the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import log_history, prompt_weights_args, read_jsonl, toy_pairs, train_argv, write_jsonl
from conftest import run_cli as run
from transformers import AutoModelForCausalLM, AutoTokenizer

from tisdpo.weights.prompts import PRESETS
from tisdpo.weights.transforms import WeightTransformConfig, transform_pair

SIDES = ("chosen", "rejected")
COMMON = ["--per_device_train_batch_size", "8", "--save_strategy", "no", "--seed", "0", "--max_length", "64"]


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


def expected_plain_text_weights(row: dict, config: WeightTransformConfig, index: int) -> tuple[list, list]:
    """Weights of a plain-text row computed independently: the transform of the response tokens' rewards,
    then weight 1.0 on the EOS appended to each response (its only structural token)."""
    for side in SIDES:
        assert row[f"{side}_structural_positions"] == [len(row[f"{side}_token_ids"]) - 1]
    chosen, rejected = transform_pair(
        row["chosen_token_rewards"][:-1], row["rejected_token_rewards"][:-1], config, index
    )
    return chosen.tolist() + [1.0], rejected.tolist() + [1.0]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    return str(write_jsonl(tmp_path_factory.mktemp("w") / "pairs.jsonl", toy_pairs(12, seed=3)))


def test_prompt_based_rewards_match_independent_computation(tiny_model_dir, small_data, tmp_path):
    out = tmp_path / "p.jsonl"
    assert run(*prompt_weights_args(tiny_model_dir, small_data, out, "--rows_per_part", "5", "--batch_size", "3")) == 0
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
            expected = expected_plain_text_weights(row, WeightTransformConfig(), 0)[SIDES.index(side)]
            assert row[f"{side}_weights"] == pytest.approx(expected)
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
    argv = prompt_weights_args(
        tiny_model_dir, small_data, out, "--max_samples", "2", positive=template_pos, negative=template_neg
    )
    assert run(*argv) == 0
    row = read_jsonl(out)[0]
    _, pos = naive_logps(tiny_model_dir, template_pos.replace("{prompt}", row["prompt"]), row["chosen"])
    _, neg = naive_logps(tiny_model_dir, template_neg.replace("{prompt}", row["prompt"]), row["chosen"])
    assert row["chosen_token_rewards"] == pytest.approx([a - b for a, b in zip(pos, neg)], abs=2e-5)


def train(model: str, data: str, out: Path, loss_type: str, *extra: str) -> str:
    flags = ["--loss_type", loss_type, "--max_steps", "6", "--learning_rate", "3e-3", *COMMON, *extra]
    assert run(*train_argv(model, data, out, *flags)) == 0
    return str(out)


@pytest.mark.parametrize("method,transform", [("S", "threshold_and_scale"), ("D", "exp")])
def test_two_model_sources_end_to_end(method, transform, tiny_model_dir, toy_data_files, small_data, tmp_path):
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
            transform,
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
    assert run(*train_argv(tiny_model_dir, out, tis, "--loss_type", "tisdpo", "--max_steps", "2", *COMMON)) == 0
    config = WeightTransformConfig(name=transform)
    for index, row in enumerate(rows):
        chosen, rejected = expected_plain_text_weights(row, config, index)
        assert row["chosen_weights"] == chosen and row["rejected_weights"] == rejected
    # The two steps of 8 and 4 pairs train each of the 12 pairs once, untruncated at max_length 64: the
    # logged mean is the token-weighted mean of the file's chosen weights (neither transform has mean 1).
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    longest = max(len(tokenizer(r["prompt"])["input_ids"]) + len(r[f"{s}_token_ids"]) for r in rows for s in SIDES)
    assert longest <= 64 and len(rows) == 12
    expected = sum(sum(row["chosen_weights"]) for row in rows) / sum(len(row["chosen_weights"]) for row in rows)
    history = log_history(tis)
    assert history[-1]["weights/chosen_mean"] == pytest.approx(expected, abs=1e-6)
    assert abs(expected - 1) > 1e-3


def test_from_rewards_rederives_weights_without_models(tiny_model_dir, small_data, tmp_path):
    first = tmp_path / "first.jsonl"
    assert run(*prompt_weights_args(tiny_model_dir, small_data, first, positive="helpful", negative="unhelpful")) == 0
    second = tmp_path / "second.jsonl"
    rederive = ["--weight_transform", "binary", "--weight_binary_top_fraction", "0.25", "--output_file", second]
    assert run("weights", "--from_rewards", first, *rederive) == 0
    config = WeightTransformConfig(name="binary", binary_top_fraction=0.25)
    for index, (a, b) in enumerate(zip(read_jsonl(first), read_jsonl(second))):
        assert a["chosen_token_rewards"] == b["chosen_token_rewards"]
        chosen, rejected = expected_plain_text_weights(a, config, index)
        assert b["chosen_weights"] == chosen and b["rejected_weights"] == rejected
    meta = json.loads(Path(str(second) + ".meta.json").read_text())
    assert (
        meta["transform"]["name"] == "binary"
        and meta["derived_from"] == str(first)
        and meta["positive_prompt"]["name"] == "helpful"
    )


def test_interrupted_scoring_resumes_to_the_same_output(tiny_model_dir, small_data, tmp_path, monkeypatch):
    def args(out: Path) -> list[str]:
        return prompt_weights_args(tiny_model_dir, small_data, out, "--rows_per_part", "4")

    reference = tmp_path / "ref.jsonl"
    assert run(*args(reference)) == 0

    import tisdpo.weights.estimate as estimate

    real, calls = estimate.score_part, []

    def crash_on_third_part(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(estimate, "score_part", crash_on_third_part)
    assert run(*args(out)) == 130
    assert not out.exists() and len(list(Path(str(out) + ".parts").glob("part-*.jsonl"))) == 2
    calls.clear()
    assert run(*args(out)) == 0
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
    assert run(*prompt_weights_args(tiny_model_dir, small_data, out)) == 0
    train_on_other = ["train", "--model_name_or_path", other, "--dataset_name", out, "--loss_type", "tisdpo"]
    train_on_other += ["--output_dir", tmp_path / "t", *COMMON]
    assert run(*train_on_other) == 1
    assert "was made with another tokenizer" in capsys.readouterr().err
    Path(str(out) + ".meta.json").unlink()  # without provenance, the token ids still catch it
    assert run(*train_on_other) == 1
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


def test_reverse_pairs_is_refused_with_the_equivalent_way(tiny_model_dir, small_data, tmp_path, capsys):
    out = tmp_path / "w.jsonl"
    assert run(*prompt_weights_args(tiny_model_dir, small_data, out, "--reverse_pairs", "true")) == 1
    assert capsys.readouterr().err.strip() == (
        "tisdpo weights: error: --reverse_pairs: tisdpo weights scores the pairs as the file has them; score them "
        "without it, then train on the weights file with --reverse_pairs true, which swaps texts, token ids, rewards "
        "and weights together (exactly the weights of the reversed contrast on the reversed pairs)"
    )
    assert not out.exists()
    # The claim: the weights file, swapped as training swaps it, holds the weights that the reversed
    # contrast (harmful vs harmless) gives the reversed pairs.
    from tisdpo.data.formats import FormatOptions, normalize_row

    assert run(*prompt_weights_args(tiny_model_dir, small_data, out)) == 0
    pairs = read_jsonl(Path(small_data))
    swapped_data = write_jsonl(
        tmp_path / "swapped.jsonl", [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    )
    reversed_out = tmp_path / "reversed.jsonl"
    argv = prompt_weights_args(tiny_model_dir, swapped_data, reversed_out, positive="harmful", negative="harmless")
    assert run(*argv) == 0
    for row, expected in zip(read_jsonl(out), read_jsonl(reversed_out)):
        as_trained = normalize_row(row, FormatOptions(reverse=True), str(out), "line")
        for side in SIDES:
            assert as_trained[side] == expected[side]
            assert as_trained[f"{side}_token_ids"] == expected[f"{side}_token_ids"]
            assert as_trained[f"{side}_weights"] == pytest.approx(expected[f"{side}_weights"], abs=1e-5)
            # the rewards of the reversed contrast are the opposite ones
            negated = [-r for r in expected[f"{side}_token_rewards"]]
            assert as_trained[f"{side}_token_rewards"] == pytest.approx(negated, abs=1e-5)


# -- resumable parts: every option that changes the rows is in their fingerprint ---------------------------


def pku_rows() -> list[dict]:
    rows = []
    for index, pair in enumerate(toy_pairs(7, seed=9)):
        better = index % 2
        rows.append(
            {
                "prompt": pair["prompt"],
                "response_0": pair["chosen"],
                "response_1": pair["rejected"] if index != 1 else pair["chosen"],  # row 1: identical responses
                "better_response_id": better,
                "safer_response_id": 1 - better,
            }
        )
    return rows


def perturb_model_in_place(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    model.save_pretrained(model_dir)


RESUME_CHANGES = {  # option: (flags of the interrupted run, flags of its resume); parts of 2 rows
    "preference_key": (["--preference_key", "better"], ["--preference_key", "safer"]),
    "prompt_template": ([], ["--prompt_template", "Q: {prompt} A:"]),
    "drop_identical_pairs": ([], ["--drop_identical_pairs", "true"]),
    "max_samples": ([], ["--max_samples", "3"]),  # the second part had rows 2 and 3, now row 2 alone
    "max_length": ([], ["--max_length", "18"]),
    "max_prompt_length": ([], ["--max_prompt_length", "6"]),
    "positive_prompt": ([], ["--positive_prompt", "helpful"]),
    "negative_prompt": ([], ["--negative_prompt", "unhelpful"]),
    "dtype": ([], ["--dtype", "bfloat16"]),
    "model_files": ([], []),  # the model folder is retrained in place between the two runs
}


@pytest.mark.parametrize("option", list(RESUME_CHANGES))
def test_resume_after_an_option_changed_equals_a_fresh_run(option, tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    import tisdpo.weights.estimate as estimate

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = write_jsonl(tmp_path / "pku.jsonl", pku_rows())
    before, after = RESUME_CHANGES[option]
    out = tmp_path / "w.jsonl"
    real, calls = estimate.score_part, []

    def stop_after_two_parts(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(estimate, "score_part", stop_after_two_parts)
    assert run(*prompt_weights_args(model, data, out, "--rows_per_part", "2", *before)) == 130
    parts = sorted(Path(f"{out}.parts").glob("part-*.jsonl"))
    assert len(parts) == 2
    stale = [json.loads(line)["result"] for part in parts for line in part.read_text().splitlines()]
    monkeypatch.setattr(estimate, "score_part", real)
    if option == "model_files":
        perturb_model_in_place(model)
    fresh = tmp_path / "fresh.jsonl"
    assert run(*prompt_weights_args(model, data, fresh, "--rows_per_part", "2", *after)) == 0
    # the option does change what the parts hold ...
    columns = ("chosen_token_ids", "rejected_token_ids", "chosen_token_rewards", "rejected_token_rewards")
    fresh_results = [{c: row[c] for c in columns} for row in read_jsonl(fresh)]
    assert stale != fresh_results[: len(stale)]
    # ... so the resumed run must not reuse it
    assert run(*prompt_weights_args(model, data, out, "--rows_per_part", "2", *after)) == 0
    assert out.read_text() == fresh.read_text()
