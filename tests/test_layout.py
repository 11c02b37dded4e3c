"""The package's shape, checked: layers that only look down, no import cycle, and no driver
(psycopg, redis) above the bus. Read from the source with ``ast``: what is imported at run
time (inside functions too), not what ``if TYPE_CHECKING:`` imports for annotations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sserelay

PACKAGE = Path(sserelay.__file__).parent
DRIVERS = ("psycopg", "psycopg_pool", "redis")

#: Each module's layer, by the longest matching prefix; a module imports only its own
#: layer or lower ones.
LAYERS = {
    "errors": 0,
    "jitter": 0,
    "wire": 1,
    "core": 2,
    "access": 3,
    "config": 4,
    "bus": 5,
    "http": 6,
    "metrics": 7,
    "admin": 7,
    "relay": 7,
    "workers": 7,
    "asgi": 8,
    "cli": 8,
    "contrib": 8,
    "testing": 8,
    "__init__": 8,
    "__main__": 9,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} has no layer in LAYERS: add it")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(module: str, path: Path) -> set[str]:
    """What ``module`` imports at run time: package modules (dotted, without "sserelay.")
    and top-level names of other packages."""
    tree = ast.parse(path.read_text())
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "__init__":
        package = []
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                found.add(name[len("sserelay.") :] if name.startswith("sserelay.") else name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    candidate = f"{target}.{alias.name}" if target else alias.name
                    found.add(candidate if candidate in ALL else target or "__init__")
            elif node.module:
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


ALL = modules()


@pytest.mark.parametrize("module", sorted(ALL))
def test_layers_only_look_down(module: str) -> None:
    mine = layer(module)
    for imported in runtime_imports(module, ALL[module]):
        if imported in ALL and not imported.startswith(module + "."):
            assert layer(imported) <= mine, f"{module} (layer {mine}) imports {imported}"


@pytest.mark.parametrize("module", sorted(m for m in ALL if not m.startswith("bus")))
def test_no_driver_above_the_bus(module: str) -> None:
    drivers = {
        name for name in runtime_imports(module, ALL[module]) if name.split(".")[0] in DRIVERS
    }
    assert not drivers, f"{module} imports {drivers}: translate at the bus instead"


def test_no_import_cycle() -> None:
    graph = {m: {i for i in runtime_imports(m, p) if i in ALL and i != m} for m, p in ALL.items()}
    state: dict[str, int] = {}

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                # A package's __init__ importing its own modules is not a cycle of layers.
                if not all(c == cycle[0] or c.startswith(cycle[0] + ".") for c in cycle):
                    raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            elif nxt not in state:
                walk(nxt, [*trail, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            walk(module, [module])


@pytest.mark.parametrize("module", sorted(ALL))
def test_every_module_says_what_it_is_for(module: str) -> None:
    tree = ast.parse(ALL[module].read_text())
    if ALL[module].name == "__init__.py" and not tree.body:
        return  # an empty namespace package file
    assert ast.get_docstring(tree), f"{module} has no docstring"
