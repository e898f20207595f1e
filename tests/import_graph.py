"""Read the imports of ``tisdpo``'s modules with ``ast``, for the structure tests (layers and cycles).

Every import counts, wherever it is: at the top of a module or inside a function, absolute or relative,
``import a.b``, ``from a import b`` (resolved to the submodule ``a.b`` when ``b`` is one), and
``importlib.import_module("a.b")`` with a literal name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tisdpo"


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    module: str  # the importing module
    target: str  # the imported module (a tisdpo module when the name is one)
    text: str  # the import as written

    def where(self) -> str:
        shown = self.file.relative_to(ROOT) if self.file.is_relative_to(ROOT) else self.file
        return f"{shown}:{self.line}: {self.text}"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its ``__init__.py``)."""
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


KNOWN = package_modules()


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name of a ``from ... import`` statement's module."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_import_module_call(node: ast.AST) -> bool:
    """``importlib.import_module("a.b")`` or ``import_module("a.b")`` with a literal name."""
    return (
        isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
        )
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def imports_of(path: Path, module: str | None = None, known: dict[str, Path] = KNOWN) -> list[Import]:
    """Every import in the file, wherever it is, with what it names (``known``: the modules a name may be)."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    found = []
    lines = text.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            source = lines[node.lineno - 1].strip()
            found += [Import(path, node.lineno, module or "", alias.name, source) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = lines[node.lineno - 1].strip()
            base = resolve(module or "", path.name == "__init__.py", node) if module else (node.module or "")
            for alias in node.names:
                child = f"{base}.{alias.name}" if base else alias.name
                target = child if child in known else base
                found.append(Import(path, node.lineno, module or "", target, source))
        elif is_import_module_call(node):
            source = lines[node.lineno - 1].strip()
            found.append(Import(path, node.lineno, module or "", node.args[0].value, source))
    return found
