"""DeSRA's per-image steps, each written once: read, MSE-SR, GAN-SR, segment, detect, pseudo-GT, publish.

An :class:`ImageJob` carries one image through the steps. Each step is a method that does one kind of
work, so a scheduler (:mod:`desra.pipeline.stream`) can put it where it belongs:

* **CPU** (run under the ``cpu`` gate a scheduler passes in): :meth:`~ImageJob.read` (decode the input),
  :meth:`~ImageJob.store_sr`, :meth:`~ImageJob.store_labels` (encode results into the store),
  :meth:`~ImageJob.detect`, :meth:`~ImageJob.pseudo_gt`, :meth:`~ImageJob.publish`;
* **device** (model calls only, nothing else): :meth:`~ImageJob.super_resolve`, :meth:`~ImageJob.segment`;
* **bookkeeping** (no pixels): :meth:`~ImageJob.plan` (store keys, what is already stored, the claims
  on what is not).

Every output is content-addressed in the run's :class:`~desra.pipeline.store.Store` by what it depends on
(input digest, model digests, settings, code version): a key that exists is taken, not recomputed,
and the image's row says which steps this run ``computed``. Claims (:meth:`Store.claim`) make two runs
on one output root compute each entry once. A step that fails raises; :func:`failed_row` turns that
into the image's report row, naming the input and its own size.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict, TypeVar

import numpy as np

from desra.pipeline import pixels
from desra.pipeline.leftovers import attend
from desra.pipeline.models import SEG_VERSION, SR_VERSION
from desra.pipeline.objects import Bucket
from desra.pipeline.remote import model_origin, owner
from desra.pipeline.report import is_published, publish_image, review_fragments
from desra.pipeline.review import prepare_pictures
from desra.pipeline.settings import Settings
from desra.pipeline.store import Store, step_key
from desra_core import DesraError, InputImageError, LabelMapError, __version__, build_pseudo_gt, detect_artifacts
from desra_core.folder import FileBytes, max_input_bytes
from desra_core.image import (
    read_image_bytes,
    read_image_size_bytes,
    read_label_map,
    read_label_map_bytes,
    to_float32,
    write_image,
)
from desra_core.models.sr import check_output_size, max_output_pixels

__all__ = ["DETECT_VERSION", "PSEUDO_VERSION", "ImageJob", "Item", "Run", "entry_paths", "failed_row", "published_row"]

DETECT_VERSION = f"detect-1/{__version__}"
PSEUDO_VERSION = f"pseudo-2/{__version__}"  # 2: 16-bit pairs give a 16-bit pseudo-GT (was written 8-bit)
ROLES = ("mse", "gan")


class SourceFile(Protocol):
    """What an item reads its input (or label map) from: a :class:`~desra_core.folder.FolderFile` of a drop
    folder, or a :class:`~desra.pipeline.objectfile.ObjectFile` of a drop in a bucket."""

    @property
    def shown(self) -> str: ...

    def read(self, max_bytes: int | None, error: type[InputImageError] = ...) -> FileBytes: ...


@dataclass(frozen=True, kw_only=True)
class Item:
    """One image of a run: a low-resolution input (``path``, printable, for reports; ``file``, what to read),
    or, for ``desra detect``, SR results that exist already (``given``: role → ``(path, sha256)``).
    ``labels``: ``(path, sha256, error)`` of its precomputed label map when the run has a labels folder
    (``labels_file``: what to read). ``error``: why it cannot be used at all. ``sha256`` (and the label
    map's) is ``None`` until :meth:`ImageJob.load` has read the file: it is the digest of the bytes decoded."""

    stem: str
    path: str | None
    sha256: str | None
    error: str | None = None
    given: dict[str, tuple[str | None, str | None]] | None = None  # (None, None) for a missing result
    labels: tuple[str | None, str | None, str | None] | None = None
    file: SourceFile | None = None
    labels_file: SourceFile | None = None

    def given_file(self, role: str) -> tuple[str, str]:
        """``(path, sha256)`` of the given ``role`` result of an item without ``error``."""
        path, digest = (None, None) if self.given is None else self.given[role]
        if path is None or digest is None:
            raise InputImageError(self.error or f"expected a given {role} result for {self.stem}, got none")
        return path, digest


class ModelCalls(Protocol):
    """What the steps use of a run's models: :class:`desra.pipeline.models.Models`, or a stand-in."""

    @property
    def digests(self) -> Mapping[str, str]: ...  # role → sha256 of the weights

    @property
    def segmenter_key(self) -> str | None: ...

    @property
    def scale(self) -> int: ...

    def super_resolve(self, role: str, lr: np.ndarray) -> np.ndarray: ...

    def segment(self, gan: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, kw_only=True)
class Run:
    """What every image of a run shares: the settings, the output root and the models (``None`` when
    every SR result is given and no segmenter runs). Creating one creates the output root and attends it
    (:func:`desra.pipeline.leftovers.attend`: temporary files that killed runs left there are removed first).

    ``remote``: the bucket of an output root that is a URL; ``output_dir`` is then this worker's local copy of
    it (:func:`desra.pipeline.remote.work_root`), and the store and the published outputs go to the bucket."""

    settings: Settings
    output_dir: str
    run_id: str
    models: ModelCalls | None = None  # desra.pipeline.models.Models, or a stand-in with the same methods
    remote: Bucket | None = None

    def __post_init__(self) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        attend(self.output_dir)

    @property
    def store(self) -> Store:
        return Store(self.output_dir, self.remote, owner=owner() if self.remote is not None else None)


@dataclass
class _Entry:
    """A step's output: its store key and file; ``pixels`` while this run holds them in memory."""

    key: str
    path: str
    cached: bool
    pixels: np.ndarray | None = None


def _now() -> datetime:
    return datetime.now(UTC)


_T = TypeVar("_T")


def _needed(value: _T | None, what: str) -> _T:
    """``value``, which an earlier step sets; a RuntimeError naming it when that step has not run."""
    if value is None:
        raise RuntimeError(f"expected {what} from an earlier step, got none (the steps ran out of order)")
    return value


def _models(run: Run) -> ModelCalls:
    if run.models is None:
        raise RuntimeError("expected the run's models, got none: this run was set up without models")
    return run.models


class _Keys(TypedDict):
    """An image's store keys, step by step (``labels``: None without a label map)."""

    mse: str
    gan: str
    labels: str | None
    detect: str
    pseudo_gt: str


def _sr_key(run: Run, item: Item, role: str) -> str:
    if item.given is not None:
        return f"file:{item.given_file(role)[1]}"
    s = run.settings
    return step_key("sr", SR_VERSION, image=item.sha256, model=_models(run).digests[role], tile=s.tile,
                    overlap=s.overlap)


def _labels_key(run: Run, item: Item, gan_key: str) -> str | None:
    if run.settings.labels_dir:
        digest = (item.labels or (None, None, None))[1]
        return None if digest is None else f"labels:{digest}"
    if run.settings.segmenter_in_use is None:
        return None
    return _segment_key(run, gan_key)


def _segment_key(run: Run, gan_key: str) -> str:
    return step_key("segment", SEG_VERSION, image=gan_key, segmenter=_models(run).segmenter_key)


def _detect_key(run: Run, mse: str, gan: str, labels: str | None) -> str:
    return step_key("detect", DETECT_VERSION, mse=mse, gan=gan, labels=labels, config=run.settings.detection_key())


def _pseudo_key(run: Run, mse: str, gan: str, detect: str) -> str:
    return step_key("pseudo_gt", PSEUDO_VERSION, mse=mse, gan=gan, mask=detect, feather=run.settings.feather)


def base_row(run: Run, item: Item) -> dict[str, Any]:
    """The columns every row of an image has, whatever happens to it."""
    s, models, given = run.settings, run.models, item.given
    digests = getattr(models, "digests", {}) if given is None else {}
    mse, gan = (None, None) if given is not None else (model_origin(s.mse_model), model_origin(s.gan_model))
    return {"stem": item.stem, "input_path": item.path if given is None else given["gan"][0] or given["mse"][0],
            "input_sha256": item.sha256 if given is None else given["gan"][1],
            "mse_model": mse, "gan_model": gan,  # a model fetched from a bucket: its URL, not this worker's copy
            "mse_model_sha256": digests.get("mse"), "gan_model_sha256": digests.get("gan"),
            "segmenter": s.segmenter_in_use, "config_hash": s.config_hash(mse="given" if given is not None else mse,
                                                                          gan="given" if given is not None else gan),
            "run_id": run.run_id, "status": "failed", "error": None, "cached": False, "computed": ""}


def _record_row(row: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    row.update({k: record[k] for k in ("artifact_fraction", "region_count", "height", "width", "min_area",
                                       "notes", "detect_seconds")}, status="ok", error=None)
    return row


def published_row(run: Run, item: Item) -> dict[str, Any] | None:
    """The image's row when its published outputs already come from the current store keys: no step
    needs to run, not even a claim. ``None`` otherwise."""
    if item.error is not None or (run.settings.labels_dir and (item.labels is None or item.labels[1] is None)):
        return None
    store = run.store
    keys = _keys(run, item)
    record = store.read_json("detect", keys["detect"])
    if record is None or not is_published(run.output_dir, item.stem, keys, run.remote):
        return None
    row = _record_row(base_row(run, item), record)
    row.update(cached=True, sr_seconds=0.0)
    return row


def _keys(run: Run, item: Item) -> _Keys:
    mse, gan = _sr_key(run, item, "mse"), _sr_key(run, item, "gan")
    labels = _labels_key(run, item, gan)
    detect = _detect_key(run, mse, gan, labels)
    return {"mse": mse, "gan": gan, "labels": labels, "detect": detect,
            "pseudo_gt": _pseudo_key(run, mse, gan, detect)}


class EntryPaths(TypedDict):
    """The files of an image's store entries (``labels``: None without a label map)."""

    mse: str
    gan: str
    labels: str | None
    mask: str
    pseudo_gt: str


def entry_paths(run: Run, item: Item) -> EntryPaths:
    """The files of an image's store entries under the run's keys (after a run whose row is ok, they exist):
    ``mse``, ``gan``, ``labels`` (None without a label map), ``mask``, ``pseudo_gt``."""
    store, keys = run.store, _keys(run, item)
    given = item.given is not None
    mse = item.given_file("mse")[0] if given else str(store.path("sr", keys["mse"], ".png"))
    gan = item.given_file("gan")[0] if given else str(store.path("sr", keys["gan"], ".png"))
    labels = None
    if keys["labels"] is not None:
        labels = ((item.labels or (None, None, None))[0] if run.settings.labels_dir
                  else str(store.path("segment", keys["labels"], ".png")))
    return {"mse": mse, "gan": gan, "labels": labels, "mask": str(store.path("detect", keys["detect"], ".png")),
            "pseudo_gt": str(store.path("pseudo_gt", keys["pseudo_gt"], ".png"))}


def about_input(error: str, item: Item, size: tuple[int, int] | None) -> str:
    """``error`` naming the input file(s) and the input's own size, when it does not already: a step
    after SR only sees the upscaled images, e.g. "expected images at least 11×11 pixels (the window),
    got 4×4" for a 1×1 input."""
    files = [item.path] if item.given is None else [item.given["mse"][0], item.given["gan"][0]]
    missing = [f for f in files if f and f not in error]
    if size is not None:
        shown = f"{size[0]}×{size[1]}"
        if re.search(rf"(?<!\d){shown}(?!\d)", error) is None:  # "1×1" is in "11×11"
            missing.append(f"{shown} pixels")
    return f"{error} (input: {', '.join(missing)})" if missing else error


def failed_row(run: Run, item: Item, error: BaseException | str, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The row of an image that could not be processed: its error names the input and its size.

    For an exception that is not a :class:`DesraError` (a bug, or an environment fault such as a full disk),
    the row also holds its formatted ``traceback`` (not a report column: text, so that it keeps no frame and
    no pixels alive), for whoever logs the failure; a ``DesraError`` is expected, and its message says all."""
    if not isinstance(error, DesraError | str):  # its type says which (e.g. "OSError: [Errno 28] No space…")
        return {**failed_row(run, item, f"{type(error).__name__}: {error}", size),
                "traceback": "".join(traceback.format_exception(error))}
    text = str(error)
    if isinstance(error, LabelMapError) and item.labels is not None and item.labels[0] and item.labels[0] not in text:
        text += f" (label map: {item.labels[0]})"  # the core checks the map as an array: name its file
    return {**base_row(run, item), "error": about_input(text, item, size)}


@dataclass
class ImageJob:
    """One image on its way through the steps. ``times``: step → ``[started, finished]`` (UTC) of each
    step this run computed; ``claims`` holds the store claims on entries it is computing."""

    run: Run
    item: Item
    order: int = 0
    size: tuple[int, int] | None = None
    lr: np.ndarray | None = None
    sr: dict[str, _Entry] = field(default_factory=dict)
    labels: _Entry | None = None
    detection: dict[str, Any] | None = None
    pseudo: _Entry | None = None
    times: dict[str, list[datetime | None]] = field(default_factory=dict)
    device_seconds: float = 0.0
    claims: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    # SR entries this job claimed in a bucket and computes (key → whether its claim was the first ever taken):
    # until they are published, last (publish), no other run can reach an entry derived from them (_covered)
    holding: dict[str, bool] = field(default_factory=dict)
    src: FileBytes | None = None  # the input's bytes, read once by load(), until read() decodes them
    labels_src: FileBytes | None = None  # the label map's bytes, read once by load(), until detect()
    load_error: BaseException | None = None  # why load() failed: plan() raises it, inside the image's task

    # --- reading (CPU) -----------------------------------------------------------------------------------

    def load(self) -> None:
        """Open the input (and its label map) once, without following a link, and read it whole (at most
        ``DESRA_MAX_INPUT_MB``): the bytes that are hashed here are the ones :meth:`read` decodes, and the
        item's ``sha256`` (its store keys, its row) becomes their digest. A failure is kept for
        :meth:`plan` (``load_error``), so that the image still gets its row and its task run.

        A file that can read its header alone (an object in a bucket: ``header_size``, one small ranged GET)
        is refused from it, in a run with models, when its result would be too large (a decompression bomb
        costs no download); when the header does not say, the file is read whole and checked as any other."""
        item = self.item
        try:
            if item.error is not None:
                return
            limit = max_input_bytes()
            if item.file is not None:
                header_size = getattr(item.file, "header_size", None)
                if header_size is not None and self.run.models is not None:
                    size = header_size()
                    if size is not None:
                        check_output_size(size[0], size[1], self.run.models.scale, max_output_pixels(),
                                          item.path or item.file.shown)
                self.src = item.file.read(limit)
                item = replace(item, sha256=self.src.sha256)
            if item.labels_file is not None and item.labels is not None and item.labels[2] is None:
                self.labels_src = item.labels_file.read(limit, LabelMapError)
                item = replace(item, labels=(item.labels[0], self.labels_src.sha256, None))
        except (DesraError, OSError) as e:
            self.load_error = e
        finally:
            self.item = item

    def _seen(self) -> list[tuple[str, str | None]] | None:
        """``(store key, digest or None)`` of "seen" records for the input and its label map when both are
        objects whose listing gave an ETag (see :meth:`recall`); ``None`` when either is not."""
        item = self.item
        files = [item.file]
        if item.labels_file is not None and item.labels is not None and item.labels[2] is None:
            files.append(item.labels_file)
        keys = []
        for file in files:
            etag, size = getattr(file, "etag", None), getattr(file, "size", None)
            if file is None or not etag or size is None:
                return None
            keys.append(step_key("seen", "1", url=file.shown, etag=etag, size=size))
        digests = [item.sha256, item.labels[1] if item.labels is not None else None]
        return list(zip(keys, digests[:len(keys)], strict=True))

    def recall(self) -> bool:
        """For an input (and label map) in a bucket whose listed ETag and size this output root has read before,
        take the digests of those reads without reading it again: a drop of objects that are all known costs a
        listing and one small record per image, no download. ``True`` when the digests were set; :meth:`load`
        still reads the input when a step needs it (and its digest is then that of the bytes it reads)."""
        if self.item.error is not None or self.item.file is None:
            return False
        seen = self._seen()
        if seen is None:
            return False
        digests = []
        for key, _ in seen:
            record = self.run.store.read_json("seen", key)
            if record is None or not isinstance(record.get("sha256"), str):
                return False
            digests.append(record["sha256"])
        item = replace(self.item, sha256=digests[0])
        if len(digests) > 1 and item.labels is not None:
            item = replace(item, labels=(item.labels[0], digests[1], None))
        self.item = item
        return True

    def remember(self) -> None:
        """After :meth:`load` read objects whose listing gave an ETag: record their digests for :meth:`recall`
        (only when the read saw the listed ETag: an object replaced in between is not recorded)."""
        seen = self._seen()
        if seen is None or self.load_error is not None:
            return
        reads = [(self.src, self.item.file), (self.labels_src, self.item.labels_file)]
        for (key, digest), (src, file) in zip(seen, reads, strict=False):
            if digest is not None and src is not None and getattr(src, "etag", None) == getattr(file, "etag", None):
                self.run.store.write_json("seen", key, {"sha256": digest})

    # --- bookkeeping -------------------------------------------------------------------------------------

    def plan(self) -> None:
        """Store keys of the SR results and label map, what the store already has, and the claims on what
        it has not (waiting while another run computes an entry, then taking it from the store)."""
        item = self.item
        if item.error is not None:
            raise InputImageError(item.error)
        if self.load_error is not None:
            raise self.load_error
        if item.given is None:
            if self.src is None or item.path is None:
                raise DesraError(f"expected the input's bytes from its one read (load), got none (file: {item.path})")
            # The header only: later messages can name the size.
            self.size = read_image_size_bytes(self.src.data, item.path)
        for role in ROLES:
            key = _sr_key(self.run, item, role)
            if item.given is not None:
                self.sr[role] = _Entry(key, item.given_file(role)[0], cached=True)
            else:
                self.sr[role] = self._claim("sr", key, ".png")
        if self.run.settings.labels_dir:
            path, digest, error = item.labels or (None, None, "no label map")
            if error is not None or path is None:
                raise InputImageError(error or "no label map")
            self.labels = _Entry(f"labels:{digest}", path, cached=True)
        elif self.run.settings.segmenter_in_use is not None:
            self.labels = self._claim("segment", _segment_key(self.run, self.sr["gan"].key), ".png",
                                      derived_from=(self.sr["gan"].key,))
        if not self.sr_needed:
            self.src = None  # no model sees the input: its bytes are not needed

    def _claim(self, step: str, key: str, suffix: str, derived_from: tuple[str, ...] = ()) -> _Entry:
        """The entry, claimed for this job (until the image is done) when the store has it not."""
        store = self.run.store
        path = store.path(step, key, suffix)
        if store.has(step, key, suffix):
            return _Entry(key, str(path), cached=True)
        fresh = self.claims.enter_context(self._covered(step, key, derived_from))
        cached = store.has_after_claim(step, key, suffix, first=fresh)  # another run may have finished it
        if step == "sr" and not cached and store.remote is not None:
            self.holding[key] = fresh
        return _Entry(key, str(path), cached=cached)

    @contextlib.contextmanager
    def _covered(self, step: str, key: str, derived_from: tuple[str, ...]) -> Iterator[bool]:
        """Exclusive hold on an entry, for the ``with`` block; yields whether nobody can have computed it yet.

        An entry derived from an SR result that this job holds in a bucket needs no claim of its own: another
        run reaches it only through that result, which it must claim (held here) or find in the bucket, where
        it appears only after every entry derived from it (:meth:`publish`). That saves a claim's requests
        (create, release) and its renewing thread. Otherwise it is :meth:`Store.claim`'s."""
        held = [self.holding[k] for k in derived_from if k in self.holding]
        if held:
            yield any(held)  # an input that nobody ever claimed was never computed: nor was anything from it
            return
        store = self.run.store
        with store.claim(step, key, blocking=True):
            yield store.first

    @property
    def sr_needed(self) -> list[str]:
        return [role for role in ROLES if not self.sr[role].cached]

    @property
    def segment_needed(self) -> bool:
        return self.labels is not None and not self.labels.cached

    # --- CPU ---------------------------------------------------------------------------------------------

    def read(self) -> None:
        """Decode the input, when a model has to see it; refuse first an input whose result would be too
        large (from the header: nothing is decoded)."""
        if not self.sr_needed:
            return
        scale = _models(self.run).scale
        size, path = _needed(self.size, "the input's size"), _needed(self.item.path, "the input's path")
        check_output_size(size[0], size[1], scale, max_output_pixels(), path)
        src = _needed(self.src, "the input's bytes")
        self.lr = read_image_bytes(src.data, path).pixels  # the bytes hashed by load()
        self.src = None

    def load_sr(self, role: str) -> None:
        """Decode an SR result that came from the store (for a model that needs its pixels)."""
        entry = self.sr[role]
        if entry.pixels is None:
            entry.pixels = pixels.read_pixels(entry.path)

    def store_sr(self, role: str) -> None:
        entry = self.sr[role]
        pixels.write_image(entry.path, _needed(entry.pixels, f"the {role} result"))
        self.times[f"sr_{role}"][1] = _now()

    def store_labels(self) -> None:
        labels = _needed(self.labels, "the label map's entry")
        write_image(labels.path, _needed(labels.pixels, "the label map"))
        self.times["segment"][1] = _now()

    def _pair(self) -> tuple[np.ndarray, np.ndarray]:
        """The MSE and GAN results in one dtype, keeping their precision (8-bit pairs stay ``uint8``,
        16-bit pairs ``uint16``; a mixed pair becomes ``float32``)."""
        mse, gan = (e.pixels if e.pixels is not None else pixels.read_pixels(e.path)
                    for e in (self.sr["mse"], self.sr["gan"]))
        if mse.shape != gan.shape:
            raise DesraError(f"expected MSE and GAN results of one size, got {mse.shape[1]}×{mse.shape[0]} and "
                             f"{gan.shape[1]}×{gan.shape[0]} (files: {self.sr['mse'].path}, {self.sr['gan'].path})")
        return (mse, gan) if mse.dtype == gan.dtype else (to_float32(mse), to_float32(gan))

    def detect(self) -> None:
        """Eq. 7 map, semantic adjustment, threshold and clean-up: ``desra_core.detect_artifacts`` with the
        run's :class:`~desra_core.DetectionConfig` as it is. Writes the mask and the record (last)."""
        store = self.run.store
        labels_key = None if self.labels is None else self.labels.key
        key = _detect_key(self.run, self.sr["mse"].key, self.sr["gan"].key, labels_key)
        inputs = (self.sr["mse"].key, self.sr["gan"].key)
        with self._covered("detect", key, inputs) as fresh:  # another run may be detecting this very image
            cached = None if fresh else store.read_json("detect", key)
            if cached is not None and store.has("detect", key, ".png"):
                self.detection = {**cached, "cached": True}
                self.labels_src = None
                return
            started, start = _now(), time.perf_counter()
            mse, gan = self._pair()
            if mse.dtype != np.uint8:  # the detector takes uint8, or float32 in [0, 1]
                mse, gan = to_float32(mse), to_float32(gan)
            label_map = None
            if self.labels is not None:
                label_map = self.labels.pixels
                if label_map is None and self.labels_src is not None:  # the bytes hashed by load()
                    label_map = read_label_map_bytes(self.labels_src.data, self.labels.path)
                elif label_map is None:
                    label_map = read_label_map(self.labels.path)
                self.labels_src = None
            det = detect_artifacts(mse, gan, label_map, self.run.settings.detection)
            mask_path = store.path("detect", key, ".png")
            pixels.write_mask(mask_path, det.mask)
            record = {
                "stem": self.item.stem, "key": key, "mask_path": str(mask_path), "height": int(det.mask.shape[0]),
                "width": int(det.mask.shape[1]), "artifact_fraction": det.artifact_fraction,
                "region_count": len(det.regions), "min_area": det.min_area, "notes": "; ".join(det.notes),
                "regions": [{"id": r.id, "x": r.bbox[0], "y": r.bbox[1], "w": r.bbox[2], "h": r.bbox[3],
                             "area": r.area, "mean_adjusted": r.mean_adjusted,
                             "classes": json.dumps([[c.index, c.name, round(c.fraction, 4)] for c in r.classes])}
                            for r in det.regions],
                "detect_seconds": time.perf_counter() - start,
            }
            try:
                store.write_json("detect", key, record)  # written last: the record marks the entry complete
            except OSError:  # e.g. a full disk: leave no mask that looks finished without its record
                mask_path.unlink(missing_ok=True)
                raise
        self.detection = {**record, "cached": False, "mask": det.mask}
        self.times["detect"] = [started, _now()]

    def pseudo_gt(self) -> None:
        """MSE pixels inside the mask, GAN pixels elsewhere, at the results' bit depth."""
        store, detection = self.run.store, _needed(self.detection, "the detection")
        key = _pseudo_key(self.run, self.sr["mse"].key, self.sr["gan"].key, detection["key"])
        path = store.path("pseudo_gt", key, ".png")
        with self._covered("pseudo_gt", key, (self.sr["mse"].key, self.sr["gan"].key)) as fresh:
            if store.has_after_claim("pseudo_gt", key, ".png", first=fresh):
                self.pseudo = _Entry(key, str(path), cached=True)
                return
            started = _now()
            mse, gan = self._pair()
            mask = detection.get("mask")
            mask = pixels.read_mask(detection["mask_path"]) if mask is None else mask
            pixels.write_image(path, build_pseudo_gt(gan, mse, mask, feather=self.run.settings.feather))
        self.pseudo = _Entry(key, str(path), cached=False)
        self.times["pseudo_gt"] = [started, _now()]

    def finish_row(self) -> dict[str, Any]:
        """The image's report row (before publishing)."""
        detection = _needed(self.detection, "the detection")
        row = _record_row(base_row(self.run, self.item), detection)
        steps = {"sr/mse": self.sr["mse"], "sr/gan": self.sr["gan"],
                 "labels": None if self.run.settings.labels_dir else self.labels,
                 "detect": _Entry("", "", cached=detection["cached"]), "pseudo_gt": self.pseudo}
        row["computed"] = ",".join(step for step, e in steps.items() if e is not None and not e.cached)
        row["cached"] = not row["computed"]
        row["sr_seconds"] = self.device_seconds if self.item.given is None else None
        return row

    def publish(self, row: dict[str, Any]) -> dict[str, Any]:
        """Copy the store entries to ``masks/``, ``pseudo_gt/``, ``sr/…``, ``labels/`` and write the image's
        report; the keys are recorded last, so a later run skips an image whose outputs are current."""
        started = _now()
        detection, pseudo = _needed(self.detection, "the detection"), _needed(self.pseudo, "the pseudo-GT")
        files = {"masks": detection["mask_path"], "pseudo_gt": pseudo.path}
        entries = {"masks": ("detect", detection["key"]), "pseudo_gt": ("pseudo_gt", pseudo.key)}
        if self.labels is not None and not self.run.settings.labels_dir:
            files["labels"] = self.labels.path
            entries["labels"] = ("segment", self.labels.key)
        if self.item.given is None:  # last: in a bucket, the SR entries appear after all derived from them
            files.update({"sr/mse": self.sr["mse"].path, "sr/gan": self.sr["gan"].path})
            entries.update({"sr/mse": ("sr", self.sr["mse"].key), "sr/gan": ("sr", self.sr["gan"].key)})
        keys = {"mse": self.sr["mse"].key, "gan": self.sr["gan"].key,
                "labels": None if self.labels is None else self.labels.key, "detect": detection["key"],
                "pseudo_gt": pseudo.key}
        if self.item.given is not None:  # the review page shows given SR results where they are
            row.update(mse_path=self.item.given["mse"][0], gan_path=self.item.given["gan"][0])
        self.times["publish"] = [started, None]
        self._stamp(row)
        row["publish_finished_at"] = None
        store = self.run.store
        publish_image(row, files, detection["regions"], self.run.output_dir, keys, self.run.remote,
                      refer=lambda folder, obj, digest: store.refer(*entries[folder], ".png", obj, digest))
        self.review_assets(row)
        row["publish_finished_at"] = self.times["publish"][1] = _now()
        return row

    def review_assets(self, row: dict[str, Any]) -> None:
        """The image's pictures for the review page, encoded now (on a CPU worker, while the device works on
        other images) so that the page at the end of the run only assembles them."""
        try:
            prepare_pictures(row, self.run.output_dir, fragments=review_fragments(self.run.output_dir),
                             read_pixels=pixels.read_pixels, read_mask_file=pixels.read_mask)
        except (OSError, DesraError):  # the page encodes them itself, or shows why it cannot
            pass

    def publish_failure(self, row: dict[str, Any]) -> dict[str, Any]:
        """Write the failed image's report (its row, no outputs); a stale publication record goes."""
        self._stamp(row)
        publish_image(row, {}, [], self.run.output_dir, None, self.run.remote)
        return row

    def _stamp(self, row: dict[str, Any]) -> None:
        for step, (started, finished) in self.times.items():
            row[f"{step}_started_at"], row[f"{step}_finished_at"] = started, finished

    # --- device ------------------------------------------------------------------------------------------

    def super_resolve(self, role: str) -> None:
        """One SR model on the input (a model call, nothing else)."""
        self.times[f"sr_{role}"] = [_now(), None]
        start = time.perf_counter()
        self.sr[role].pixels = _models(self.run).super_resolve(role, _needed(self.lr, "the input's pixels"))
        self.device_seconds += time.perf_counter() - start

    def segment(self) -> None:
        """ADE20K label map of the GAN result (a model call, nothing else)."""
        self.times["segment"] = [_now(), None]
        labels = _needed(self.labels, "the label map's entry")
        labels.pixels = _models(self.run).segment(_needed(self.sr["gan"].pixels, "the GAN result"))

    def done_with_lr(self) -> None:
        self.lr = None

