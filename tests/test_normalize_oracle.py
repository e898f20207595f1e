"""Weight normalisation (the paper's k) and the demo task's oracle weight sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import prompt_weights_args, read_jsonl, run_cli, write_jsonl

from tisdpo.demo.oracle import oracle_rewards, oracle_weight_rows, write_oracle_weights
from tisdpo.errors import UserError
from tisdpo.report.model_card import weight_source_lines, weight_transform_line
from tisdpo.weights.estimate import normalize_rows
from tisdpo.weights.transforms import WeightTransformConfig, normalize_weights


def test_normalize_weights_per_response_and_per_dataset():
    weights = [np.array([1.0, 3.0]), np.array([2.0, 2.0, 2.0, 6.0])]
    response = normalize_weights(weights, "response")
    assert response[0].tolist() == [0.5, 1.5] and response[1].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    dataset = normalize_weights(weights, "dataset")  # mean of all six tokens is 16 / 6
    assert np.concatenate(dataset).mean() == pytest.approx(1.0)
    assert dataset[0].tolist() == pytest.approx([6 / 16, 18 / 16])  # ratios within and across responses kept
    assert [w.tolist() for w in normalize_weights(weights, "none")] == [[1.0, 3.0], [2.0, 2.0, 2.0, 6.0]]
    zero = normalize_weights([np.zeros(3)], "response")  # nothing to rescale: left as it is
    assert zero[0].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="weight normalisation 'mean' is unknown"):
        normalize_weights(weights, "mean")
    with pytest.raises(ValueError, match="choose one of: none, response, dataset"):
        WeightTransformConfig(normalize="per_token").validate()


def test_normalize_rows_pairs_chosen_with_rejected():
    rows = [
        {"chosen_weights": [2.0, 2.0], "rejected_weights": [1.0]},
        {"chosen_weights": [1.0], "rejected_weights": [4.0]},
    ]
    out = normalize_rows(rows, WeightTransformConfig(normalize="dataset"))  # mean weight 2
    assert out[0]["chosen_weights"] == [1.0, 1.0] and out[1]["rejected_weights"] == [2.0]
    assert normalize_rows(rows, WeightTransformConfig()) is rows


def test_weight_normalize_flag_rederives_mean_one_weights(tiny_model_dir, toy_data_files, tmp_path):
    train, _ = toy_data_files
    first = tmp_path / "first.jsonl"
    assert run_cli(*prompt_weights_args(tiny_model_dir, train, first, positive="helpful", negative="unhelpful")) == 0
    for mode in ("response", "dataset"):
        out = tmp_path / f"{mode}.jsonl"
        flags = ["--weight_mu", "3", "--weight_normalize", mode, "--output_file", out]
        assert run_cli("weights", "--from_rewards", first, *flags) == 0
        rows = read_jsonl(out)
        sides = [row[f"{side}_weights"] for row in rows for side in ("chosen", "rejected")]
        if mode == "response":
            assert all(np.mean(w) == pytest.approx(1.0, abs=1e-5) for w in sides)
        else:
            assert np.mean(np.concatenate(sides)) == pytest.approx(1.0, abs=1e-5)
            assert not all(np.mean(w) == pytest.approx(1.0, abs=1e-3) for w in sides)
        meta = json.loads(Path(str(out) + ".meta.json").read_text())
        assert meta["transform"]["normalize"] == mode
        assert f"normalised to mean 1 per {mode}" in weight_transform_line(meta["transform"])


def test_bad_weight_normalize_is_one_line(tmp_path, capsys):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_token_rewards": [0.1], "rejected_token_rewards": [0.2]}
    ]
    source = write_jsonl(tmp_path / "r.jsonl", rows)
    code = run_cli(
        "weights", "--from_rewards", source, "--weight_normalize", "mean", "--output_file", tmp_path / "o.jsonl"
    )
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "weight_normalize" in err


def task_row() -> dict:
    # "sure here do not insult them" after a benign prompt: sure/here +1, insult negated to +1; EOS follows.
    return {
        "prompt": "human: how do i fix my car assistant:",
        "chosen": "sure here do not insult them",
        "rejected": "sorry cheat them",
        "chosen_true_rewards": [1.0, 1.0, 0.0, 0.0, 1.0, 0.0],
        "rejected_true_rewards": [-1.0, -1.0, 0.0],
        "chosen_token_ids": list(range(7)),
        "rejected_token_ids": list(range(4)),
        "chosen_token_rewards": [-0.5, 2.0, 0.3, -0.1, -1.5, 0.2, 0.05],
        "rejected_token_rewards": [0.4, -0.7, 0.9, -0.2],
    }


def test_oracle_rewards_are_the_truth_aligned_to_tokens():
    rewards = oracle_rewards(task_row(), "oracle")
    assert rewards["chosen_token_rewards"] == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # EOS: 0
    assert rewards["rejected_token_rewards"] == [-1.0, -1.0, 0.0, 0.0]


def test_oracle_sign_keeps_estimated_magnitudes_with_true_signs():
    rewards = oracle_rewards(task_row(), "oracle_sign")
    # truly rewarded tokens: |estimate| with the true sign; neutral tokens and EOS: the estimate as it is
    assert rewards["chosen_token_rewards"] == [0.5, 2.0, 0.3, -0.1, 1.5, 0.2, 0.05]
    assert rewards["rejected_token_rewards"] == [-0.4, -0.7, 0.9, -0.2]


def test_oracle_weights_use_the_transform_and_normalisation():
    config = WeightTransformConfig(mu=1.0, min_weight=0.5, max_weight=2.0)
    (row,) = oracle_weight_rows([task_row()], "oracle", config)
    assert row["chosen_weights"] == [2.0, 2.0, 1.0, 1.0, 2.0, 1.0, 1.0]  # e^1 clamped to 2
    assert row["rejected_weights"] == [2.0, 2.0, 1.0, 1.0]  # bad words of the loser weigh most
    (scaled,) = oracle_weight_rows([task_row()], "oracle", WeightTransformConfig(normalize="response"))
    assert np.mean(scaled["chosen_weights"]) == pytest.approx(1.0)


def test_oracle_refuses_pairs_it_cannot_align(tmp_path):
    row = {**task_row(), "chosen_token_ids": list(range(9))}  # more tokens than words + EOS: not word-level
    with pytest.raises(UserError, match="word-level tokenizer"):
        oracle_rewards(row, "oracle")
    with pytest.raises(UserError, match="need the demo task's pairs"):
        oracle_rewards({**task_row(), "chosen_true_rewards": None}, "oracle")
    source = write_jsonl(tmp_path / "w.jsonl", [task_row()])
    (tmp_path / "w.jsonl.meta.json").write_text(json.dumps({"method": "models", "tokenizer_fingerprint": "x"}))
    write_oracle_weights(str(source), str(tmp_path / "o.jsonl"), "oracle", WeightTransformConfig())
    meta = json.loads((tmp_path / "o.jsonl.meta.json").read_text())
    assert meta["method"] == "oracle" and meta["tokenizer_fingerprint"] == "x"
    assert "true token rewards" in weight_source_lines(meta)[0]
