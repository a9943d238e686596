"""docs/architecture.md's module map against the package: every module under mt3/ is in its "Layout" map, and the mt3
modules import one another without a circle at module level (the imports that run when a module is imported)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "mt3"


def _layout_map() -> str:
    """The code block of the "## Layout" section."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def test_every_module_is_in_the_layout_map():
    layout = _layout_map()
    missing = []
    for path in _modules().values():
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py":  # a package: its folder is named (mt3/ itself for the top level)
            entry = f"{relative.parent.as_posix()}/" if relative.parent.parts else "mt3/"
        else:
            entry = relative.as_posix()  # subpackage modules by their path: training/train.py, commands/train.py
        if not re.search(rf"(^|\s){re.escape(entry)}(\s|$)", layout, re.M):
            missing.append(entry)
    assert not missing, f"modules missing from docs/architecture.md's Layout map: {missing}"


def _module_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The mt3 modules `path` imports when it is imported: top-level statements (and those in top-level try / if
    blocks), not function bodies and not `if TYPE_CHECKING:`."""
    found: set[str] = set()

    def visit(statements) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.If | ast.Try | ast.With):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, block, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from mt3.training import train` imports the module mt3.training.train
                    found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                              else node.module)

    visit(ast.parse(path.read_text()).body)
    return {name for name in found if name in modules}


def test_no_import_circle_among_mt3_modules():
    modules = _modules()
    graph = {name: _module_level_imports(path, modules) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (circle := visit(dep)):
                return circle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            circle = visit(name)
            assert circle is None, "import circle: " + " -> ".join(circle)
    # the graph is real: the loop imports its stage's modules, and nothing in the package imports the commands
    assert {"mt3.training.checkpoints", "mt3.training.input_pipeline"} <= graph["mt3.training.train"]
    assert not any(dep.startswith("mt3.commands.") for name, deps in graph.items()
                   if not name.startswith("mt3.commands") for dep in deps)


def test_a_circle_would_be_found(tmp_path):
    """The checker itself: two modules importing each other at module level are reported."""
    (tmp_path / "a.py").write_text("from mt3 import b\n")
    (tmp_path / "b.py").write_text("import mt3.a\n\ndef f():\n    from mt3 import c\n")
    modules = {"mt3.a": tmp_path / "a.py", "mt3.b": tmp_path / "b.py", "mt3.c": tmp_path / "a.py"}
    assert _module_level_imports(tmp_path / "a.py", modules) == {"mt3.b"}
    assert _module_level_imports(tmp_path / "b.py", modules) == {"mt3.a"}  # mt3.c: inside a function
