"""Which folders and files a run may touch: the allowed roots (Prefect-free policy).

Whoever can start a run (the Prefect UI, the API, a ``desra.drop.landed`` event) chooses its paths, so a
worker confines them: every folder or file that a run reads or writes (``input_dir``, ``output_dir``,
``labels_dir``, model files given as paths, a segmenter folder) must resolve, after symbolic links and
``..``, to one of the allowed roots or to something below one. A root is a folder or a single file.

Where the roots come from, first match wins:

1. ``DESRA_ALLOWED_ROOTS`` in the environment of the process that runs the flow (the worker, or
   ``desra run``): absolute paths separated by ``:``. Empty entries are ignored; an empty value counts
   as unset.
2. Under a deployment, the paths that the deployment was registered with (its stored parameters, not
   the run's): the drop, the output root, the labels folder, model files and the segmenter folder.
3. Otherwise (``desra run`` on a user's own machine) nothing is confined.

Model files also may lie in the weights cache (``$DESRA_CACHE/weights``), where known names are
downloaded. The check only compares paths; it reads nothing and creates nothing.
"""

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from desra_core.errors import ConfigError

__all__ = ["INPUT_PARAMETERS", "PATH_PARAMETERS", "ROOTS_VARIABLE", "Roots", "check_apart", "check_confined",
           "model_path", "parse_roots", "registered_roots", "resolve", "run_paths", "segmenter_path"]

ROOTS_VARIABLE = "DESRA_ALLOWED_ROOTS"
# Run parameters that name a folder or file, in the order they are checked (and named in a refusal).
PATH_PARAMETERS = ("input_dir", "output_dir", "labels_dir", "mse_model", "gan_model", "segmenter", "validate_dir",
                   "validate_labels_dir", "vgg_weights", "discriminator")
_MODEL_PARAMETERS = ("mse_model", "gan_model")
# Folders that a run reads images from: none of them may overlap the output root (see check_apart); mse_dir and
# gan_dir are the SR result folders that `desra detect` reads.
INPUT_PARAMETERS = ("input_dir", "labels_dir", "validate_dir", "validate_labels_dir", "mse_dir", "gan_dir")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_BACKEND = re.compile(r"([A-Za-z_][\w.-]+):(.+)")  # "backend:id_or_path", as load_segmenter reads it


def resolve(path: str | os.PathLike[str], *, expand_user: bool = False) -> Path:
    """The absolute path with every symbolic link and ``..`` resolved; a missing tail is kept as written
    (it cannot be a link yet). ``expand_user``: expand ``~`` first, as the model loaders do."""
    text = os.fspath(path)
    return Path(os.path.realpath(os.path.expanduser(text) if expand_user else text))


class Roots:
    """The allowed roots of a run and where they came from (``source``, for messages)."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]], source: str) -> None:
        self.paths = tuple(dict.fromkeys(resolve(p) for p in paths))
        self.source = source

    def contain(self, path: Path) -> bool:
        """Whether the resolved ``path`` is one of the roots or lies below one (whole path components:
        ``/data/drop2`` is not inside ``/data/drop``)."""
        return any(path == root or root in path.parents for root in self.paths)

    def describe(self) -> str:
        listed = ", ".join(str(p) for p in self.paths) or "none"
        return f"{self.source} ({listed})"


def parse_roots(value: str) -> Roots | None:
    """The roots named by a ``DESRA_ALLOWED_ROOTS`` value; ``None`` when it names none (unset).

    Raises:
        ConfigError: an entry is not an absolute path.
    """
    entries = [e.strip() for e in value.split(":") if e.strip()]
    if not entries:
        return None
    relative = [e for e in entries if not os.path.isabs(e)]
    if relative:
        raise ConfigError(f"expected absolute paths in {ROOTS_VARIABLE}, got {relative[0]!r} (value: {value!r})")
    return Roots(entries, ROOTS_VARIABLE)


def model_path(spec: str | None, known_names: Iterable[str]) -> str | None:
    """The path that a model spec names, or ``None`` for a known name (it lives in the weights cache)
    or no model; the same rule as :func:`desra_core.models.weights.resolve_weights`."""
    if not spec or spec in set(known_names):
        return None
    return spec


def segmenter_path(spec: str | None) -> str | None:
    """The local path that a segmenter spec (``"backend:ARG"`` or a SegFormer hub id or folder) may
    load, or ``None`` for no segmenter or a hub id (``name`` or ``org/name`` that is not a local path).

    Deliberately broader than the loader's own test: anything that is not shaped like a hub id, or that
    exists as a path relative to the working directory, counts as a path."""
    if not spec:
        return None
    match = _BACKEND.fullmatch(spec)
    target = match.group(2) if match else spec
    if _HUB_ID.fullmatch(target) and not os.path.lexists(target):
        return None
    return target


def run_paths(parameters: Mapping[str, object], known_models: Iterable[str]) -> dict[str, str]:
    """The paths among a run's (or a deployment's) parameters: parameter name → path as given."""
    known = set(known_models)
    found = {}
    for name in PATH_PARAMETERS:
        value = parameters.get(name)
        if not isinstance(value, str) or not value:
            continue
        if name in _MODEL_PARAMETERS:
            value = model_path(value, known)
        elif name == "segmenter":
            value = segmenter_path(value)
        if value:
            found[name] = value
    return found


def registered_roots(parameters: Mapping[str, object], known_models: Iterable[str], deployment: str) -> Roots:
    """The roots of a deployment that was registered with ``parameters``: the paths among them."""
    paths = run_paths(parameters, known_models)
    return Roots([resolve(p, expand_user=n in (*_MODEL_PARAMETERS, "segmenter")) for n, p in paths.items()],
                 f"the folders that deployment {deployment} was registered with")


def check_confined(paths: Mapping[str, str], roots: Roots, *,
                   model_cache: str | os.PathLike[str] | None = None) -> None:
    """Refuse the first path (parameter name → path) that does not resolve inside ``roots``.

    Model files (``mse_model``, ``gan_model``) may also lie in ``model_cache``.

    Raises:
        ConfigError: naming the parameter, the path (and what it resolves to) and the roots.
    """
    cache = Roots([model_cache], "the weights cache") if model_cache is not None else None
    for name, value in paths.items():
        target = resolve(value, expand_user=name in (*_MODEL_PARAMETERS, "segmenter"))
        if roots.contain(target) or (cache is not None and name in _MODEL_PARAMETERS and cache.contain(target)):
            continue
        shown = value if str(target) == value else f"{value} (resolves to {target})"
        hint = "" if roots.source == ROOTS_VARIABLE else f"; set {ROOTS_VARIABLE} on the worker to allow other folders"
        raise ConfigError(f"expected {name} inside the allowed roots, {roots.describe()}, got {shown}{hint}")


def check_apart(paths: Mapping[str, str | None]) -> None:
    """Refuse a run whose output root and an input folder (:data:`INPUT_PARAMETERS`; parameter name → path,
    ``None`` or empty: not given) overlap: one is the other
    or lies inside it, compared after symbolic links and ``..`` by whole path components.

    An output root inside the drop would put the store (``.desra/store``, which later runs trust) where the
    drop's writers can edit it; a drop inside the output root would be read back as images. The roots of
    :func:`check_confined` are pooled over all parameters, so they cannot catch this. Reads nothing.

    Raises:
        ConfigError: naming both parameters and both paths.
    """
    output = paths.get("output_dir")
    if not output:
        return
    out = resolve(output)
    for name in INPUT_PARAMETERS:
        value = paths.get(name)
        if not value:
            continue
        folder = resolve(value)
        if out == folder:
            relation = f"is the same folder as {name} {value}"
        elif folder in out.parents:
            relation = f"lies inside {name} {value}"
        elif out in folder.parents:
            relation = f"contains {name} {value}"
        else:
            continue
        shown = output if str(out) == output else f"{output} (resolves to {out})"
        raise ConfigError(f"expected output_dir apart from {name}, neither inside the other, got output_dir {shown}, "
                          f"which {relation}; choose an output root outside the folders that a run reads")
