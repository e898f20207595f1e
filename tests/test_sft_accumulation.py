"""One optimizer step is the same however its batch is split: the loss is the mean over the whole step's
items (completion tokens for sft, pairs otherwise), not a mean of micro-batch means."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import NO_TQDM, QUIET_FLAGS, run_ok, train_argv, write_jsonl
from safetensors.torch import load_file

FLAGS = [
    "--optim",
    "sgd",
    "--learning_rate",
    "1",
    "--lr_scheduler_type",
    "constant",
    "--max_grad_norm",
    "0",  # no clipping: it would hide part of a wrong gradient
    "--max_steps",
    "1",
    *QUIET_FLAGS,
    *NO_TQDM,
]


def uneven_pairs(count: int) -> list[dict[str, str]]:
    """Pairs whose completions have very different lengths: one long chosen response, the rest one word."""
    rows = []
    for index in range(count):
        words = 30 if index == count - 1 else 1
        rows.append(
            {
                "prompt": f"\n\nHuman: tell me about the item {index}\n\nAssistant:",
                "chosen": " " + " ".join(["safe", "kind", "the"][k % 3] for k in range(words)),
                "rejected": " " + " ".join(["rude", "harm"][k % 2] for k in range(index + 1)),
            }
        )
    return rows


def update(start: dict, end: dict) -> torch.Tensor:
    return torch.cat([(end[name] - start[name]).flatten() for name in sorted(start)])


def train_once(model_dir: str, data: Path, out: Path, loss_type: str, batch: int, accumulation: int) -> dict:
    flags = ["--loss_type", loss_type, "--per_device_train_batch_size", batch]
    flags += ["--gradient_accumulation_steps", accumulation]
    run_ok(*train_argv(model_dir, data, out, *flags, *FLAGS))
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize(
    ("loss_type", "pairs"),
    [
        ("sft", 8),  # two micro-batches of 4 pairs with very different numbers of completion tokens
        ("dpo", 6),  # micro-batches of 4 and 2 pairs
    ],
)
def test_one_step_is_the_same_with_gradient_accumulation(tiny_model_dir, tmp_path, loss_type, pairs):
    data = write_jsonl(tmp_path / "uneven.jsonl", uneven_pairs(pairs))
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    whole = train_once(tiny_model_dir, data, tmp_path / "whole", loss_type, batch=8, accumulation=1)
    split = train_once(tiny_model_dir, data, tmp_path / "split", loss_type, batch=4, accumulation=2)
    whole_update, split_update = update(start, whole), update(start, split)
    assert whole_update.norm() > 1e-2  # the step moved the weights
    relative = (whole_update - split_update).norm() / whole_update.norm()
    assert relative < 1e-4, f"updates differ by {relative:.2%}"
