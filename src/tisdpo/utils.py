"""Small shared helpers: atomic writes, JSON output, fingerprints of inputs, and the libraries' console output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    A kill mid-write leaves the old file (or none), never a truncated one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide outputs from other users
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str, data: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def file_identity(path: str) -> Any:
    """What a fingerprint should know of an input: size and modification time of a local file, else the name."""
    if os.path.isfile(path):
        stat = os.stat(path)
        return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return path


def digest(payload: Any, length: int = 16, chunks: Iterable[bytes] = ()) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``payload`` as JSON (keys sorted, ``str()`` of
    what JSON cannot hold), then of the raw ``chunks`` (token ids, tensors): the hash of every fingerprint."""
    hasher = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()[:length]


_verbose = False


def is_verbose() -> bool:
    """Whether the running command was given ``--verbose`` (see :func:`library_output`)."""
    return _verbose


@contextlib.contextmanager
def library_output(verbose: bool) -> Iterator[None]:
    """The console of one command: with ``verbose`` the libraries speak as they like (and
    :func:`quiet_libraries` does nothing); without it their per-model progress bars are off.

    A command that has not imported transformers by the time it starts loads no model (``tisdpo
    compare``): it is left alone, which spares it importing the libraries only to quiet them."""
    global _verbose
    saved = _verbose
    _verbose = verbose
    quiet = not verbose and "transformers" in sys.modules
    try:
        with quiet_libraries() if quiet else contextlib.nullcontext():
            yield
    finally:
        _verbose = saved


@contextlib.contextmanager
def quiet_libraries(logs: bool = False) -> Iterator[None]:
    """Turn off the progress bars of transformers, huggingface_hub and datasets ("Loading weights",
    "Writing model shards", downloads, ``map``), which repeat for every model a command loads or saves;
    with ``logs`` also their warnings and this package's INFO lines (the pipeline prints its own
    stage lines instead). Everything is restored afterwards; nothing changes under ``--verbose``."""
    if _verbose:
        yield
        return
    import datasets
    import transformers

    hf_logging = transformers.utils.logging
    ours = logging.getLogger("tisdpo")
    saved = (
        hf_logging.is_progress_bar_enabled(),
        datasets.is_progress_bar_enabled(),
        hf_logging.get_verbosity(),
        datasets.logging.get_verbosity(),
        ours.level,
    )
    hf_logging.disable_progress_bar()  # transformers' bars and huggingface_hub's
    datasets.disable_progress_bars()
    if logs:
        hf_logging.set_verbosity_error()
        datasets.logging.set_verbosity_error()
        ours.setLevel(logging.WARNING)
    try:
        yield
    finally:
        if saved[0]:
            hf_logging.enable_progress_bar()
        if saved[1]:
            datasets.enable_progress_bars()
        hf_logging.set_verbosity(saved[2])
        datasets.logging.set_verbosity(saved[3])
        ours.setLevel(saved[4])
