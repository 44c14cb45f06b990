"""The layering of docs/ARCHITECTURE.md, checked on every module's imports (parsed with ``ast``).

A room may import only the rooms listed for it (they sit below it); nothing may form a cycle,
between rooms or between modules. A failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room -> the rooms it may import, bottom floor first (docs/ARCHITECTURE.md, "What may import what")
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "storage": {"schemas"},
    "driving": {"schemas"},
    "scenes": {"schemas", "storage", "driving"},
    "manifests": {"schemas", "storage", "scenes"},
    "lmgendrive": {"schemas", "storage", "driving", "scenes"},
    "lmgendrive.train": {"schemas", "storage", "driving", "scenes", "lmgendrive"},
    "qa": {"schemas", "storage", "scenes", "lmgendrive"},
    "closedloop": {"schemas", "storage", "driving", "scenes", "lmgendrive"},
    "workers": {"schemas", "storage", "driving", "scenes", "manifests", "lmgendrive", "qa"},
    "pipeline": {
        "schemas",
        "storage",
        "driving",
        "scenes",
        "manifests",
        "lmgendrive",
        "lmgendrive.train",
        "qa",
        "workers",
        "closedloop",
    },
}
SUBROOMS = ("lmgendrive.train",)


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to, or None for third-party modules."""
    for sub in SUBROOMS:
        if module == sub or module.startswith(sub + "."):
            return sub
    top = module.split(".")[0]
    return top if top in ALLOWED else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``, nested ones too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    )
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base]
        else:
            continue
        found += [(node.lineno, n) for n in names]
    return found


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of a project module in ``path``."""
    return [(line, n) for line, n in imports(path) if room_of(n)]


def source_files() -> list[Path]:
    return sorted(p for top in ALLOWED if "." not in top for p in (ROOT / top).rglob("*.py"))


def test_every_import_points_down():
    bad = []
    for path in source_files():
        own = room_of(module_name(path))
        for line, target in project_imports(path):
            other = room_of(target)
            if other != own and other not in ALLOWED[own]:
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: {own} imports {target} ({other}); "
                    f"{own} may import {sorted(ALLOWED[own]) or 'no project room'}"
                )
    assert not bad, "imports the layering forbids:\n" + "\n".join(bad)


# third-party libraries that one module wraps for the whole project
CONFINED = {
    "tqdm": ("storage/progress.py",),  # without a terminal a bare tqdm bar prints nothing
    "boto3": ("storage/store.py",),
    "botocore": ("storage/store.py",),
}


def test_wrapped_libraries_are_imported_only_by_their_wrapper():
    bad = []
    for path in source_files():
        rel = path.relative_to(ROOT).as_posix()
        for line, name in imports(path):
            owners = CONFINED.get(name.split(".")[0])
            if owners and rel not in owners:
                bad.append(f"{rel}:{line}: imports {name}; use {' or '.join(owners)}")
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("level", ["room", "module"])
def test_no_import_cycles(level):
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    modules = {module_name(p) for p in source_files()}
    for path in source_files():
        src = module_name(path)
        for line, target in project_imports(path):
            while target not in modules and "." in target:  # `from pkg.mod import name`
                target = target.rsplit(".", 1)[0]
            a, b = (room_of(src), room_of(target)) if level == "room" else (src, target)
            if a != b:
                graph.setdefault(a, set()).add(b)
                where.setdefault((a, b), f"{path.relative_to(ROOT)}:{line}")
    cycles = _cycles(graph)
    text = []
    for cycle in cycles:
        edges = [f"  {a} -> {b} ({where[(a, b)]})" for a in cycle for b in cycle if (a, b) in where]
        text.append(" <-> ".join(cycle) + "\n" + "\n".join(edges))
    assert not cycles, f"{level} import cycles:\n" + "\n".join(text)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The checks above can fail: a model module importing the pipeline is caught with its line."""
    fake = ROOT / "lmgendrive" / "_layers_probe.py"
    fake.write_text("import json\n\nfrom pipeline.driver import run_job\n")
    try:
        hits = [
            (line, t)
            for line, t in project_imports(fake)
            if room_of(t) not in ALLOWED["lmgendrive"]
        ]
    finally:
        fake.unlink()
    assert hits == [(3, "pipeline.driver")]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
