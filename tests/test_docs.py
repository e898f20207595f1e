"""The documentation's commands and code stay true: every ``tisdpo`` command line in a shell block of the
README or docs/ names a real subcommand and only flags that its ``--help`` lists; every script it runs
exists; every Python block compiles, and the README's Python example is the file the suite runs
(``examples/p_weights_chat_lora.py``, run by tests/test_api.py)."""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

import pytest

from tisdpo.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
GLOBAL_FLAGS = {"--config", "--debug", "--verbose", "--help"}


def blocks(page: Path, languages: tuple[str, ...]) -> list[str]:
    return [m["body"] for m in BLOCK.finditer(page.read_text(encoding="utf-8")) if m["lang"] in languages]


def shell_lines(body: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and prompts dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip().removeprefix("$ ")
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


INLINE = re.compile(r"`(tisdpo [a-z][^`<>|]*)`")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, the words after ``tisdpo``) of every command line in a shell block or inline code span."""
    found = []
    for page in PAGES:
        inline = INLINE.findall(BLOCK.sub("", page.read_text(encoding="utf-8")))
        for body in [*blocks(page, ("bash", "sh", "")), *inline]:
            for line in shell_lines(body):
                words = shlex.split(line)
                for start, word in enumerate(words):  # also after `accelerate launch ... -m tisdpo.cli`
                    if word in ("tisdpo", "tisdpo.cli") or word.endswith("/tisdpo"):
                        found.append((f"{page.name}: {line}", words[start + 1 :]))
                        break
    return found


@functools.cache
def help_text(command: tuple[str, ...]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*command, "--help"])
    return out.getvalue()


def test_the_docs_name_commands():
    assert len(documented_commands()) >= 60


@pytest.mark.parametrize("where,words", documented_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_documented_command_line_uses_real_flags(where, words):
    assert words and words[0] in SUBCOMMANDS, f"{where}: unknown command"
    command = tuple(words[:2]) if words[0] == "dlma" else (words[0],)
    if words[0] == "demo" and "--real" in words:
        command = ("demo", "--real")
    text = help_text(command)
    assert text.strip(), f"{where}: `tisdpo {' '.join(command)} --help` printed nothing"
    for word in words:
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag not in GLOBAL_FLAGS and "STUDY" not in flag:
            assert re.search(rf"{re.escape(flag)}\b", text), f"{where}: {flag} is not a flag of tisdpo {command[0]}"


def test_every_documented_script_exists():
    scripts = set()
    for page in PAGES:
        for body in blocks(page, ("bash", "sh", "")):
            scripts |= set(re.findall(r"(?:bash|python) ((?:scripts|benchmarks|examples)/[\w./-]+)", body))
    assert scripts, "no script is documented"
    missing = sorted(s for s in scripts if not (ROOT / s).exists())
    assert not missing, f"documented but missing: {missing}"


def test_every_python_block_compiles():
    for page in PAGES:
        for number, body in enumerate(blocks(page, ("python",))):
            try:
                ast.parse(body)
            except SyntaxError as err:
                pytest.fail(f"{page.name}, Python block {number + 1}: {err}")


def test_the_readme_python_example_is_the_tested_example():
    (readme_example,) = blocks(ROOT / "README.md", ("python",))
    example = (ROOT / "examples" / "p_weights_chat_lora.py").read_text(encoding="utf-8")
    assert readme_example.strip() in example, "README's Python block must be examples/p_weights_chat_lora.py's body"
