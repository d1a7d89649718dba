"""Admission: what every run and every command does first, before it reads an image or creates anything.

:func:`admit` is the one admission of desra. ``desra detect``, ``desra upscale``, ``desra finetune`` and
``desra evaluate`` call it directly; the flows call it through :func:`desra.tasks.preflight.admit`, which
adds Prefect's part (the roots a deployment was registered with, read through the API; the ``preflight``
task run; a refusal logged once and returned as the run's ``Failed`` state). In this order it

1. builds the run's :class:`~desra.pipeline.settings.Settings` from its options (or takes admitted ones);
2. confines the run's paths to the allowed roots (:func:`allowed_roots`, :mod:`desra.pipeline.roots`) and
   refuses an output root that overlaps a folder the run reads (:func:`~desra.pipeline.roots.check_apart`);
3. checks the device and resolves it (``auto``: CUDA when available, else the CPU), loads and checks both SR
   models (those given as ``s3://`` URLs first fetched into this worker's cache, :func:`fetch_models`) and the
   segmenter, makes sure that the output root can be created and written (for an ``s3://``
   output root: this worker's local copy, and one probe object in the bucket), and removes the temporary
   files that killed runs left there (:func:`check_run`; the verdict on the models is remembered in this
   worker's copy of the output root's store);
4. opens the input folders and checks each open descriptor against the roots (:func:`admit_folders`); an
   ``s3://`` input is checked against the roots as a URL and must answer one small listing.

Every refusal is a :class:`~desra_core.DesraError` of one sentence; nothing has been read from a forbidden
folder or created before steps 1-2 pass. The admitted :class:`Settings` carry the resolved device, and every
step after admission uses them as they are: the device is resolved here and nowhere else.

A ``desra-batch`` run is admitted again, on its own worker: the device, the models and the roots are those
of the machine that runs it, which need not be the machine that admitted the parent run.
"""

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desra.pipeline.drop import admit_folder
from desra.pipeline.leftovers import LOCK_NAME, attend
from desra.pipeline.models import SEG_VERSION, SR_VERSION, check_device, check_models, model_digest, segmenter_id
from desra.pipeline.models import load_segmenter_cached as _segmenter
from desra.pipeline.objects import Bucket, is_url
from desra.pipeline.options import FinetuneFields, check_options
from desra.pipeline.remote import bucket_of, model_copy, owner, work_root
from desra.pipeline.roots import (
    PATH_PARAMETERS,
    ROOTS_VARIABLE,
    Roots,
    check_apart,
    check_confined,
    model_path,
    parse_roots,
    run_paths,
    shown_url,
    url_parts,
)
from desra.pipeline.settings import Settings
from desra.pipeline.store import Store, step_key
from desra_core import ConfigError
from desra_core.finetune.options import FinetuneOptions
from desra_core.models.weights import KNOWN_WEIGHTS, cache_dir

__all__ = ["FINETUNE_PATHS", "FOLDER_PARAMETERS", "MODEL_PARAMETERS", "MODEL_URL_PARAMETERS", "Admission",
           "RootsSource", "admit", "admit_finetuning", "admit_folders", "admit_paths", "allowed_roots", "check_run",
           "confine", "ensure_output_root", "fetch_models", "refuse_model_urls"]

FOLDER_PARAMETERS = ("input_dir", "labels_dir", "validate_dir", "validate_labels_dir")
"""The folders of images that a run lists: :func:`admit_folders` opens them once, through checked descriptors."""

FINETUNE_PATHS = ("validate_dir", "validate_labels_dir", "vgg_weights", "discriminator")
"""The paths among the fine-tuning options (:class:`~desra_core.finetune.options.FinetuneOptions`)."""

MODEL_PARAMETERS = ("mse_model", "gan_model", "segmenter", "vgg_weights", "discriminator", "model")
"""The parameters that name model weights (``model``: the one model of ``desra upscale``): loaded from the worker's
disk (or a known name, a hub id), from a URL only for :data:`MODEL_URL_PARAMETERS` (:func:`refuse_model_urls`)."""

MODEL_URL_PARAMETERS = ("mse_model", "gan_model")
"""The model parameters that may be ``s3://`` URLs: a run's two SR models, fetched into each worker's cache."""

RootsSource = Callable[[], Roots | None]
"""Where the roots come from when ``DESRA_ALLOWED_ROOTS`` is unset (a deployment's registered paths)."""


@dataclass(frozen=True)
class Admission:
    """An admitted run: its ``settings`` (``device`` resolved on this machine), the number of temporary files of
    killed runs that were removed from the output root (``swept``) and the verdict on the models (role →
    architecture and scale; empty when the run loads no SR model)."""

    settings: Settings
    swept: int = 0
    models: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.settings.device


def allowed_roots(deployment_roots: RootsSource | None = None) -> Roots | None:
    """The roots that confine this run: ``DESRA_ALLOWED_ROOTS``, else what ``deployment_roots`` gives (the
    Prefect adapter passes the paths a deployment was registered with); ``None``: unconfined.

    Raises:
        ConfigError: ``DESRA_ALLOWED_ROOTS`` names a relative path.
    """
    roots = parse_roots(os.environ.get(ROOTS_VARIABLE, ""))
    if roots is None and deployment_roots is not None:
        roots = deployment_roots()
    return roots


def refuse_model_urls(paths: Mapping[str, str | None]) -> None:
    """Refuse the first model parameter (:data:`MODEL_PARAMETERS`) given as a URL (a segmenter also as
    ``backend:URL``), but the run's two SR models as ``s3://`` URLs (:data:`MODEL_URL_PARAMETERS`, fetched into
    the worker's cache by :func:`fetch_models`): the loaders read weights from the worker's disk, so another URL
    would fail late, or be taken for a relative path. Reads nothing.

    Raises:
        ConfigError: naming the parameter and the URL.
    """
    for name in MODEL_PARAMETERS:
        value = paths.get(name)
        if not value:
            continue
        target = value.partition(":")[2]  # a segmenter's "backend:ARG"
        if name in MODEL_URL_PARAMETERS and value.startswith("s3://"):
            url_parts(value, name)  # a well-formed URL (no credentials in it), even where runs are unconfined
            continue
        if is_url(value) or (name == "segmenter" and is_url(target)):
            url = value if is_url(value) else target
            if name == "segmenter":
                raise ConfigError(f"expected segmenter as a local folder or a hub id, got the URL {shown_url(url)}; "
                                  "a segmenter is read from the worker's disk or the Hugging Face hub: copy it "
                                  "there and pass its folder")
            if name in ("vgg_weights", "discriminator"):  # no known names, no weights cache
                raise ConfigError(f"expected {name} as a local file, got the URL {shown_url(url)}; weights files "
                                  "are read from the worker's disk: copy the file there and pass its path")
            raise ConfigError(f"expected {name} as a local file or a known name, got the URL {shown_url(url)}; "
                              "model files are read from the worker's disk: copy the weights there (or into the "
                              "weights cache) and pass the path")


def fetch_models(settings: Settings) -> Settings:
    """``settings`` with each SR model given as an ``s3://`` URL replaced by this worker's copy of it
    (:func:`~desra.pipeline.remote.model_copy`: one HEAD request when the copy is current). Run after
    :func:`confine` has admitted the URLs, before the models are loaded.

    Raises:
        StorageError: a model object that cannot be read, naming its URL.
    """
    local = {name: model_copy(value) for name in MODEL_URL_PARAMETERS
             if isinstance(value := getattr(settings, name), str) and value.startswith("s3://")}
    return settings.replace(**local) if local else settings


def confine(paths: Mapping[str, str | None], roots: Roots | None) -> None:
    """Refuse the first path (parameter name → path; ``None`` or empty: not given) outside ``roots`` (``None``:
    unconfined). Model files may also lie in the weights cache; known model names and hub ids are not paths.
    Names that are not run parameters (:data:`~desra.pipeline.roots.PATH_PARAMETERS`) are plain paths, but for
    ``model``, the one model of ``desra upscale`` (a known name is not a path). Folders may be URLs
    (``s3://bucket/prefix``), compared with URL roots as URLs; model parameters may not
    (:func:`refuse_model_urls`, checked even when unconfined). Reads nothing, creates nothing.

    Raises:
        ConfigError: naming the parameter and the roots, or a model given as a URL.
    """
    refuse_model_urls(paths)
    if roots is None:
        return
    other = {name: model_path(value, KNOWN_WEIGHTS) if name == "model" else value  # a command's one model
             for name, value in paths.items() if name not in PATH_PARAMETERS}
    check_confined({**run_paths(paths, KNOWN_WEIGHTS), **{name: value for name, value in other.items() if value}},
                   roots, model_cache=cache_dir())


def ensure_output_root(output_dir: str) -> Path:
    """Create the output root if needed and prove that a file can be written in it (the probe file is
    removed); returns the local folder the run works in. For a URL that is this worker's copy
    (:func:`desra.pipeline.remote.work_root`), and the bucket must take an object too (a probe under
    ``.desra/probes/``, removed). Raises :class:`ConfigError` naming the folder and the system's reason,
    or :class:`~desra_core.errors.StorageError` naming the URL."""
    remote = bucket_of(output_dir)
    if remote is not None:
        probe_key = f".desra/probes/{owner()}"
        remote.write(probe_key, b"")
        remote.delete(probe_key)
    root = Path(work_root(output_dir))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"expected output_dir to be a folder, got a file that is not one ({output_dir})") from None
    except OSError as e:
        raise ConfigError(f"expected an output root that can be created, got {e.strerror or e} for "
                          f"{output_dir}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=root, prefix=".desra-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"expected an output root that can be written, got {e.strerror or e} for "
                          f"{output_dir}") from None
    return root


def _attend(output_dir: str) -> list[Path]:
    """:func:`desra.pipeline.leftovers.attend`: this process works in the output root from now on, and the
    temporary files that killed runs left there go (all of them when no other run works there)."""
    try:
        return attend(output_dir)
    except OSError as e:
        raise ConfigError(f"expected an output root where desra can lock {LOCK_NAME}, got {e.strerror or e} "
                          f"for {output_dir}") from None


def check_run(settings: Settings, output_dir: str, sr: bool = True) -> dict[str, Any]:
    """Every check a run makes before it touches an image, in this order: the device; both SR models, unless
    ``sr`` is false (loaded on the CPU, same scale; see :func:`desra.pipeline.models.check_models`); the segmenter,
    when one is in use (loaded on the run's device, its ADE20K class order checked); the output root (created,
    written; the temporary files that killed runs left there are removed, see :mod:`desra.pipeline.leftovers`).

    The verdict on the models and the segmenter is remembered in the output root's store by the files'
    digests (and the segmenter's id, or its folder's digest), so a re-run does not load them again.
    Returns ``{"device": the resolved device, "swept": count, "models": …, "segmenter": …}``.

    Raises:
        ConfigError: the device or the output root. ModelLoadError: a model or the segmenter.
    """
    resolved = check_device(settings.device)
    segmenter = settings.segmenter_in_use
    models = ({role: model_digest(spec) for role, spec in (("mse", settings.mse_model), ("gan", settings.gan_model))}
              if sr else {})
    remember = bool(models or segmenter)
    store = Store(work_root(output_dir))  # this worker's verdict on its own model files
    key = step_key("preflight", f"{SR_VERSION}+{SEG_VERSION}", **{role: d for role, (_, d) in models.items()},
                   segmenter=None if not segmenter else segmenter_id(segmenter))
    verdict = store.read_json("preflight", key) if remember else None
    fresh = verdict is None
    if verdict is None:
        verdict = {"models": check_models(models) if models else {}, "segmenter": segmenter or None}
        if segmenter:
            _segmenter(segmenter, resolved)
    ensure_output_root(output_dir)
    swept = _attend(work_root(output_dir))
    if fresh and remember:
        store.write_json("preflight", key, verdict)
    return {"device": resolved, "swept": len(swept), **verdict}


def admit_folders(folders: Mapping[str, str | None], roots: Roots | None) -> None:
    """Open a run's input folders once (parameter name → path; ``None`` skipped) and check on each open
    descriptor that it lies inside ``roots``: the run lists them through these descriptors
    (:func:`desra.pipeline.drop.admit_folder`), so a folder swapped for a link after :func:`confine` is refused,
    never listed.

    A folder given as a URL (``s3://bucket/prefix``) has no descriptor and no links: it is checked against
    ``roots`` as a URL, and its bucket asked once whether it answers (:meth:`Bucket.check_readable`, one cheap
    request), so a missing bucket or refused credentials end the admission rather than the first listing.

    Raises:
        InputImageError: a folder is missing or unreadable. StorageError: a URL's bucket is missing, or the
            credentials are missing or refused (naming the URL, never a credential). ConfigError: one lies outside
            the roots, or names a scheme other than ``s3://``.
    """
    for name, path in folders.items():
        if not path:
            continue
        if is_url(path):
            _admit_url_folder(path, roots, name)
        else:
            admit_folder(path, roots, name)


def _admit_url_folder(url: str, roots: Roots | None, name: str) -> None:
    """:func:`admit_folders` for one URL: inside ``roots`` (again: this may be called without :func:`confine`),
    then one request to its bucket."""
    if roots is not None and not roots.contain(url):
        raise ConfigError(f"expected {name} inside the allowed roots, {roots.describe()}, got {shown_url(url)}")
    Bucket.at(url).check_readable()


def admit_paths(output_dir: str, paths: Mapping[str, str | None], roots: Roots | None, *,
                then: Callable[[], None] = lambda: None) -> None:
    """The path part of an admission, for ``paths`` (parameter name → path) of a run writing to ``output_dir``:
    :func:`confine` them (model parameters given as URLs are refused there), refuse an output root that overlaps
    one of their image folders, run ``then`` (the checks between, e.g. :func:`check_run`), and open their image
    folders (:func:`admit_folders`; a URL folder's bucket is asked once whether it answers).

    On its own (:func:`admit_finetuning`) it admits what fine-tuning adds to a ``desra`` run whose own paths
    :func:`admit` checks: the validation folders and the weights (the run's paths are not checked twice).
    """
    confine(paths, roots)
    check_apart({**paths, "output_dir": output_dir})
    then()
    admit_folders({name: paths.get(name) for name in FOLDER_PARAMETERS}, roots)


def admit(input_dir: str | None, output_dir: str, options: Mapping[str, Any] | Settings, *,
          more_paths: Mapping[str, str | None] | None = None, deployment_roots: RootsSource | None = None,
          sr: bool = True, check: Callable[[Settings, str, bool], dict[str, Any]] = check_run) -> Admission:
    """Admit a run that reads ``input_dir`` (``None``: a command without a drop, e.g. ``desra detect``) and writes
    under ``output_dir`` with ``options`` (the flat options of :meth:`Settings.from_options`, or a
    :class:`Settings`): see the module docstring for what is checked, in which order.

    ``more_paths``: other paths the run reads (parameter name → path, e.g. ``validate_dir``, ``vgg_weights``):
    confined too, and folders of images among them (:data:`FOLDER_PARAMETERS`) kept apart from the output root
    and opened. ``deployment_roots``: see :func:`allowed_roots`. ``sr``: load and check both SR models (false
    for commands whose SR results are given or that run one model of their own). ``check``: runs
    :func:`check_run` (the Prefect adapter runs it as the ``preflight`` task). A segmenter is ignored when label
    maps are given.

    Raises:
        DesraError: the refusal, one sentence (ConfigError for options, paths, device and output root;
            ModelLoadError for models and segmenter; InputImageError for a missing input folder).
    """
    settings = options if isinstance(options, Settings) else Settings.from_options(**options)
    paths = {"input_dir": input_dir, "output_dir": output_dir, "labels_dir": settings.labels_dir,
             "mse_model": settings.mse_model if sr else None, "gan_model": settings.gan_model if sr else None,
             "segmenter": settings.segmenter_in_use, **(more_paths or {})}
    roots = allowed_roots(deployment_roots)
    verdict: dict[str, Any] = {}

    def checks() -> None:
        nonlocal settings
        settings = fetch_models(settings) if sr else settings
        verdict.update(check(settings, output_dir, sr))

    admit_paths(output_dir, paths, roots, then=checks)
    return Admission(settings=settings.replace(device=verdict["device"]), swept=verdict["swept"],
                     models=verdict["models"])


def admit_finetuning(output_dir: str, values: Mapping[str, Any] | None, *,
                     deployment_roots: RootsSource | None = None) -> FinetuneOptions:
    """Admit what fine-tuning adds to a ``desra`` run (``desra(finetune=True)``, which calls this just before
    :func:`admit` admits the run itself): its options (``values``: field name → value of
    :class:`~desra_core.finetune.options.FinetuneOptions`, as the ``finetune`` flow's parameters are named;
    ``None``: the defaults) and their paths (:data:`FINETUNE_PATHS`, through :func:`admit_paths`). The
    fine-tuning then takes the run's admitted settings whole: they are not admitted a second time.

    Raises:
        ConfigError: an unknown or bad option, a path outside the roots, a validation folder that overlaps
            ``output_dir``. InputImageError: a validation folder that does not exist.
    """
    if is_url(output_dir):
        raise ConfigError(f"expected a local output root for fine-tuning, got {output_dir}: fine-tuning trains from "
                          "the store on the machine that runs it; run it with --out on a local folder")
    options = FinetuneOptions(**check_options(FinetuneFields, values or {}))  # the finetune flow's bounds
    options = options.replace(**{name: getattr(options, name) or None for name in FINETUNE_PATHS})
    options.config()  # bad values fail now, before any image is touched
    admit_paths(output_dir, {name: getattr(options, name) for name in FINETUNE_PATHS},
                allowed_roots(deployment_roots))
    return options
