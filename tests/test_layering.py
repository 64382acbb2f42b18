"""The package's layering, read from the source (no imports run): no import cycles between modules, and no library
module imports the command line. Imports inside functions count too: a lazy import hides a cycle, it does not
remove it."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_graph(src: Path = SRC) -> dict[str, set[str]]:
    """{module: the pocketdiff modules it imports}. `from pkg import name` points at pkg.name when that is a module,
    else at pkg; an import of a package's submodule does not count as importing the package's __init__."""
    files = {}
    for path in (src / "pocketdiff").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, (path, is_pkg) in files.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else resolve(base))
        graph[mod] = {t for t in targets if t and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


def test_the_checks_see_a_cycle_and_a_cli_import(tmp_path):
    pkg = tmp_path / "pocketdiff"
    (pkg / "cli").mkdir(parents=True)
    for name, text in {"__init__.py": "", "cli/__init__.py": "", "a.py": "def f():\n    from pocketdiff import b\n",
                       "b.py": "from .a import f\n", "c.py": "import pocketdiff.cli\n"}.items():
        (pkg / name).write_text(text)
    graph = module_graph(tmp_path)
    assert cycles(graph) == [["pocketdiff.a", "pocketdiff.b"]]
    assert "pocketdiff.cli" in graph["pocketdiff.c"]


def test_no_import_cycles():
    graph = module_graph()
    assert len(graph) > 50 and "pocketdiff.training.stages.teacher" in graph  # it read the package
    assert cycles(graph) == []


def test_no_library_module_imports_the_cli():
    offenders = {mod: sorted(t for t in deps if t.startswith("pocketdiff.cli"))
                 for mod, deps in module_graph().items() if not mod.startswith("pocketdiff.cli")}
    assert {mod: deps for mod, deps in offenders.items() if deps} == {}


def test_stages_do_not_import_each_other():
    """Every stage builds on the shared modules (pocketdiff.diffusion, pocketdiff.models, training.monitor, ...)."""
    graph = module_graph()
    stages = {m for m in graph if m.startswith("pocketdiff.training.stages.")}
    assert {m: sorted(graph[m] & stages) for m in stages if graph[m] & stages} == {}
