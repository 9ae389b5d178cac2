"""The import graph of svgt/ and flows/, read from the source (imports inside functions included):
no cycles, and every dvc.yaml stage depends on all the code its `svgt <step>` runs."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def module_files() -> dict[str, Path]:
    files = {}
    for path in [*(ROOT / "svgt").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _resolve(name: str, files: dict[str, Path]) -> str | None:
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def imported_by(node: ast.AST, module: str, files: dict[str, Path], parents: bool = False) -> set[str]:
    """Project modules that the code under ``node`` imports (``parents``: with the packages whose ``__init__``
    that runs, which matters for what code runs but is no cycle: a package's ``__init__`` may import its parts)."""
    is_package = files[module].name == "__init__.py"
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                package = module.split(".")[: len(module.split(".")) - n.level + is_package]
                base = ".".join([*package, base] if base else package)
            targets = [base, *(f"{base}.{a.name}" for a in n.names)]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, files)
            while resolved:  # importing a.b.c also runs a/__init__ and a/b/__init__
                found.add(resolved)
                resolved = _resolve(resolved.rpartition(".")[0], files) if parents else None
    return found - {module}


def import_graph(parents: bool = False) -> dict[str, set[str]]:
    files = module_files()
    return {m: imported_by(ast.parse(p.read_text(encoding="utf-8")), m, files, parents) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def closure(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def step_code(step: str, graph: dict[str, set[str]]) -> set[Path]:
    """The files `svgt <step>` runs: the CLI, what its ``cmd_<step>`` and the CLI's top level import, and
    everything those import (``graph`` with parents)."""
    files = module_files()
    cli = ast.parse(files["svgt.cli"].read_text(encoding="utf-8"))
    command = next(n for n in cli.body if isinstance(n, ast.FunctionDef) and n.name == f"cmd_{step}")
    top_level = ast.Module([n for n in cli.body if isinstance(n, ast.Import | ast.ImportFrom)], [])
    start = imported_by(command, "svgt.cli", files, True) | imported_by(top_level, "svgt.cli", files, True)
    return {files[m].relative_to(ROOT) for m in closure(start, graph)} | {files["svgt.cli"].relative_to(ROOT)}


def test_no_import_cycles_in_svgt_or_flows():
    graph = import_graph()
    assert "svgt.core.io" in graph["svgt.extract.shards"]  # the walk sees imports (guards the reader itself)
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle_hidden_in_a_function():
    files = {"a": Path("a/__init__.py"), "a.x": Path("a/x.py"), "a.y": Path("a/y.py")}
    x = ast.parse("import a.y\n")
    y = ast.parse("def f():\n    from a.x import thing\n")
    graph = {"a": set(), "a.x": imported_by(x, "a.x", files), "a.y": imported_by(y, "a.y", files)}
    assert cycles(graph) == [["a.x", "a.y"]]


def test_every_dvc_stage_depends_on_the_code_it_runs():
    graph = import_graph(parents=True)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    missing = {}
    for name, stage in stages.items():
        step = shlex.split(stage["cmd"])[1]
        deps = [Path(d) for d in stage.get("deps", [])]
        uncovered = sorted(str(f) for f in step_code(step, graph)
                           if not any(f == d or d in f.parents for d in deps))
        if uncovered:
            missing[name] = uncovered
    assert missing == {}, f"dvc.yaml stages miss code they run (add the package or file to deps): {missing}"
