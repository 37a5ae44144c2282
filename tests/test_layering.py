"""The package structure rules of docs/architecture.md: the import-linter layers contract holds, and an
open_tips import inside a function carries a comment saying why (checked for the packages that follow the
rule; add a package here once its deferred imports are justified or moved to the top)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "open_tips"
CHECKED = ("utils", "models", "formats", "data", "captions", "losses", "eval")


def unexplained_local_imports(source: str) -> list[int]:
    """Line numbers of open_tips imports inside functions with no comment on the line or in the comment /
    import lines directly above it."""
    lines = source.splitlines()
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["open_tips"]  # relative = ours
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if not any(name == "open_tips" or name.startswith("open_tips.") for name in names):
                continue
            row = node.lineno - 1
            explained = "#" in lines[row]
            while not explained and row > 0 and lines[row - 1].strip().startswith(("#", "from ", "import ")):
                row -= 1
                explained = lines[row].strip().startswith("#")
            if not explained:
                found.append(node.lineno)
    return sorted(set(found))


def test_the_checker_finds_unexplained_imports() -> None:
    source = (
        "def a():\n    from open_tips.models import TIPSModel\n"
        "def b():\n    # deferred: heavy\n    from open_tips.eval import suite\n    import open_tips.data\n"
        "def c():\n    import json\n    from . import sibling\n"
    )
    assert unexplained_local_imports(source) == [2, 9]


@pytest.mark.parametrize("package", CHECKED)
def test_no_unexplained_in_function_imports(package: str) -> None:
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for line in unexplained_local_imports(path.read_text())
    ]
    assert not problems, "move these imports to the top of the module, or say why they are deferred"


def test_layers_contract_holds() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.is_file():
        pytest.skip("import-linter is not installed (pip install -e .[test])")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout
