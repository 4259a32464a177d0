"""The package layout's rules, checked on the source: no import circles between the project's
modules (lazy imports inside functions count too), and the core ``rlvr`` package never imports
a built-in environment (they are plugins, found through entry points like anyone's)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlvr", "environments", "reward_models")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body (``from a import b`` counts
    as importing ``a.b`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_checker_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_does_not_import_builtin_environments():
    offenders = {m: sorted(t for t in targets if t.startswith("environments"))
                 for m, targets in graph().items() if m.startswith("rlvr")}
    assert {m: t for m, t in offenders.items() if t} == {}


# Layers that must not reach up: offline scoring runs without the trainer, and the data layer
# (reading rows into prompts) without the scorer.
BOUNDARIES = [("rlvr.scoring", "rlvr.training"), ("rlvr.data", "rlvr.scoring"), ("rlvr.data", "rlvr.training")]


def reaches(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for w in edges.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_lower_layers_do_not_import_higher_ones():
    edges = graph()
    crossings = {}
    for lower, higher in BOUNDARIES:
        for module in edges:
            if module == lower or module.startswith(lower + "."):
                bad = sorted(m for m in reaches(edges, module) if m == higher or m.startswith(higher + "."))
                if bad:
                    crossings[module] = bad
    assert crossings == {}


def test_the_boundary_checker_sees_an_indirect_crossing():
    assert reaches({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == {"b", "c"}
