"""Which folders and files a run may touch: the allowed roots (Prefect-free policy).

Whoever can start a run (the Prefect UI, the API, a ``desra.drop.landed`` event) chooses its paths, so a
worker confines them: every folder or file that a run reads or writes (``input_dir``, ``output_dir``,
``labels_dir``, model files given as paths, a segmenter folder) must resolve, after symbolic links and
``..``, to one of the allowed roots or to something below one. A root is a folder or a single file.

Where the roots come from, first match wins:

1. ``DESRA_ALLOWED_ROOTS`` in the environment of the process that runs the flow (the worker, or
   ``desra run``): absolute paths or URLs separated by ``:`` (the ``:`` of a URL's ``scheme://`` does not
   separate: ``s3://drops/in:s3://drops/out:/data/models``). Empty entries are ignored; an empty value
   counts as unset.
2. Under a deployment, the paths that the deployment was registered with (its stored parameters, not
   the run's): the drop, the output root, the labels folder, model files and the segmenter folder.
3. Otherwise (``desra run`` on a user's own machine) nothing is confined.

Model files also may lie in the weights cache (``$DESRA_CACHE/weights``), where known names are
downloaded. The check only compares paths; it reads nothing and creates nothing.

A URL (``s3://bucket/prefix``, see :func:`~desra.pipeline.objects.is_url`) is compared as a URL, never
resolved as a path: it lies inside a URL root of the same scheme and bucket whose key is a whole-component
prefix of its own (``s3://drops/a`` holds ``s3://drops/a/x``, not ``s3://drops/ab``). Object stores have no
``..`` and no links, so a URL with a ``.``, ``..`` or empty component, a backslash or a control character is
refused (:func:`url_parts`) rather than normalised into what might be another prefix. A URL never lies inside
a path root, nor a path inside a URL root.
"""

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from desra.pipeline.objects import is_url
from desra_core.errors import ConfigError

__all__ = ["INPUT_PARAMETERS", "PATH_PARAMETERS", "ROOTS_VARIABLE", "Roots", "UrlParts", "check_apart",
           "check_confined", "model_path", "parse_roots", "registered_roots", "resolve", "run_paths",
           "segmenter_path", "shown_url", "url_parts"]

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
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# A bucket (or container) name: letters, digits, ".", "_", "-"; no user, password or port ("@", ":").
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")


class UrlParts(NamedTuple):
    """A checked URL: lower-case ``scheme``, ``bucket`` and the ``key``'s components (``()``: the bucket)."""

    scheme: str
    bucket: str
    key: tuple[str, ...]

    def __str__(self) -> str:
        return "/".join((f"{self.scheme}://{self.bucket}", *self.key))

    def within(self, root: "UrlParts") -> bool:
        """Whether this is ``root`` or lies below it (same scheme and bucket, whole key components)."""
        return (self.scheme, self.bucket) == (root.scheme, root.bucket) and self.key[:len(root.key)] == root.key


def shown_url(url: str) -> str:
    """``url`` (or a text of URLs) for a message: a ``user:password@`` before a bucket is masked (a URL never
    carries a credential that desra uses, but one typed into a parameter must not be echoed into logs)."""
    return _USERINFO.sub(r"\1***@", url)


def _url_problem(bucket: str, key: str) -> str:
    if not bucket:
        return "no bucket"
    if "@" in bucket:  # not echoed: it may hold a password
        return "a user or password before the bucket"
    if not _BUCKET.fullmatch(bucket):
        return f"the bucket {bucket!r} is not a name of letters, digits, '.', '_' and '-'"
    if "\\" in key:
        return "a backslash"
    if any(not ch.isprintable() for ch in key):
        return "a control or non-printable character"
    if key and any(part in ("", ".", "..") for part in key.split("/")):
        bad = next(part for part in key.split("/") if part in ("", ".", ".."))
        return f"a {bad!r} component" if bad else "an empty component"
    return ""


def url_parts(url: str, what: str = "a URL") -> UrlParts:
    """The parts of ``url`` (``scheme://bucket[/key]``; trailing ``/`` ignored, the scheme's case too), checked:
    URLs are compared by these parts, so none may be spelled in two ways or point elsewhere than it reads.

    Raises:
        ConfigError: naming ``what`` and the URL: no ``scheme://``, a bad bucket name, or a key with an empty,
            ``.`` or ``..`` component, a backslash or a control character.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ConfigError(f"expected {what} as scheme://bucket/key, got {shown_url(url)!r}")
    bucket, _, key = rest.rstrip("/").partition("/")
    problem = _url_problem(bucket, key)
    if problem:
        raise ConfigError(f"expected {what} as scheme://bucket/key of printable /-separated components (none empty, "
                          f"'.' or '..'), got {shown_url(url)!r} ({problem})")
    return UrlParts(scheme.lower(), bucket, tuple(key.split("/")) if key else ())


def resolve(path: str | os.PathLike[str], *, expand_user: bool = False) -> Path:
    """The absolute path with every symbolic link and ``..`` resolved; a missing tail is kept as written
    (it cannot be a link yet). ``expand_user``: expand ``~`` first, as the model loaders do."""
    text = os.fspath(path)
    return Path(os.path.realpath(os.path.expanduser(text) if expand_user else text))


class Roots:
    """The allowed roots of a run and where they came from (``source``, for messages): folders and files
    (``paths``, resolved) and URL prefixes (``urls``, normalised by :func:`url_parts`).

    Raises:
        ConfigError: an entry is a URL that :func:`url_parts` refuses (named).
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]], source: str) -> None:
        entries: dict[Path | UrlParts, None] = {}
        for entry in paths:
            text = os.fspath(entry)
            entries[url_parts(text, f"a root in {source}") if is_url(text) else resolve(text)] = None
        self.paths = tuple(e for e in entries if isinstance(e, Path))
        self._urls = tuple(e for e in entries if isinstance(e, UrlParts))
        self.urls = tuple(str(u) for u in self._urls)
        self._listed = tuple(str(e) for e in entries)
        self.source = source

    def contain(self, target: Path | str) -> bool:
        """Whether ``target`` is one of the roots or lies below one: a resolved path below a path root (whole
        path components: ``/data/drop2`` is not inside ``/data/drop``), a URL below a URL root (same scheme and
        bucket, whole key components; a URL that :func:`url_parts` refuses raises its ConfigError). A path is
        never inside a URL root, nor a URL inside a path root."""
        if isinstance(target, str) and is_url(target):
            url = url_parts(target)
            return any(url.within(root) for root in self._urls)
        path = Path(target)
        return any(path == root or root in path.parents for root in self.paths)

    def describe(self) -> str:
        listed = ", ".join(self._listed) or "none"
        return f"{self.source} ({listed})"


def _split_roots(value: str) -> list[str]:
    """The entries of a ``:``-separated list, where the ``:`` of a ``scheme://`` does not separate."""
    pieces = value.split(":")
    entries: list[str] = []
    for piece in pieces:
        if entries and piece.startswith("//") and _SCHEME.fullmatch(entries[-1].strip()):
            entries[-1] = f"{entries[-1]}:{piece}"
        else:
            entries.append(piece)
    return [e.strip() for e in entries if e.strip()]


def parse_roots(value: str) -> Roots | None:
    """The roots named by a ``DESRA_ALLOWED_ROOTS`` value; ``None`` when it names none (unset).

    Raises:
        ConfigError: an entry is neither an absolute path nor a URL, or is a URL that :func:`url_parts` refuses.
    """
    if _USERINFO.search(value):  # its ":" would split it, and its password be shown as an entry
        raise ConfigError(f"expected URLs without a user or password in {ROOTS_VARIABLE} (credentials come from the "
                          f"environment), got {shown_url(value)!r}")
    entries = _split_roots(value)
    if not entries:
        return None
    relative = [e for e in entries if not is_url(e) and not os.path.isabs(e)]
    if relative:
        raise ConfigError(f"expected absolute paths in {ROOTS_VARIABLE}, got {shown_url(relative[0])!r} (neither an "
                          f"absolute path nor a scheme:// URL; value: {shown_url(value)!r})")
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
    if is_url(spec):  # "s3://…" is no "backend:ARG"
        return spec
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
    """The roots of a deployment that was registered with ``parameters``: the paths (and URLs) among them."""
    paths = run_paths(parameters, known_models)
    return Roots([p if is_url(p) else resolve(p, expand_user=n in (*_MODEL_PARAMETERS, "segmenter"))
                  for n, p in paths.items()],
                 f"the folders that deployment {deployment} was registered with")


def check_confined(paths: Mapping[str, str], roots: Roots, *,
                   model_cache: str | os.PathLike[str] | None = None) -> None:
    """Refuse the first path (parameter name → path or URL) that does not resolve inside ``roots``.

    Model files (``mse_model``, ``gan_model``) may also lie in ``model_cache``. A URL is compared as a URL
    (:meth:`Roots.contain`), never resolved.

    Raises:
        ConfigError: naming the parameter, the path (and what it resolves to) and the roots; or a URL that
            :func:`url_parts` refuses, naming the parameter.
    """
    cache = Roots([model_cache], "the weights cache") if model_cache is not None else None
    for name, value in paths.items():
        if is_url(value):
            url = str(url_parts(value, name))
            if roots.contain(url):
                continue
            shown = shown_url(value) if url == value else f"{shown_url(value)} (normalised to {shown_url(url)})"
        else:
            target = resolve(value, expand_user=name in (*_MODEL_PARAMETERS, "segmenter"))
            if roots.contain(target) or (cache is not None and name in _MODEL_PARAMETERS and cache.contain(target)):
                continue
            shown = value if str(target) == value else f"{value} (resolves to {target})"
        hint = "" if roots.source == ROOTS_VARIABLE else f"; set {ROOTS_VARIABLE} on the worker to allow other folders"
        raise ConfigError(f"expected {name} inside the allowed roots, {roots.describe()}, got {shown}{hint}")


def check_apart(paths: Mapping[str, str | None]) -> None:
    """Refuse a run whose output root and an input folder (:data:`INPUT_PARAMETERS`; parameter name → path,
    ``None`` or empty: not given) overlap: one is the other
    or lies inside it, compared after symbolic links and ``..`` by whole path components. URLs are compared as
    URLs (same scheme and bucket, whole key components; :func:`url_parts`); a URL and a local path are apart.

    An output root inside the drop would put the store (``.desra/store``, which later runs trust) where the
    drop's writers can edit it; a drop inside the output root would be read back as images. The roots of
    :func:`check_confined` are pooled over all parameters, so they cannot catch this. Reads nothing.

    Raises:
        ConfigError: naming both parameters and both paths.
    """
    output = paths.get("output_dir")
    if not output:
        return
    out: Path | UrlParts = url_parts(output, "output_dir") if is_url(output) else resolve(output)
    for name in INPUT_PARAMETERS:
        value = paths.get(name)
        if not value:
            continue
        folder: Path | UrlParts = url_parts(value, name) if is_url(value) else resolve(value)
        if type(out) is not type(folder):
            continue  # a URL and a local path never overlap
        shown_value = shown_url(value)
        if out == folder:
            relation = f"is the same folder as {name} {shown_value}"
        elif _inside(out, folder):
            relation = f"lies inside {name} {shown_value}"
        elif _inside(folder, out):
            relation = f"contains {name} {shown_value}"
        else:
            continue
        how = "normalised" if isinstance(out, UrlParts) else "resolves"
        shown = shown_url(output) if str(out) == output else f"{shown_url(output)} ({how} to {shown_url(str(out))})"
        raise ConfigError(f"expected output_dir apart from {name}, neither inside the other, got output_dir {shown}, "
                          f"which {relation}; choose an output root outside the folders that a run reads")


def _inside(inner: Path | UrlParts, outer: Path | UrlParts) -> bool:
    """Whether ``inner`` lies strictly below ``outer`` (both paths or both URLs)."""
    if isinstance(inner, UrlParts) and isinstance(outer, UrlParts):
        return inner != outer and inner.within(outer)
    return isinstance(inner, Path) and isinstance(outer, Path) and outer in inner.parents
