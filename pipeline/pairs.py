"""Fine-tuning data from the pipeline: training pairs and validation images, read from a run's store.

Every fine-tuning entry point (the ``finetune`` flow, ``desra finetune``, ``desra evaluate``) gets its
images here, with the run's exact :class:`~desra.pipeline.settings.Settings`. :func:`process_stored` runs the
pipeline (:func:`desra.pipeline.stream.process_images`) over a drop: after a run with the same settings every
entry is in the store, so nothing is super-resolved or detected again (the rows' ``computed`` column is
empty); otherwise the pipeline computes what is missing, once, into the store. :func:`read_stored` then
reads an ok image back: the LR input from its file; the MSE and GAN results, the label map and the mask
from the store entries under the run's keys (:func:`desra.pipeline.steps.entry_paths`).

:func:`prepare_finetuning` does the whole preparation: the training pairs
(:func:`~desra_core.finetune.data.make_pair` with the run's ``feather``: each target is the pseudo-GT the
run published), their scores under the original model (artifact fraction from the rows, detail kept from
the stored pixels and mask), and the validation images (held out of the drop, or a separate folder run
through the same pipeline under its own output root) with their original scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desra.pipeline import pixels
from desra.pipeline.drop import drop_items
from desra.pipeline.models import Models
from desra.pipeline.settings import Settings
from desra.pipeline.steps import Item, Run, entry_paths
from desra.pipeline.stream import Device, process_images
from desra_core import DesraError
from desra_core.finetune.data import TrainingPair, make_pair
from desra_core.finetune.pipeline import ImageScore, detail_kept
from desra_core.finetune.validation import ValidationImage, split_stems
from desra_core.folder import max_input_bytes
from desra_core.image import read_image, read_image_bytes, read_label_map

__all__ = ["FinetuneData", "StoredImage", "prepare_finetuning", "process_stored", "read_stored"]


@dataclass(frozen=True, kw_only=True)
class StoredImage:
    """One ok image of a run, read back: ``lr`` from the input file, ``mse``/``gan`` results (``uint8`` or
    ``uint16 (H, W, 3)``), ``labels`` (``uint8 (H, W)`` or None), ``mask`` (``bool (H, W)``) from the store;
    ``artifact_fraction`` from the image's row."""

    stem: str
    file: str
    lr: np.ndarray
    mse: np.ndarray
    gan: np.ndarray
    labels: np.ndarray | None
    mask: np.ndarray
    artifact_fraction: float

    def score(self, model: str) -> ImageScore:
        """The image under the run's GAN model: the row's artifact fraction, the detail kept outside the mask."""
        return ImageScore(self.stem, model, self.artifact_fraction, detail_kept(self.gan, self.mse, self.mask))

    def pair(self, feather: float) -> TrainingPair:
        """The training pair; its target is the pseudo-GT the run wrote (same pixels, same ``feather``)."""
        return make_pair(self.lr, self.gan, self.mse, self.mask, name=self.stem, feather=feather)

    def validation_image(self) -> ValidationImage:
        return ValidationImage(name=self.stem, lr=self.lr, mse_sr=self.mse, gan_sr=self.gan, labels=self.labels)


def process_stored(run: Run, items: Sequence[Item], *, device: Device | None = None,
                   on_row: Callable[[dict[str, Any]], None] | None = None
                   ) -> tuple[list[tuple[Item, dict[str, Any]]], list[dict[str, Any]]]:
    """Run ``items`` through the pipeline (from the store where it has them): ``(ok, failed)``, the ok
    images as ``(item, row)`` (the item as its run read it: with its digests) and the failed images' rows
    (each with its error)."""
    loaded = dict(enumerate(items))

    def on_load(i: int, item: Item) -> None:
        loaded[i] = item

    rows = process_images(items, run, device=device, on_row=on_row, on_load=on_load)
    ok = [(loaded[i], row) for i, row in enumerate(rows) if row.get("status") == "ok"]
    return ok, [row for row in rows if row.get("status") != "ok"]


def read_stored(run: Run, item: Item, row: dict[str, Any]) -> StoredImage:
    """An ok image's input and store entries (see :class:`StoredImage`); raises DesraError naming the file
    when an entry is gone."""
    if item.path is None:
        raise DesraError(f"expected an image with a low-resolution input, got SR results only ({item.stem})")
    paths = entry_paths(run, item)
    missing = [p for p in (paths["mse"], paths["gan"], paths["labels"], paths["mask"])
               if p is not None and not Path(p).is_file()]
    if missing:
        raise DesraError(f"expected the store entries of {item.stem} after its run, got none at {missing[0]}")
    return StoredImage(stem=item.stem, file=item.path, lr=_input_pixels(item, item.path),
                       mse=pixels.read_pixels(paths["mse"]), gan=pixels.read_pixels(paths["gan"]),
                       labels=None if paths["labels"] is None else read_label_map(paths["labels"]),
                       mask=pixels.read_mask(paths["mask"]), artifact_fraction=float(row["artifact_fraction"]))


def _input_pixels(item: Item, path: str) -> np.ndarray:
    """The input's pixels, read once more (through its folder, no link followed) and checked to be the bytes
    its run read: a file changed since would pair other pixels with the stored results."""
    if item.file is None:
        return read_image(path).pixels
    src = item.file.read(max_input_bytes())
    if item.sha256 is not None and src.sha256 != item.sha256:
        raise DesraError(f"expected the input as its run read it (sha256 {item.sha256[:12]}…), got a file that "
                         f"has changed since (sha256 {src.sha256[:12]}…) (file: {path})")
    return read_image_bytes(src.data, path).pixels


@dataclass(frozen=True)
class FinetuneData:
    """What fine-tuning needs, read from the pipeline's store.

    ``pairs`` and ``train_scores`` (the original model) for the training images, ``train_files`` (stem →
    input file); ``validation`` images with ``validation_original`` (stem → ``(artifact_fraction, detail)``
    under the original model) and ``validation_files``; ``how`` the split was made (for the card);
    ``failed`` the rows of images the pipeline could not process (left out); ``rows`` every ok row.
    """

    settings: Settings
    pairs: list[TrainingPair]
    train_scores: list[ImageScore]
    train_files: dict[str, str]
    validation: list[ValidationImage]
    validation_original: dict[str, tuple[float, float]]
    validation_files: dict[str, str]
    how: dict[str, object]
    failed: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    _train: tuple[Run, list[tuple[Item, dict[str, Any]]]]

    def train_images(self) -> Iterator[ValidationImage]:
        """The training images as the validator scores them (read again from the store, one at a time)."""
        run, ok = self._train
        for item, row in ok:
            yield read_stored(run, item, row).validation_image()


def _ok_images(settings: Settings, input_dir: str | Path, output_dir: str | Path, run_id: str,
               stems: list[str] | None,
               device: Device | None, on_row: Callable[[dict[str, Any]], None] | None,
               what: str) -> tuple[Run, dict[str, tuple[Item, dict[str, Any]]], list[dict[str, Any]]]:
    run = Run(settings=settings, output_dir=str(output_dir), run_id=run_id, models=Models(settings))
    ok, failed = process_stored(run, drop_items(str(input_dir), stems, settings.labels_dir), device=device,
                                on_row=on_row)
    if not ok:
        first = f"; first: {failed[0]['stem']}: {failed[0].get('error')}" if failed else ""
        raise DesraError(f"expected {what} in {input_dir}, got none that the pipeline could process{first}")
    return run, {item.stem: (item, row) for item, row in ok}, failed


def prepare_finetuning(settings: Settings, input_dir: str | Path, output_dir: str | Path, *, run_id: str,
                       stems: list[str] | None = None, holdout: float = 0.25, seed: int = 0,
                       validate_dir: str | Path | None = None, validate_labels_dir: str | Path | None = None,
                       validation_output: str | Path | None = None, device: Device | None = None,
                       on_row: Callable[[dict[str, Any]], None] | None = None) -> FinetuneData:
    """Training pairs and validation images of ``input_dir`` (all, or only ``stems``) under ``settings``,
    from the store under ``output_dir`` (see the module docstring).

    Validation: a separate ``validate_dir`` (its label maps from ``validate_labels_dir``, else from the
    run's ``labels_dir`` by stem, else the run's segmenter; its outputs under ``validation_output``,
    default ``output_dir/validation``), or a ``holdout`` share of the ok images chosen with ``seed``.
    Images the pipeline fails on are left out (their rows in ``failed``).

    Raises:
        DesraError: no image (or no validation image) the pipeline could process.
        ConfigError: a split that leaves nothing to train or to validate on.
    """
    run, ok, failed = _ok_images(settings, input_dir, output_dir, run_id, stems, device, on_row,
                                 "images to fine-tune on")
    if validate_dir is not None:
        vsettings = settings.replace(labels_dir=str(validate_labels_dir) if validate_labels_dir
                                     else settings.labels_dir)
        vrun, vok, vfailed = _ok_images(vsettings, validate_dir, validation_output or Path(output_dir) / "validation",
                                        run_id, None, device, on_row, "validation images")
        failed += vfailed
    else:
        vrun, vok = run, ok
    train, held, how = split_stems(list(ok), holdout=holdout, seed=seed,
                                   folder=None if validate_dir is None else str(validate_dir), folder_stems=list(vok))
    pairs, scores, train_files = [], [], {}
    for stem in train:
        image = read_stored(run, *ok[stem])
        train_files[stem] = image.file
        pairs.append(image.pair(settings.feather))
        scores.append(image.score(settings.gan_model))
    validation, original, validation_files = [], {}, {}
    for stem in held:
        image = read_stored(vrun, *vok[stem])
        validation_files[stem] = image.file
        validation.append(image.validation_image())
        score = image.score(settings.gan_model)
        original[stem] = (score.artifact_fraction, score.detail_kept)
    return FinetuneData(
        settings=settings, pairs=pairs, train_scores=scores, train_files=train_files,
        validation=validation, validation_original=original, validation_files=validation_files,
        how=how, failed=failed, rows=[row for _, row in ok.values()] + ([] if vok is ok else
                                                                       [row for _, row in vok.values()]),
        _train=(run, [ok[s] for s in train]))
