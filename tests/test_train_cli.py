"""End-to-end runs of `tisdpo train` / `tisdpo evaluate` on a tiny local model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import QUIET_FLAGS, evaluate, log_history, read_jsonl, train_argv, write_jsonl
from conftest import run_cli as run
from safetensors.torch import load_file

from tisdpo.config import TisdpoConfig
from tisdpo.data.tokenize import PairTokenizer
from tisdpo.modeling import load_tokenizer

COMMON = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", *QUIET_FLAGS]


def train(model: str | Path, data: str, out: Path, *extra: object) -> int:
    """`tisdpo train` of MODEL on DATA into OUT with EXTRA and COMMON: the exit code."""
    return run(*train_argv(model, data, out, *extra, *COMMON))


def test_dpo_training_moves_heldout_margins_up(tiny_model_dir, toy_data_files, tmp_path):
    train_file, eval_file = toy_data_files
    before = evaluate(tiny_model_dir, tiny_model_dir, eval_file, tmp_path / "before", *COMMON)
    assert set(before) >= {
        "eval_loss",
        "eval_rewards/chosen",
        "eval_rewards/rejected",
        "eval_rewards/accuracies",
        "eval_rewards/margins",
        "eval_logps/chosen",
        "eval_logps/rejected",
    }
    assert before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert before["eval_loss"] == pytest.approx(0.693147, abs=1e-5)

    out = tmp_path / "dpo"
    assert (
        train(tiny_model_dir, train_file, out, "--loss_type", "dpo", "--max_steps", "24", "--learning_rate", "3e-3")
        == 0
    )
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    after = evaluate(str(out), tiny_model_dir, eval_file, tmp_path / "after", *COMMON)
    assert after["eval_rewards/margins"] > 1.0
    assert after["eval_rewards/accuracies"] > 0.9
    assert after["eval_loss"] < before["eval_loss"] - 0.2


def unit_weight_file(tiny_model_dir: str, train_file: str, path: Path) -> str:
    tokenizer = load_tokenizer(tiny_model_dir)
    pair_tokenizer = PairTokenizer(tokenizer, max_length=64)
    rows = read_jsonl(train_file)
    for row in rows:
        pair = pair_tokenizer.tokenize(row)
        row["chosen_token_ids"], row["rejected_token_ids"] = (
            pair.chosen_full_ids,
            pair.rejected_full_ids,
        )
        row["chosen_weights"] = [1.0] * len(pair.chosen_full_ids)
        row["rejected_weights"] = [1.0] * len(pair.rejected_full_ids)
    return str(write_jsonl(path, rows))


def test_tisdpo_with_unit_weights_trains_exactly_like_dpo(tiny_model_dir, toy_data_files, tmp_path):
    train_file, _ = toy_data_files
    weights_file = unit_weight_file(tiny_model_dir, train_file, tmp_path / "ones.jsonl")
    for data, loss_type, name in ((train_file, "dpo", "dpo"), (weights_file, "tisdpo", "tis")):
        assert (
            train(
                tiny_model_dir,
                data,
                tmp_path / name,
                "--loss_type",
                loss_type,
                "--max_steps",
                "6",
                "--learning_rate",
                "1e-3",
            )
            == 0
        )
    dpo, tis = (
        load_file(tmp_path / "dpo" / "model.safetensors"),
        load_file(tmp_path / "tis" / "model.safetensors"),
    )
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert not torch.equal(dpo["lm_head.weight"], start["lm_head.weight"])
    for name in dpo:
        assert torch.equal(dpo[name], tis[name]), name
    metrics = log_history(tmp_path / "tis")
    assert any("weighted_rewards/margins" in entry for entry in metrics)
    # each saved model explains itself: a model card with the objective (and, for TIS-DPO, the weights)
    dpo_card, tis_card = ((tmp_path / name / "README.md").read_text() for name in ("dpo", "tis"))
    assert "library_name: tisdpo" in dpo_card and "`dpo`" in dpo_card and "## Token weights" not in dpo_card
    assert "`tisdpo`" in tis_card and "## Token weights" in tis_card and "| steps | `6` |" in tis_card


def test_tisdpo_without_weights_is_a_clear_error(tiny_model_dir, toy_data_files, tmp_path, capsys):
    assert train(tiny_model_dir, toy_data_files[0], tmp_path, "--loss_type", "tisdpo") == 1
    err = capsys.readouterr().err
    assert "train.jsonl:line 1 field 'chosen_weights': is missing" in err and "Traceback" not in err


@pytest.mark.parametrize("loss_type", ["ipo", "cdpo", "simpo", "tdpo2"])
def test_other_objectives_train_and_improve_accuracy(loss_type, tiny_model_dir, toy_data_files, tmp_path):
    train_file, eval_file = toy_data_files
    out = tmp_path / loss_type
    lr = "1e-2" if loss_type == "simpo" else "3e-3"
    flags = ["--eval_dataset_name", eval_file, "--loss_type", loss_type, "--max_steps", "16", "--learning_rate", lr]
    assert train(tiny_model_dir, train_file, out, *flags) == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_rewards/accuracies"] > 0.8, results
    if loss_type == "tdpo2":
        assert results["eval_kl/chosen"] > 0 and results["eval_kl/rejected"] > 0


def test_sft_lowers_nll_of_chosen_responses(tiny_model_dir, toy_data_files, tmp_path):
    train_file, _ = toy_data_files
    out = tmp_path / "sft"
    flags = ["--loss_type", "sft", "--max_steps", "20", "--learning_rate", "5e-3", "--logging_steps", "5"]
    assert train(tiny_model_dir, train_file, out, *flags) == 0
    history = log_history(out, "loss")
    assert float(history[-1]["loss"]) < float(history[0]["loss"]) - 0.5


def test_yaml_config_with_flag_override_and_unknown_keys(tiny_model_dir, toy_data_files, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_dir}\ndataset_name: {toy_data_files[0]}\nloss_type: dpo\nmax_steps: 2\nbeta: 0.5\nsave_strategy: 'no'\nmax_length: 64\n"
    )
    out = tmp_path / "run"
    assert run("train", "--config", recipe, "--output_dir", out, "--max_steps", "3") == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # the flag wins over the file

    recipe.write_text("model_name_or_path: x\nbta: 0.1\n")
    assert run("train", "--config", recipe, "--output_dir", out) == 1
    assert "unknown setting 'bta' (did you mean 'beta'?)" in capsys.readouterr().err

    recipe.write_text("- a list\n- not a mapping\n")
    assert run("train", "--config", recipe, "--output_dir", out) == 1
    assert "expected a mapping of field names to values, got list" in capsys.readouterr().err

    assert (
        run(
            "train",
            "--model_name_or_path",
            tiny_model_dir,
            "--output_dir",
            out,
            "--lerning_rate",
            "1",
        )
        == 1
    )
    assert "unknown flag '--lerning_rate' (did you mean 'learning_rate'?)" in capsys.readouterr().err


def test_missing_or_incomplete_model_folder(tmp_path, toy_data_files, capsys):
    assert run(*train_argv(tmp_path / "nothing", toy_data_files[0], tmp_path / "o")) == 1
    assert (
        "nothing: tokenizer folder not found (expected a save_pretrained folder or a hub id)" in capsys.readouterr().err
    )
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    (tmp_path / "half" / "tokenizer.json").write_text("{}")
    assert run(*train_argv(tmp_path / "half", toy_data_files[0], tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert "half: could not load the tokenizer" in err and "Traceback" not in err


def test_precomputed_reference_trains_like_a_live_reference_model(tiny_model_dir, toy_data_files, tmp_path):
    """The precompute fast path is exact: same final weights as running the reference every step."""
    for name, flag in (("pre", "true"), ("live", "false")):
        flags = ["--max_steps", "4", "--learning_rate", "1e-3", "--precompute_ref_log_probs", flag]
        assert train(tiny_model_dir, toy_data_files[0], tmp_path / name, *flags) == 0
    pre, live = load_file(tmp_path / "pre" / "model.safetensors"), load_file(tmp_path / "live" / "model.safetensors")
    for name in pre:
        torch.testing.assert_close(pre[name], live[name], rtol=1e-5, atol=1e-6)


def test_logits_path_trains_like_the_chunked_path(tiny_model_dir, toy_data_files, tmp_path):
    for path in ("chunked", "logits"):
        flags = ["--max_steps", "4", "--learning_rate", "1e-3", "--logprob_path", path]
        assert train(tiny_model_dir, toy_data_files[0], tmp_path / path, *flags) == 0
    chunked, logits = (
        load_file(tmp_path / "chunked" / "model.safetensors"),
        load_file(tmp_path / "logits" / "model.safetensors"),
    )
    for name in chunked:
        torch.testing.assert_close(chunked[name], logits[name], rtol=1e-4, atol=1e-6)


def first_logged(out: Path) -> dict:
    return log_history(out, "rewards/chosen")[0]


def test_simpo_trains_with_its_own_default_beta_unless_given(tiny_model_dir, toy_data_files, tmp_path, caplog):
    """SimPO's rewards are beta * mean token log-prob: with no update, 2.0 (SimPO's default) against 0.5 is 4x."""
    flags = ["--loss_type", "simpo", "--learning_rate", "0", "--max_steps", "1", "--logging_steps", "1"]
    with caplog.at_level(logging.INFO, logger="tisdpo.config"):
        assert train(tiny_model_dir, toy_data_files[0], tmp_path / "default", *flags) == 0
    assert "loss_type simpo: beta 2.0 (SimPO's default; set --beta to change)" in caplog.text
    assert train(tiny_model_dir, toy_data_files[0], tmp_path / "given", *flags, "--beta", "0.5") == 0
    default, given = first_logged(tmp_path / "default"), first_logged(tmp_path / "given")
    assert given["rewards/chosen"] < -0.1
    assert default["rewards/chosen"] == pytest.approx(4 * given["rewards/chosen"], rel=1e-6)


@pytest.mark.parametrize(
    ("loss_type", "beta"), [("dpo", 0.1), ("cdpo", 0.1), ("ipo", 0.1), ("tdpo2", 0.1), ("tisdpo", 0.1), ("simpo", 2.0)]
)
def test_each_objective_has_its_papers_default_beta(loss_type, beta, tmp_path):
    assert TisdpoConfig(output_dir=str(tmp_path), loss_type=loss_type).beta == beta
    assert TisdpoConfig(output_dir=str(tmp_path), loss_type=loss_type, beta=0.3).beta == 0.3


def test_an_internal_error_is_one_line_unless_debug(monkeypatch, capsys):
    import tisdpo.commands.train as train_command

    def broken(argv: list[str]) -> None:
        raise RuntimeError("expected m1 and m2 to have the same dtype,\n  but got: float != c10::BFloat16")

    monkeypatch.setattr(train_command, "run", broken)
    assert run("train") == 1
    assert capsys.readouterr().err == (
        "tisdpo train: error: RuntimeError: expected m1 and m2 to have the same dtype, but got: float != "
        "c10::BFloat16 (--debug shows the traceback)\n"
    )
    with pytest.raises(RuntimeError, match="same dtype"):
        run("train", "--debug")
