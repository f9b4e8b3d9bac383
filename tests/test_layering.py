"""The layering of docs/architecture.md is enforced by import-linter in `make check`:
these tests keep its contract whole and show that a forbidden import does fail it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["name"]: contract for contract in config["contracts"]}


def test_the_pure_engine_contract_covers_every_engine_module_but_the_actors() -> None:
    """A module added to engine/ is pure unless it goes in engine/actors/."""
    listed = set(
        contracts()["The pure engine does no I/O and imports no layer above it"]["source_modules"]
    )
    found = {
        f"engine.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "engine").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert listed == found - {"engine.actors"}


def lint_copy(tmp_path: Path, edit: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    for package in ("engine", "persistence", "gateway"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    if edit is not None:
        module, line = edit
        path = tmp_path / module
        path.write_text(path.read_text() + line + "\n")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layering_holds(tmp_path: Path) -> None:
    result = lint_copy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_persistence_importing_the_engine_runtime_fails_the_check(tmp_path: Path) -> None:
    result = lint_copy(tmp_path, ("persistence/snapshot.py", "import engine.actors.supervisor"))
    assert result.returncode != 0
    assert "Persistence imports nothing above it BROKEN" in result.stdout
    assert "persistence.snapshot -> engine.actors.supervisor" in result.stdout


def test_trio_in_the_pure_engine_fails_the_check(tmp_path: Path) -> None:
    result = lint_copy(tmp_path, ("engine/realtime/hub.py", "import trio"))
    assert result.returncode != 0
    assert "The pure engine does no I/O and imports no layer above it BROKEN" in result.stdout
