"""How a model that lives in a GGUF file is named: the path of its ``.gguf`` file.

Pure string helpers, below both the configuration (which joins ``--gguf_file`` onto the model's folder)
and the loader (which splits the path back into what ``from_pretrained`` takes).
"""

from __future__ import annotations

import os

GGUF_SUFFIX = ".gguf"


def is_gguf(name_or_path: str) -> bool:
    return name_or_path.lower().endswith(GGUF_SUFFIX)


def join_gguf(name_or_path: str | None, gguf_file: str | None) -> str | None:
    """One name for a model that lives in a GGUF file: the file's path (``--model_name_or_path FOLDER
    --gguf_file NAME`` becomes ``FOLDER/NAME``); a name that is already a ``.gguf`` path stays as it is."""
    if not gguf_file or name_or_path is None or is_gguf(name_or_path):
        return name_or_path
    return os.path.join(name_or_path, gguf_file)


def split_gguf(name_or_path: str) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None), as ``from_pretrained(folder, gguf_file=name)`` takes them."""
    if not is_gguf(name_or_path):
        return name_or_path, None
    folder, name = os.path.split(name_or_path)
    return folder or ".", name
