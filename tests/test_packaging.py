"""What installing desra puts into an environment: two import names (``desra``, ``desra_core``), the flows,
tasks and pipeline under ``desra.``, the data files, one version, and dependency ranges with the exact
torch/torchvision builds in ``constraints.txt``.

The wheel is built from a copy of the sources in a temporary folder (never in this checkout, whose
``build/`` others may be using), and installed without its dependencies into a fresh venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DATA_FILES = ("desra/pipeline/data/*.css", "desra_core/data/*.csv", "desra_core/data/*.json",
              "desra/deployments/prefect.yaml")


def _constraints() -> dict[str, Requirement]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    return {r.name: r for r in reqs}


# --- dependencies and version ------------------------------------------------------------------------------

def test_runtime_dependencies_are_ranges():
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    pinned = [str(r) for r in requirements if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"a library must not pin its dependencies exactly: {pinned}"
    unbounded = [str(r) for r in requirements if not any(s.operator in ("<", "<=", "~=") for s in r.specifier)]
    assert not unbounded, f"expected an upper bound on every dependency, got none on {unbounded}"
    assert {"torch", "torchvision"} <= {r.name for r in requirements}


# Pins of packages that pyproject.toml names nowhere: what a pinned package needs, named so that pip's resolver
# lands on a consistent set at once (s3fs's aiobotocore accepts only a narrow range of botocore).
RESOLVER_PINS = {"aiobotocore"}


def test_constraints_pin_exactly_the_torch_builds_within_the_ranges():
    constraints = _constraints()
    gates = {"ruff", "mypy", "pandas-stubs", "types-PyYAML"}  # .ci/run's linter and type checker, pinned too
    assert {"torch", "torchvision"} | gates <= set(constraints), constraints
    extras = PYPROJECT["project"]["optional-dependencies"]
    named = [*PYPROJECT["project"]["dependencies"], *(req for group in extras.values() for req in group)]
    ranges = {r.name: r.specifier for r in map(Requirement, named)}
    assert set(constraints) - set(ranges) <= RESOLVER_PINS, constraints
    for name, pin in constraints.items():
        [spec] = pin.specifier
        assert spec.operator == "==", pin
        if name in ranges:
            assert Version(spec.version) in ranges[name], \
                f"constraints.txt pins {pin}, outside pyproject's {ranges[name]}"


def test_ci_installs_with_the_constraints():
    ci = (REPO / ".ci" / "run").read_text()
    installs = [line for line in ci.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
    assert len(installs) == 1, installs
    steps = [step.strip() for step in installs[0].split("&&")]
    # installed with the exact builds, then gated by the linter and the type checker before the tests run
    assert steps[1] == ".venv/bin/pip install -c constraints.txt -e '.[dev]'", steps
    assert steps[2:] == [".venv/bin/ruff check .", ".venv/bin/mypy", ".venv/bin/pytest"], steps


def test_the_version_is_written_in_one_place():
    import desra
    import desra_core

    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "desra_core.__version__"}
    assert desra.__version__ is desra_core.__version__  # re-exported, not written again
    Version(desra_core.__version__)  # a valid version (InvalidVersion otherwise)


# --- the built wheel --------------------------------------------------------------------------------------

def _source_folders() -> set[str]:
    """The repository's top-level folders that the packages of pyproject.toml live in (through the links
    desra/flows -> ../flows and so on)."""
    folders = set()
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        path = REPO / package.replace(".", "/")
        folders |= {path.relative_to(REPO).parts[0], path.resolve().relative_to(REPO).parts[0]}
    return folders


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """desra's wheel, built without build isolation (offline) from a copy of the sources."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in sorted(_source_folders()):
        shutil.copytree(REPO / folder, src / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = out.glob("desra-*.whl")
    return built


def test_wheel_claims_only_desra_and_desra_core(wheel):
    import desra_core

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"desra", "desra_core", f"desra-{desra_core.__version__}.dist-info"}, sorted(top)
    assert wheel.name.startswith(f"desra-{desra_core.__version__}-")  # the one version, in the file name too
    for module in ("desra/flows/full.py", "desra/flows/batch.py", "desra/tasks/__init__.py",
                   "desra/pipeline/__init__.py", "desra/deployments/__init__.py", "desra_core/__init__.py"):
        assert module in names, module
    for pattern in DATA_FILES:
        expected = sorted(str(p.relative_to(REPO)) for p in REPO.glob(pattern))
        assert expected, f"no {pattern} in the checkout"
        assert [n for n in expected if n in names] == expected, f"{pattern}: missing from the wheel"
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(f"desra-{desra_core.__version__}.dist-info/entry_points.txt").decode()
        metadata = z.read(f"desra-{desra_core.__version__}.dist-info/METADATA").decode()
    assert "desra = desra.cli:main" in entry_points
    assert "Requires-Dist: torch<3,>=2.4" in metadata or "Requires-Dist: torch>=2.4,<3" in metadata, metadata


def test_a_fresh_venv_with_only_desra_has_no_flows_tasks_or_pipeline(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    before = {p.name for p in site.iterdir()}
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    added = {p.name for p in site.iterdir()} - before
    assert {a for a in added if not a.endswith(".dist-info")} == {"desra", "desra_core"}, sorted(added)
    assert (site / "desra" / "flows" / "full.py").is_file() and (site / "desra" / "tasks").is_dir()
    assert (site / "desra" / "deployments" / "prefect.yaml").is_file()

    # From /, with nothing of this checkout on the path: no dependencies are installed in this venv, so only
    # names that need none are imported (desra itself needs numpy).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    for name in ("flows", "tasks", "pipeline", "deployments"):
        done = subprocess.run([str(python), "-c", f"import {name}"], cwd="/", env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0 and f"ModuleNotFoundError: No module named '{name}'" in done.stderr, (
            name, done.stderr)
    spec = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('desra').origin)"],
                          cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert spec.stdout.strip() == str(site / "desra" / "__init__.py"), spec.stdout + spec.stderr
