"""The package structure rules of docs/architecture.md: the import-linter layers contract holds, and an
open_tips import inside a function carries a comment saying why (every package and top-level module)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "open_tips"
CHECKED = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()) + ["*.py"]


def _is_ours(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        names = [node.module or ""] if node.level == 0 else ["open_tips"]  # relative = ours
    elif isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        return False
    return any(name == "open_tips" or name.startswith("open_tips.") for name in names)


def unexplained_local_imports(source: str) -> list[int]:
    """Line numbers of open_tips imports inside functions that no comment explains. A comment on an import
    statement's lines or directly above it explains that import and every later one in the same function
    (one comment per function is enough)."""
    lines = source.splitlines()
    found = set()
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        imports = sorted(
            (n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))),
            key=lambda n: n.lineno,
        )
        explained = False
        for node in imports:
            own = any("#" in line for line in lines[node.lineno - 1 : node.end_lineno])
            explained = explained or own or lines[node.lineno - 2].strip().startswith("#")
            if _is_ours(node) and not explained:
                found.add(node.lineno)
    return sorted(found)


def test_the_checker_finds_unexplained_imports() -> None:
    source = (
        "def a():\n    from open_tips.models import TIPSModel\n"
        "def b():\n    # deferred: heavy\n    from open_tips.eval import suite\n    import open_tips.data\n"
        "def c():\n    import json\n    from . import sibling\n"
    )
    assert unexplained_local_imports(source) == [2, 9]


@pytest.mark.parametrize("package", CHECKED)
def test_no_unexplained_in_function_imports(package: str) -> None:
    paths = PACKAGE.glob(package) if package.endswith(".py") else (PACKAGE / package).rglob("*.py")
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(paths)
        for line in unexplained_local_imports(path.read_text())
    ]
    assert not problems, (
        f"move these imports to the top of the module, or say why they are deferred: {problems}"
    )


def test_layers_contract_holds() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.is_file():
        pytest.skip("import-linter is not installed (pip install -e .[test])")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout
