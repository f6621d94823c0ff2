"""The code's layout: which module may import which.

Read from the source (every import, those inside functions too), not from what happens
to be imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("reinstatement", "flows", "tasks", "deployments", "commands")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (anywhere in its source)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycle_among_the_projects_modules() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The store layer: the one place that knows which database it talks to. Settings may check
# that a URL names a database the pipeline supports; nothing else above the store asks.
STORE_LAYER = ("reinstatement/store/", "reinstatement/migrations/")
URL_CHECKS = ("reinstatement/settings.py",)
DIALECT_NAMES = {"postgresql", "sqlite"}


def dialect_questions(path: Path) -> list[str]:
    """Where a module reads a dialect's name (`x.dialect.name`) or compares with one."""
    found = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Attribute) and node.attr == "name"
                and isinstance(node.value, ast.Attribute) and node.value.attr == "dialect"):
            found.append(f"{where}:{node.lineno} reads dialect.name")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in DIALECT_NAMES for o in operands):
                found.append(f"{where}:{node.lineno} compares with a "
                             "dialect's name")
    return found


def test_only_the_store_layer_knows_the_database_dialect() -> None:
    outside = [
        question
        for path in _modules().values()
        if not str(path.relative_to(ROOT)).startswith(STORE_LAYER)
        and str(path.relative_to(ROOT)) not in URL_CHECKS
        for question in dialect_questions(path)
    ]
    assert outside == []


def test_the_dialect_check_finds_a_question(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text('def f(conn):\n    return conn.dialect.name == "postgresql"\n'
                      'def g(name):\n    return name == "sqlite"\n')
    assert len(dialect_questions(module)) == 3


# The layers, top first: a module imports its own layer and those below it, never above.
LAYERS = ("commands", "deployments", "flows", "tasks", "reinstatement")
ORCHESTRATION = ("commands", "deployments", "flows", "tasks")


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} imports {target}" for name, targets in graph.items()
                  for target in targets if _layer(target) < _layer(name))


def prefect_imports() -> list[str]:
    """Modules outside the orchestration layer that import Prefect (anywhere in them)."""
    found = []
    for name, path in _modules().items():
        if name.split(".")[0] in ORCHESTRATION:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom)
                        and not node.level else [])
            if any(target.split(".")[0] == "prefect" for target in imported):
                found.append(f"{name}:{node.lineno}")
    return found


def test_nothing_imports_a_layer_above_its_own() -> None:
    assert upward_imports(import_graph()) == []


def test_the_layer_check_finds_an_upward_import() -> None:
    graph = {"reinstatement.x": {"flows.y"}, "flows.y": {"reinstatement.x"}}
    assert upward_imports(graph) == ["reinstatement.x imports flows.y"]


def test_only_the_orchestration_layer_imports_prefect() -> None:
    assert prefect_imports() == []


SETTINGS_HOME = "reinstatement/resources.py"  # the one place a process reads its settings


def settings_reads(path: Path) -> list[str]:
    """Where a module reads the settings from the environment itself (`load_settings()`)
    instead of taking them from the process's resources."""
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return [f"{where}:{node.lineno} calls load_settings()"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and (
                getattr(node.func, "id", None) == "load_settings"
                or getattr(node.func, "attr", None) == "load_settings")]


def test_a_process_reads_its_settings_in_one_place() -> None:
    """Every flow, task, command and deployment takes the settings from the process's
    resources, which read them once (a command reads them again at its start)."""
    elsewhere = [read for path in _modules().values()
                 if str(path.relative_to(ROOT)) != SETTINGS_HOME
                 for read in settings_reads(path)]
    assert elsewhere == []


def test_the_settings_check_finds_a_read(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from reinstatement import settings\nx = settings.load_settings()\n"
                      "def f():\n    return load_settings().alert_block\n")
    assert settings_reads(module) == ["m.py:2 calls load_settings()",
                                      "m.py:4 calls load_settings()"]


# The domain that is plain Python: the rules, read and changed without a database or
# Prefect (a plan's entries and digest, an incident's states and the moves allowed among
# them). The rest of reinstatement/ (planning, claims, facts, verify, restore, the outbox,
# reports, plan_records, lifecycle's transitions) runs the rules against the database
# through SQLAlchemy Core.
PLAIN_DOMAIN = ("reinstatement.conditions", "reinstatement.verdicts", "reinstatement.states",
                "reinstatement.incident_request", "reinstatement.incident_states",
                "reinstatement.plans", "reinstatement.wording",
                "reinstatement.markdown", "reinstatement.errors", "reinstatement.notices",
                "reinstatement.detection_model", "reinstatement.detection_suspects")
NOT_IN_THE_DOMAIN = {"sqlalchemy", "psycopg", "prefect", "alembic"}


def third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def impure_domain(graph: dict[str, set[str]], modules: dict[str, Path]) -> list[str]:
    """Each plain-domain module that reaches (itself or through what it imports)
    SQLAlchemy, a database driver, Alembic or Prefect, with the module that imports it."""
    found = []
    for name in sorted(modules):
        if not name.startswith(PLAIN_DOMAIN):
            continue
        seen, todo = {name}, [name]
        while todo:
            module = todo.pop()
            bad = third_party_imports(modules[module]) & NOT_IN_THE_DOMAIN
            found += [f"{name} reaches {b} through {module}" for b in sorted(bad)]
            todo += [t for t in graph[module] if t not in seen and not seen.add(t)]
    return found


def test_the_domains_rules_are_plain_python() -> None:
    assert impure_domain(import_graph(), _modules()) == []


def test_the_domain_check_finds_a_database_import(tmp_path: Path) -> None:
    rule, helper = tmp_path / "rule.py", tmp_path / "helper.py"
    rule.write_text("from x import helper\n")
    helper.write_text("def f():\n    from sqlalchemy import select\n")
    graph = {"reinstatement.verdicts": {"reinstatement.helper"}, "reinstatement.helper": set()}
    modules = {"reinstatement.verdicts": rule, "reinstatement.helper": helper}
    assert impure_domain(graph, modules) == [
        "reinstatement.verdicts reaches sqlalchemy through reinstatement.helper"]
