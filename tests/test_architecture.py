"""House rules that the code's structure must keep: imports flow desra/flows → tasks → pipeline → desra_core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


_LAYERS = ("flows", "tasks", "pipeline")  # installed as desra.flows, desra.tasks, desra.pipeline


def _layer(module: str) -> str:
    """The layer an absolute import names: ``desra.pipeline.x`` → ``pipeline``, ``desra.cli`` → ``desra``,
    ``prefect.flows`` → ``prefect``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "desra" and len(parts) > 1 and parts[1] in _LAYERS else parts[0]


def _absolute_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.extend(f"{node.module}.{alias.name}" if node.module == "desra" else node.module
                         for alias in node.names)
    return names


def _imports(path: Path) -> set[str]:
    return {_layer(name) for name in _absolute_imports(path)}


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


_ALL_PYTHON = sorted(p for folder in ("desra", "desra_core", "flows", "tasks", "pipeline", "tests", "benchmarks",
                                      "examples")
                     for p in (REPO / folder).rglob("*.py"))  # rglob does not follow the links desra/flows…


@pytest.mark.parametrize("path", _ALL_PYTHON, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_imports_the_layers_by_their_folder_names(path):
    # Installed, the layers exist only as desra.flows/desra.tasks/desra.pipeline; `import flows` works only in a
    # checkout's root and would load a second copy of every module (two Prefect flows named desra, two stores).
    bare = sorted(name for name in _absolute_imports(path) if name.split(".")[0] in _LAYERS)
    assert not bare, f"{path.relative_to(REPO)} imports {bare}: write desra.{bare[0]}"
