"""The package's own imports sit at the top of each module, where a reader sees them: a function-local
import between s2d_pipeline/flows modules hides a dependency, usually a circle (docs/architecture.md).
Which way the imports may point is `lint-imports`' job (`make lint`, pyproject.toml [tool.importlinter])."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

OWN = ("s2d_pipeline", "flows")


def _function_local_own_imports(path: Path) -> set[str]:
    found = set()
    for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom):
                own = node.level > 0 or (node.module or "").split(".")[0] in OWN
            elif isinstance(node, ast.Import):
                own = any(a.name.split(".")[0] in OWN for a in node.names)
            else:
                continue
            if own:
                found.add(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_function_local_import_between_the_packages_own_modules():
    found = sorted(
        hit for pkg in OWN for path in (REPO / pkg).rglob("*.py") for hit in _function_local_own_imports(path)
    )
    assert not found, "import these at the top of their module:\n" + "\n".join(found)
