"""The package's import structure: no circles, and every room imports only rooms before it.

Imports are read with ``ast`` from the source, not by importing: runtime imports, imports
inside functions and imports under ``TYPE_CHECKING`` all count, because a circle hidden
behind any of them still ties two modules together for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "ctbench"

# The flow, first room first (DESIGN §3, with scoring before training: the engine scores
# rollouts, so training imports scoring). "base" holds the modules every room may use.
ROOMS = ["base", "tracks", "strategies", "scoring", "training", "runs", "results", "cli"]
BASE_MODULES = {"ctbench", "ctbench.errors", "ctbench.strategy"}


def module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package_dir: Path) -> dict[str, Path]:
    return {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every ctbench module ``path`` imports, wherever the import statement stands.

    ``from ctbench.x import y`` counts as importing ``ctbench.x.y`` when that is a module
    (a submodule import), else ``ctbench.x``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif node.module in known:
                    found.add(node.module)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = package_modules(package_dir)
    known = set(modules)
    return {name: imported_modules(path, known) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def room_of(module: str) -> str:
    if module in BASE_MODULES or module.startswith("ctbench.common"):
        return "base"
    if module in ("ctbench.cli", "ctbench.__main__"):
        return "cli"
    return module.split(".")[1]


def test_the_package_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph(PACKAGE_DIR))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_module_belongs_to_a_room() -> None:
    strays = [m for m in package_modules(PACKAGE_DIR) if room_of(m) not in ROOMS]
    assert strays == [], f"modules outside the rooms of the flow: {strays}"


def test_each_room_imports_only_rooms_before_it() -> None:
    back_edges = []
    for module, targets in import_graph(PACKAGE_DIR).items():
        rank = ROOMS.index(room_of(module))
        for target in targets:
            if room_of(target) != room_of(module) and ROOMS.index(room_of(target)) > rank:
                back_edges.append(f"{module} -> {target}")
    assert back_edges == [], "imports against the flow:\n" + "\n".join(sorted(back_edges))


def test_the_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself: a circle through a TYPE_CHECKING import and a function-local one
    is found, and a clean package passes (so the tests above can fail)."""
    package = tmp_path / "ctbench"
    (package / "room").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "room" / "__init__.py").write_text("")
    (package / "room" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ctbench.room.b import B\n"
    )
    (package / "room" / "b.py").write_text("def f():\n    from ctbench.room import a\n")
    assert find_cycle(import_graph(package)) in (
        ["ctbench.room.a", "ctbench.room.b", "ctbench.room.a"],
        ["ctbench.room.b", "ctbench.room.a", "ctbench.room.b"],
    )
    (package / "room" / "b.py").write_text("import json\n")
    assert find_cycle(import_graph(package)) is None


@pytest.mark.parametrize("room", [r for r in ROOMS if r not in ("base", "cli")])
def test_each_room_says_what_it_is_for(room: str) -> None:
    init = PACKAGE_DIR / room / "__init__.py"
    tree = ast.parse(init.read_text())
    assert ast.get_docstring(tree), f"{init} needs a docstring saying what the room is for"
    # No re-export maze: a room's __init__ holds its docstring and nothing else.
    assert all(isinstance(node, ast.Expr) for node in tree.body), f"{init} should only document"
