"""House rules that the code's structure must keep: imports flow desra/flows → tasks → pipeline → desra_core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _names(path: Path) -> set[str]:
    """Names a module assigns at its top level."""
    names = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("path", _modules("desra_core"), ids=lambda p: str(p.relative_to(REPO)))
def test_core_is_free_of_orchestration_and_app_code(path):
    forbidden = {"prefect", "pipeline", "flows", "tasks", "desra"} & _imports(path)
    assert not forbidden, f"{path.relative_to(REPO)} imports {sorted(forbidden)}: desra_core must stay pure"


@pytest.mark.parametrize("path", _modules("pipeline"), ids=lambda p: str(p.relative_to(REPO)))
def test_pipeline_is_free_of_prefect_and_entry_points(path):
    forbidden = {"prefect", "tasks", "flows", "desra"} & _imports(path)
    assert not forbidden, (f"{path.relative_to(REPO)} imports {sorted(forbidden)}: the pipeline runs without "
                           "Prefect and serves every entry point")


def test_pipeline_modules_declare_all():
    missing = [str(p.relative_to(REPO)) for p in _modules("pipeline") if "__all__" not in _names(p)]
    assert not missing, f"modules without __all__: {missing}"


@pytest.mark.parametrize("path", _modules("desra_core"), ids=lambda p: str(p.relative_to(REPO)))
def test_core_does_not_print_or_assert(path):
    tree = ast.parse(path.read_text())
    prints = [n.lineno for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
    asserts = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert not prints, f"print() at lines {prints}"
    assert not asserts, f"assert at lines {asserts}: raise a DesraError instead"


def test_core_modules_declare_all():
    for path in _modules("desra_core"):
        if path.name in {"__init__.py", "__main__.py"}:
            continue
        assert "__all__" in path.read_text(), f"{path.relative_to(REPO)} has no __all__"


@pytest.mark.parametrize("path", _modules("tasks"), ids=lambda p: str(p.relative_to(REPO)))
def test_tasks_do_not_import_flows_or_the_app(path):
    forbidden = {"flows", "desra"} & _imports(path)
    assert not forbidden, (f"{path.relative_to(REPO)} imports {sorted(forbidden)}: imports flow "
                           "flows → tasks → pipeline → core")


def test_flow_modules_keep_annotations_real():
    # Served/deployed runs rebuild the parameter model from annotations: no postponed evaluation.
    for path in _modules("flows"):
        assert "from __future__ import annotations" not in path.read_text(), path.name
