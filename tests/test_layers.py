"""The package's import graph: no cycle, and no module importing a layer above its own.

Every ``import`` counts, module-level or inside a function: a lazy import only postpones a
dependency, it does not remove it.
"""

import ast
from pathlib import Path

import qmixprune

ROOT = Path(qmixprune.__file__).parent

# Bottom to top; a module may import its own layer and those below it.
LAYERS = (
    (
        "base",
        (
            "errors",
            "files",
            "rounding",
            "seeding",
            "progress",
            "config",
            "inputs",
            "device",
            "native",
            "ops",
            "distributed",
        ),
    ),
    (
        "model",
        (
            "models",
            "data",
            "flops",
            "graph",
            "importance",
            "pruning",
            "budget",
            "latency",
            "train",
            "serialize",
        ),
    ),
    ("stages", ("search", "distill", "deploy")),
    ("run", ("run",)),
    ("front", ("cli", "demo", "configdoc", "__main__")),
)


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"qmixprune.{module} is in no layer of tests/test_layers.py")


def _imports(path: Path) -> set[str]:
    """The qmixprune modules ``path`` imports (relative imports resolved)."""
    name = _name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # from .pkg import name: name may be a module of pkg (else it is trimmed below)
            found |= {f"{target}.{a.name}".lstrip(".") for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qmixprune."):
            target = node.module.removeprefix("qmixprune.")
            found |= {f"{target}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("qmixprune.")
                for a in node.names
                if a.name.startswith("qmixprune.")
            }
    return {m for m in found if m and not m.startswith("_C")}


def _graph() -> dict[str, set[str]]:
    modules = {_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for dep in _imports(path):
            while dep not in modules and "." in dep:  # from .pkg import name (not a module)
                dep = dep.rsplit(".", 1)[0]
            if dep in modules and dep != name:
                deps.add(dep)
        graph[name] = deps
    return graph


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, deps in _graph().items()
        if m != "__init__"  # the public API: lazy names from every layer
        for d in deps
        if d != "__init__" and _layer(d) > _layer(m)
    ]
    assert not upward, upward


def test_no_import_cycle():
    graph = {m: {d for d in deps if d != "__init__"} for m, deps in _graph().items()}
    # a package imports its submodules in its __init__; a submodule importing a sibling
    # through the package is the same edge, so packages stand for themselves only
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_layer_table_knows_every_module():
    for name in _graph():
        if name != "__init__":
            _layer(name)


def test_no_private_name_is_imported_across_modules():
    """A name starting with _ is its module's own (the compiled _C extensions aside)."""
    found = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("qmixprune")
            ):
                found += [
                    f"{_name(path)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                    and not a.name.startswith("__")
                    and a.name not in ("_C", "_C_cuda")
                ]
    assert not found, found
