"""No import cycle inside ``tisdpo``: the graph of its modules' imports (read with ``ast`` by
``import_graph.py``, imports inside functions and ``TYPE_CHECKING`` blocks included) has no circle.

A cycle makes the order of imports matter and hides which module owns what; the usual ways out are
moving the shared helper down to a module both can import, or a registry the higher module fills.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from import_graph import KNOWN, Import, imports_of, package_modules

Graph = dict[str, dict[str, Import]]  # module -> imported module -> the first import that names it


def import_graph(modules: dict[str, Path]) -> Graph:
    """The package's modules and, for each, the modules of the package it imports (itself left out)."""
    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, Import] = {}
        for found in imports_of(path, module, modules):
            if found.target in modules and found.target != module:
                edges.setdefault(found.target, found)
        graph[module] = edges
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted, in name order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def shortest_cycle(graph: Graph, component: list[str]) -> list[str]:
    """A shortest circle through the component's first module, staying inside the component."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node]):
            if target not in members:
                continue
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"no cycle through {start} in {component}")


def describe_cycles(graph: Graph) -> list[str]:
    """One paragraph per cycle: its modules, then each import along one shortest circle."""
    paragraphs = []
    for component in strongly_connected(graph):
        circle = shortest_cycle(graph, component)
        steps = [f"    {graph[a][b].where()}" for a, b in zip(circle, circle[1:], strict=False)]
        paragraphs.append(" -> ".join(circle) + "\n" + "\n".join(steps))
    return paragraphs


def test_tisdpo_has_no_import_cycle():
    cycles = describe_cycles(import_graph(KNOWN))
    assert not cycles, f"{len(cycles)} import cycle(s) inside tisdpo:\n" + "\n".join(cycles)


def test_the_check_finds_a_cycle_through_a_function_import_and_a_submodule(tmp_path):
    """A cycle hidden in a function, through ``from pkg import submodule`` and a relative import, is found
    and named (so the test above can fail)."""
    package = tmp_path / "tisdpo"
    (package / "config").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "config" / "__init__.py").write_text("from tisdpo.config import training\n")
    (package / "config" / "training.py").write_text("def f():\n    from ..modeling import join\n")
    (package / "modeling.py").write_text("from tisdpo import config\njoin = 1\n")
    (package / "leaf.py").write_text("import tisdpo.modeling\n")
    cycles = describe_cycles(import_graph(package_modules(package)))
    assert len(cycles) == 1, cycles
    assert cycles[0].splitlines()[0] == "tisdpo.config -> tisdpo.config.training -> tisdpo.modeling -> tisdpo.config"
