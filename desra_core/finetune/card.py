"""The model card of a fine-tuning run: what was tuned on what, how, and what it changed.

:func:`build_model_card` returns a JSON-able dict (``model_card.json`` beside the generator): the base
model and its digest, the MSE reference, the train and validation stems with the sha256 of their files,
how the validation images were chosen, what the validation can tell (``evidence``: images and artifact
pixels, the noise of validating the original model again, whether it suffices), every setting, every
validated checkpoint (with the image that keeps the least detail), the chosen one and why, and the artifact
fraction and detail before and after on the train and the validation images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..image import atomic_write_bytes
from ..models.sr import SRModel
from .pipeline import ImageScore
from .trainer import FinetuneResult
from .validation import JITTERS, Candidate, Evidence, evidence_gap, improved_images, worst_detail

__all__ = ["CARD_FORMAT", "build_model_card", "file_sha256", "write_model_card"]

CARD_FORMAT = "desra-model-card-1"


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _model(model: SRModel) -> dict[str, object]:
    return {"source": str(model.source), "file": str(model.path), "sha256": model.file_sha256(),
            "architecture": model.architecture, "scale": model.scale}


def _means(scores: Sequence[ImageScore]) -> dict[str, float | None]:
    fractions = [s.artifact_fraction for s in scores]
    details = [s.detail_kept for s in scores if math.isfinite(s.detail_kept)]
    return {"artifact_fraction": _finite(sum(fractions) / len(fractions)) if fractions else None,
            "detail": _finite(sum(details) / len(details)) if details else None}


def _before_after(before: Sequence[ImageScore], after: Sequence[ImageScore] | None) -> dict[str, object]:
    b = _means(before)
    a = _means(after) if after else {"artifact_fraction": None, "detail": None}
    ratio = a["detail"] / b["detail"] if a["detail"] is not None and b["detail"] else None
    per_image: dict[str, dict[str, dict[str, float | None]]] = {
        s.image: {"original": {"artifact_fraction": s.artifact_fraction, "detail": _finite(s.detail_kept)}}
        for s in before}
    for s in after or ():
        per_image.setdefault(s.image, {})["fine_tuned"] = {"artifact_fraction": s.artifact_fraction,
                                                           "detail": _finite(s.detail_kept)}
    return {"artifact_fraction": {"original": b["artifact_fraction"], "fine_tuned": a["artifact_fraction"]},
            "detail": {"original": b["detail"], "fine_tuned": a["detail"]}, "detail_ratio": _finite(ratio),
            "per_image": per_image}


def _evidence(evidence: Evidence | None, min_artifact_images: int) -> dict[str, object] | None:
    if evidence is None:
        return None
    gap = evidence_gap(evidence, min_artifact_images)
    return {"validation_images": len(evidence.original.per_image),
            "images_with_artifacts": len(evidence.with_artifacts),
            "images_above_noise": len(evidence.above_noise),
            "artifact_pixels": sum(evidence.artifact_pixels(n) for n in evidence.original.per_image),
            "min_artifact_images": min_artifact_images,
            "mean_artifact_fraction": evidence.original.artifact_fraction,
            "mean_noise": evidence.mean_noise,
            "noise_method": f"the original model validated again on each image cropped by (rows, columns) = "
                            f"{', '.join(map(str, JITTERS))} input pixels; the largest change of the artifact "
                            "fraction, per image and of the mean",
            "sufficient": gap is None, "missing": gap,
            "per_image": {n: {"artifact_fraction": evidence.fraction(n), "artifact_pixels": evidence.artifact_pixels(n),
                              "pixels": evidence.pixels[n], "noise": evidence.noise[n]}
                          for n in sorted(evidence.original.per_image)}}


def _checkpoint(c: Candidate, evidence: Evidence | None) -> dict[str, object]:
    record: dict[str, object] = {"step": c.step, "weights": c.weights,
                                 "validation_artifact_fraction": c.score.artifact_fraction,
                                 "validation_detail_ratio": c.score.detail_ratio}
    if evidence is not None:
        image, ratio = worst_detail(c.score, evidence.original)
        record.update(validation_worst_detail_image=image, validation_worst_detail_ratio=ratio,
                      improved_images=improved_images(c.score, evidence))
    return record


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, Path):
        return str(value)
    return value


def build_model_card(*, base: SRModel, mse: SRModel, train_files: Mapping[str, str | Path],
                     validation_files: Mapping[str, str | Path], validation_split: Mapping[str, object],
                     settings: Mapping[str, object], result: FinetuneResult,
                     train_before: Sequence[ImageScore], train_after: Sequence[ImageScore] | None,
                     validation_before: Sequence[ImageScore], validation_after: Sequence[ImageScore] | None,
                     generator_file: str | None, min_artifact_images: int = 3) -> dict[str, Any]:
    """The card as a JSON-able dict (see the module docstring).

    Args:
        base, mse: the GAN model that was fine-tuned (as loaded, before training) and the MSE reference.
        train_files, validation_files: stem → image file, for the digests.
        validation_split: how the validation images were chosen, e.g. ``{"mode": "held-out", "share": 0.25,
            "seed": 0}`` or ``{"mode": "folder", "folder": "…"}``.
        settings: every setting of the run (training, detection, tiling…), JSON-able values or dataclasses.
        result: the training outcome (with validation).
        train_before / train_after: scores of the original / chosen weights on the training images
            (``train_after`` None when nothing was chosen); likewise ``validation_before`` / ``validation_after``.
        generator_file: the name of the written generator, None when none was written.
        min_artifact_images: the shipping rule's least number of validation images with artifacts.
    """
    chosen = result.chosen
    card: dict[str, object] = {
        "format": CARD_FORMAT,
        "base_model": _model(base),
        "mse_model": _model(mse),
        "train_images": [{"stem": s, "sha256": file_sha256(p)} for s, p in sorted(train_files.items())],
        "validation_images": [{"stem": s, "sha256": file_sha256(p)} for s, p in sorted(validation_files.items())],
        "validation_split": dict(validation_split),
        "settings": dict(settings),
        "generator": generator_file,
        "evidence": _evidence(result.evidence, min_artifact_images),
        "chosen": None if chosen is None else _checkpoint(chosen, result.evidence),
        "reason": result.reason,
        "checkpoints": [_checkpoint(c, result.evidence) for c in result.candidates],
        "train": _before_after(train_before, train_after),
        "validation": _before_after(validation_before, validation_after),
    }
    return {key: _jsonable(value) for key, value in card.items()}


def write_model_card(card: Mapping[str, object], path: str | Path) -> Path:
    """Write ``card`` as indented JSON, atomically; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(card, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return path
