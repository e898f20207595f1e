"""The library lies below the command line: every import goes down the layer table, never up.

    core -> building blocks -> trainer and evaluation -> the Python API -> pipeline and demo -> the command line

The command line (``tisdpo.cli``, ``tisdpo.commands``) parses flags, calls the library and writes
outputs; nothing else imports it (benchmarks included). Imports are read with ``ast``: at the top of a
module or inside a function, absolute or relative, ``import a.b``, ``from a import b``, and
``importlib.import_module("a.b")`` with a literal name (the reader is shared with the cycle test:
``import_graph.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import KNOWN, PACKAGE, ROOT, imports_of

BENCHMARKS = ROOT / "benchmarks"
COMMAND_LINE = ("tisdpo.cli", "tisdpo.commands", "tisdpo.__main__")

# Lowest first; a module belongs to the entry that names it or its longest enclosing package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "core",
        (
            "tisdpo.version",
            "tisdpo.errors",
            "tisdpo.utils",
            "tisdpo.gguf_names",
            "tisdpo.losses",
            "tisdpo.logprobs",
            "tisdpo.data.collate",  # the batch layout that logprobs reads
        ),
    ),
    (
        "building blocks",
        (
            "tisdpo.config",
            "tisdpo.modeling",
            "tisdpo.data",
            "tisdpo.weights",
            "tisdpo.reference",
            "tisdpo.scoring",
            "tisdpo.report",
            "tisdpo.sparsepo",
            "tisdpo.objectives",
        ),
    ),
    ("trainer and evaluation", ("tisdpo.trainer", "tisdpo.evaluation", "tisdpo.dlma")),
    (
        "Python API",
        (
            "tisdpo",  # the package itself: `from tisdpo import TISDPOTrainer` (and __version__)
            "tisdpo.api",
        ),
    ),
    ("pipeline and demo", ("tisdpo.pipeline", "tisdpo.demo")),
    ("command line", COMMAND_LINE),
]

# Upward imports that are the design, each with its reason.
ALLOWED_UPWARD = {
    ("tisdpo.pipeline.recipe", "tisdpo.cli"): "a stage is a tisdpo command: in-process the pipeline runs it "
    "through the command line's dispatcher, as it runs `python -m tisdpo` under a launcher",
}


def layer_of(module: str) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None  # (prefix length, layer index, layer name)
    for index, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index, name)
    return None if best is None else (best[1], best[2])


def is_command_line(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in COMMAND_LINE)


def test_every_module_has_a_layer():
    missing = [name for name in KNOWN if layer_of(name) is None]
    assert not missing, f"modules without a layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_only_the_command_line_imports_the_command_line():
    offending = [
        found.where()
        for module, path in KNOWN.items()
        if not is_command_line(module)
        for found in imports_of(path, module)
        if found.target.startswith("tisdpo.commands")
    ]
    assert not offending, "the library imports the command line (tisdpo.commands):\n" + "\n".join(offending)


def test_benchmarks_use_the_library_not_the_commands():
    offending = [
        found.where()
        for path in sorted(BENCHMARKS.glob("*.py"))
        for found in imports_of(path)
        if is_command_line(found.target)
    ]
    assert not offending, "benchmarks import the command line instead of the library:\n" + "\n".join(offending)


def test_no_layer_imports_a_higher_one():
    offending = []
    for module, path in KNOWN.items():
        own = layer_of(module)
        for found in imports_of(path, module):
            target = layer_of(found.target) if found.target.split(".")[0] == "tisdpo" else None
            if own is None or target is None or target[0] <= own[0]:
                continue
            if (module, found.target) in ALLOWED_UPWARD:
                continue
            offending.append(f"{found.where()}  ({module}: {own[1]} imports {found.target}: {target[1]})")
    assert not offending, "imports up the layer table:\n" + "\n".join(offending)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from tisdpo.commands import weights\n", "tisdpo.commands.weights"),
        ("from tisdpo.commands.common import load_model\n", "tisdpo.commands"),
        ("import tisdpo.commands.train as train\n", "tisdpo.commands.train"),
        ("def f():\n    from ..commands import train\n", "tisdpo.commands.train"),
        ("def f():\n    from .commands.weights import score_part\n", "tisdpo.commands.weights"),
        ("import importlib\nimportlib.import_module('tisdpo.commands.dlma')\n", "tisdpo.commands.dlma"),
    ],
)
def test_the_checks_see_every_form_of_import(tmp_path, source, expected):
    """The reader resolves relative imports and sees imports inside functions (so the tests above can fail)."""
    folder = tmp_path / "tisdpo" / "pipeline"
    folder.mkdir(parents=True)
    path = folder / "probe.py"
    path.write_text(source)
    module = "tisdpo.pipeline.probe" if ".." in source else "tisdpo.probe"
    found = imports_of(path, module)
    targets = [f.target for f in found]
    assert any(t == expected or t.startswith(expected) for t in targets), targets
    assert layer_of(expected)[1] == "command line"


def test_the_demo_recipe_has_one_source():
    """configs/demo.yaml is the packaged demo recipe (tisdpo/demo/recipe.yaml), copied for people to read
    and run with `tisdpo pipeline --config`; the two must not drift apart."""
    packaged = PACKAGE / "demo" / "recipe.yaml"
    copy = ROOT / "configs" / "demo.yaml"
    assert copy.read_text(encoding="utf-8") == packaged.read_text(encoding="utf-8"), (
        f"{copy.relative_to(ROOT)} differs from {packaged.relative_to(ROOT)}: copy the packaged recipe over it"
    )


def test_the_pipeline_imports_nothing_of_the_demo():
    """The generic pipeline knows the demo's stage kinds only through its registry (tisdpo.pipeline.kinds)."""
    offending = [
        found.where()
        for module, path in KNOWN.items()
        if module.startswith("tisdpo.pipeline")
        for found in imports_of(path, module)
        if found.target == "tisdpo.demo" or found.target.startswith("tisdpo.demo.")
    ]
    assert not offending, "the pipeline imports the demo:\n" + "\n".join(offending)
