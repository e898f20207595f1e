"""An objective is one registry entry and a loss function: a toy objective added here trains and evaluates
through the command line with nothing else touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import NO_TQDM, QUIET_FLAGS, evaluate, log_history, toy_pairs, train_argv, write_jsonl
from conftest import run_cli as run

from tisdpo import losses
from tisdpo.objectives import OBJECTIVES, Objective, ObjectiveOutput, PairBatch, register

COMMON = ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", *QUIET_FLAGS, *NO_TQDM]
COMMON += ["--beta", "0.5"]


def doubled_dpo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> losses.PairLoss:
    """``2 * DPO``: ``loss = -2 log sigmoid(beta * u)``."""
    dpo = losses.dpo_loss(chosen_logratios, rejected_logratios, beta)
    return dpo._replace(losses=2 * dpo.losses)


def doubled_dpo(batch: PairBatch) -> ObjectiveOutput:
    chosen, rejected = batch.logratios
    loss = doubled_dpo_loss(chosen, rejected, batch.args.beta)
    return ObjectiveOutput(loss, {"toy/margin_sign": (torch.sign(chosen - rejected).detach(), None)})


@pytest.fixture
def toy_objective():
    entry = register(Objective("doubled_dpo", "twice the DPO loss (a test objective)", doubled_dpo))
    yield entry
    del OBJECTIVES[entry.name]


def test_a_registered_objective_trains_and_evaluates(toy_objective, tiny_model_dir, tmp_path: Path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(16, seed=3))
    trained = tmp_path / "toy"
    flags = ["--loss_type", "doubled_dpo", "--max_steps", "3", "--learning_rate", "0.01", "--logging_steps", "1"]
    assert run(*train_argv(tiny_model_dir, data, trained, *COMMON, *flags)) == 0
    logged = log_history(trained, "loss")
    assert len(logged) == 3 and all("toy/margin_sign" in entry and "rewards/margins" in entry for entry in logged)
    assert logged[0]["loss"] == pytest.approx(2 * 0.6931472, abs=1e-4)  # the policy starts at its reference

    results = {}
    for loss_type in ("doubled_dpo", "dpo"):
        out = tmp_path / f"eval-{loss_type}"
        results[loss_type] = evaluate(trained, tiny_model_dir, data, out, *COMMON, "--loss_type", loss_type)
    toy, dpo = results["doubled_dpo"], results["dpo"]
    assert abs(dpo["eval_loss"] - 0.6931472) > 1e-3  # the trained policy is away from its reference
    assert toy["eval_loss"] == pytest.approx(2 * dpo["eval_loss"], rel=1e-5)
    assert toy["eval_rewards/margins"] == pytest.approx(dpo["eval_rewards/margins"], rel=1e-5)


def test_an_unknown_objective_names_the_registered_ones(toy_objective, tiny_model_dir, tmp_path: Path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(4))
    assert run(*train_argv(tiny_model_dir, data, tmp_path / "o", *COMMON, "--loss_type", "doubled_dop")) == 1
    assert "did you mean 'doubled_dpo'" in capsys.readouterr().err
