"""The layout is the architecture: imports go one way through the layers, no module cycle, no stage
imports another, and no source file outgrows 600 lines. Every import counts, inside functions too."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from schemas.config import PROJECT_ROOT

# Lower layers first. A module may import its own home and lower layers; homes of one layer are peers
# and may not import each other.
LAYERS = (
    ("schemas",),
    ("tools_sandbox",),
    ("tasks", "tasks.core"),
    ("tasks.scoring", "tasks.generation", "tasks.training"),
    ("tasks.bootstrap", "tasks.serving", "tasks.reports"),
    ("tasks.stages",),
    ("flows",),
)
LAYER = {home: rank for rank, homes in enumerate(LAYERS) for home in homes}
PACKAGES = ("schemas", "tools_sandbox", "tasks", "flows")
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (PROJECT_ROOT / package).rglob("*.py")}


def _imported_names(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module name `path` imports anywhere in it (module level, functions, TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a import b` imports module a.b when b is a module, else a name of a
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]  # fmt: skip
        else:
            continue
        found |= set(names)
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports."""
    return {name for name in _imported_names(path, modules) if name in modules}


def _home(module: str) -> str:
    return max((home for home in LAYER if module == home or module.startswith(home + ".")), key=len)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(path, modules) - {module} for module, path in modules.items()}


def test_imports_follow_the_layers() -> None:
    violations = []
    for module, imported in _graph().items():
        for target in imported:
            source_home, target_home = _home(module), _home(target)
            if source_home == target_home:
                continue
            if LAYER[target_home] >= LAYER[source_home]:
                violations.append(f"{module} ({source_home}) imports {target} ({target_home})")
    assert not violations, "imports against the layer order:\n" + "\n".join(sorted(violations))


def test_no_stage_imports_another() -> None:
    stages = [module for module in _graph() if module.startswith("tasks.stages.")]
    graph = _graph()
    crossing = [f"{module} imports {target}" for module in stages for target in graph[module]
                if target.startswith("tasks.stages")]  # fmt: skip
    assert not crossing, crossing
    assert len(stages) >= 9  # one module per stage (and the import of queries)


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = defaultdict(int)  # 0 unvisited, 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state[target] == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif state[target] == 0:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_every_project_import_names_a_module() -> None:
    modules = _modules()
    sources = [*modules.values(), *(PROJECT_ROOT / "benchmarks").glob("*.py"), *(PROJECT_ROOT / "tests").glob("*.py")]
    broken = {
        f"{path.relative_to(PROJECT_ROOT)}: {name}"
        for path in sources
        for name in _imported_names(path, modules)
        if name.split(".")[0] in PACKAGES and name not in modules
    }
    assert not broken, sorted(broken)


def test_the_checks_see_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from tasks.stages import rollout\n    import flows.stage\n")
    assert _imports(source, _modules()) == {"tasks.stages.rollout", "flows.stage"}


def test_no_source_file_over_600_lines() -> None:
    too_long = {
        str(path.relative_to(PROJECT_ROOT)): lines
        for folder in (*PACKAGES, "tests", "benchmarks")
        for path in (PROJECT_ROOT / folder).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, too_long
