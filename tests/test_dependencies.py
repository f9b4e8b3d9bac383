"""Every third-party import is declared in pyproject.toml, in the group that installs it
where the code runs, and pinned exactly.

A module that imports a package only installed as another's dependency works until that
package drops it; this test fails first, naming the file and the import.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"engine", "gateway", "persistence", "bench", "tests", "chat_engine_client"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _group(key: str) -> set[str]:
    return {_name(r) for r in PROJECT["optional-dependencies"][key] if not r.startswith("chat-")}


RUNTIME = {_name(r) for r in PROJECT["dependencies"]}
BENCH = RUNTIME | _group("bench")
DEV = BENCH | _group("dev")

# Which installed distribution provides each importable top-level name.
PROVIDERS = {
    module: {re.sub(r"[-_.]+", "-", d).lower() for d in dists}
    for module, dists in importlib.metadata.packages_distributions().items()
}


def _third_party_imports(package: str) -> set[tuple[str, str]]:
    """(file, top-level module) for every absolute import under `package`."""
    found: set[tuple[str, str]] = set()
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.add((str(path.relative_to(ROOT)), top))
    return found


def _undeclared(package: str, declared: set[str]) -> list[str]:
    problems = []
    for path, module in sorted(_third_party_imports(package)):
        providers = PROVIDERS.get(module)
        if not providers:
            problems.append(f"{path}: {module} is not installed by any distribution")
        elif not providers & declared:
            problems.append(f"{path}: {module} (from {', '.join(sorted(providers))})")
    return problems


def test_the_server_imports_only_runtime_dependencies() -> None:
    problems = [
        p for pkg in ("engine", "gateway", "persistence") for p in _undeclared(pkg, RUNTIME)
    ]
    assert problems == []


def test_the_python_client_imports_only_runtime_dependencies() -> None:
    # chat_engine_client is installed with the server, so with its runtime group only.
    assert _undeclared("chat_engine_client", RUNTIME) == []


def test_the_bench_imports_only_runtime_and_bench_dependencies() -> None:
    assert _undeclared("bench", BENCH) == []


def test_the_tests_import_only_declared_dependencies() -> None:
    assert _undeclared("tests", DEV) == []


def test_every_runtime_dependency_is_imported_by_the_server() -> None:
    # A runtime dependency nothing in the server (or the client installed with it)
    # imports is installed on every deployment for no reason (it belongs to the group
    # that uses it).
    imported: set[str] = set()
    for pkg in ("engine", "gateway", "persistence", "chat_engine_client"):
        for _, module in _third_party_imports(pkg):
            imported |= PROVIDERS.get(module, set())
    assert sorted(RUNTIME - imported) == []


def test_every_dependency_is_pinned_exactly() -> None:
    groups = [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values()]
    loose = [r for group in groups for r in group if not r.startswith("chat-") and "==" not in r]
    assert loose == []
