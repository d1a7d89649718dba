"""Regenerate the example drop in ``examples/drop/`` that the README's first command runs on.

For each photo stem it writes::

    examples/drop/lr/<stem>.png      160x160 low-resolution crop (the SR input)
    examples/drop/mse/<stem>.png     x4 by an MSE/L1-trained model (SPAN)           640x640
    examples/drop/gan/<stem>.png     x4 by a GAN model (Real-ESRGAN x4plus)          640x640
    examples/drop/labels/<stem>.png  uint8 ADE20K index 0..149 per pixel, 255 = unlabeled, 640x640
    examples/drop/SOURCES.md         photos, licences, crop boxes, model files + sha256, runtimes

The photos are public-domain / CC0 samples bundled in the scikit-image wheel; the labels come from
the TF-hub ADE20K DeepLabV3 (MobileNetV2) TFLite model run on each GAN image.

Needs, besides this project's environment (torch, spandrel, opencv, numpy)::

    pip install scikit-image ai-edge-litert

and the model files in ``--models`` (default ``../shared/models`` relative to the repository root)::

    span_x4_ch52.mse.safetensors
    realesrgan_x4plus.gan.safetensors
    seg_ade20k/deeplabv3_mnv2_ade20k_default_1.tflite

Runs on CPU in float32; the output is deterministic for a given set of package versions.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
CROP = 160  # LR crop side; the SR outputs are 4x that
MSE_MODEL = "span_x4_ch52.mse.safetensors"
GAN_MODEL = "realesrgan_x4plus.gan.safetensors"
SEG_MODEL = "seg_ade20k/deeplabv3_mnv2_ade20k_default_1.tflite"

# stem, skimage.data function, (x, y) of the crop's top-left corner, licence as the skimage docstring states it
PHOTOS = [
    ("rocket", "rocket", (440, 100),
     "public domain (SpaceX launch photo, released into the public domain by SpaceX)"),
    ("astronaut", "astronaut", (240, 10),
     "public domain (NASA portrait of Eileen Collins; no known copyright restrictions)"),
    ("coffee", "coffee", (420, 180),
     "CC0 (photo by Rachel Michetti; no copyright restrictions)"),
]


def fail(message: str) -> None:
    sys.exit(f"make_examples: {message}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_crop(func: str, x: int, y: int) -> np.ndarray:
    """The ``CROP``-square RGB uint8 crop at (x, y) of ``skimage.data.<func>()``."""
    from skimage import data

    image = getattr(data, func)()
    crop = image[y:y + CROP, x:x + CROP, :3]
    if crop.shape != (CROP, CROP, 3):
        fail(f"crop ({x}, {y}) of skimage.data.{func} {image.shape} is not {CROP}x{CROP}")
    return np.ascontiguousarray(crop)


def load_sr(path: Path):
    from spandrel import ModelLoader

    descriptor = ModelLoader().load_from_file(str(path))
    if descriptor.scale != 4:
        fail(f"{path.name} is a x{descriptor.scale} model, expected x4")
    descriptor.model.eval()
    return descriptor.model


def super_resolve(model, image: np.ndarray) -> np.ndarray:
    """x4 SR of an RGB uint8 image on CPU in float32; returns RGB uint8."""
    import torch

    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0)
    with torch.inference_mode():
        y = model(x).clamp(0.0, 1.0)
    return y[0].permute(1, 2, 0).mul(255.0).round().to(torch.uint8).numpy()


class Segmenter:
    """ADE20K DeepLabV3-MobileNetV2 (TF-hub, 151 outputs: 0 = other, 1..150 = ADE20K classes)."""

    def __init__(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        _, self.height, self.width, _ = self.input["shape"]
        if self.output["shape"][-1] != 151:
            fail(f"{path.name} has {self.output['shape'][-1]} output classes, expected 151")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W) ADE20K indices 0..149 (255 = 'other') for an RGB uint8 image."""
        h, w = image.shape[:2]
        x = cv2.resize(image, (int(self.width), int(self.height)), interpolation=cv2.INTER_AREA)
        x = x.astype(np.float32) / 127.5 - 1.0  # DeepLab MobileNet normalisation to [-1, 1]
        self.interpreter.set_tensor(self.input["index"], x[None])
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])[0].argmax(-1)
        labels = np.where(out == 0, 255, out - 1).astype(np.uint8)
        return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def class_histogram(labels: np.ndarray, names, top: int = 6) -> str:
    values, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    parts = []
    for i in order:
        name = "unlabeled" if values[i] == 255 else names[values[i]]
        parts.append(f"{values[i]} {name} {100.0 * counts[i] / labels.size:.1f}%")
    return ", ".join(parts)


def preview(rows, path: Path) -> None:
    """LR (upscaled) | MSE | GAN | labels (random palette), one row per stem, at half size."""
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    palette[255] = 0
    tiles = []
    for lr, mse, gan, labels in rows:
        up = cv2.resize(lr, mse.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        tiles.append(np.hstack([up, mse, gan, palette[labels]])[::2, ::2])
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(tiles), cv2.COLOR_RGB2BGR))


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        fail(f"could not write {path}")


def write_sources(path: Path, models: Path) -> None:
    lines = ["# Sources of the example drop", "",
             "Generated by `examples/make_examples.py`; rerun it to regenerate every file here.", "",
             "## Photos (bundled in the scikit-image wheel, loaded with `skimage.data.<name>()`)", "",
             f"scikit-image {metadata.version('scikit-image')}. Crop boxes are `(x, y, width, height)` "
             "in the original photo; the crop is the low-resolution input in `lr/`.", "",
             "| stem | skimage.data | licence | crop box |", "|---|---|---|---|"]
    for stem, func, (x, y), licence in PHOTOS:
        lines.append(f"| {stem} | `{func}` | {licence} | ({x}, {y}, {CROP}, {CROP}) |")
    lines += ["", "## Super-resolution models (x4, run with spandrel on CPU in float32)", "",
              f"spandrel {metadata.version('spandrel')}, torch {metadata.version('torch')}.", "",
              "| role | file | sha256 |", "|---|---|---|",
              f"| MSE (`mse/`) | `{MSE_MODEL}` | `{sha256(models / MSE_MODEL)}` |",
              f"| GAN (`gan/`) | `{GAN_MODEL}` | `{sha256(models / GAN_MODEL)}` |",
              "", "## Segmentation (`labels/`)", "",
              f"ADE20K DeepLabV3 (MobileNetV2) TFLite model `{SEG_MODEL}` "
              f"(sha256 `{sha256(models / SEG_MODEL)}`), run with ai-edge-litert "
              f"{metadata.version('ai-edge-litert')} on each GAN image resized to the model input "
              "(area interpolation), inputs scaled to [-1, 1]; the argmax map is resized back with "
              "nearest neighbour. Model output 0 ('other') becomes 255 (unlabeled), output c ≥ 1 "
              "becomes ADE20K index c − 1. Labels are machine-made, not ground truth.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models",
                        help="folder with the SR and segmentation model files (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "drop",
                        help="drop folder to write (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and TFLite")
    parser.add_argument("--preview", type=Path, help="also write a side-by-side preview PNG here")
    args = parser.parse_args(argv)

    missing = [name for name in (MSE_MODEL, GAN_MODEL, SEG_MODEL) if not (args.models / name).is_file()]
    if missing:
        fail(f"missing model files in {args.models}: {', '.join(missing)} (point --models at them)")
    for module, package in (("skimage", "scikit-image"), ("ai_edge_litert", "ai-edge-litert")):
        try:
            __import__(module)
        except ImportError:
            fail(f"cannot import {module}: pip install {package}")

    import torch

    from desra_core import default_class_table

    torch.set_num_threads(args.threads)
    names = default_class_table().names
    mse_model, gan_model = load_sr(args.models / MSE_MODEL), load_sr(args.models / GAN_MODEL)
    segment = Segmenter(args.models / SEG_MODEL, args.threads)

    rows = []
    for stem, func, (x, y), _ in PHOTOS:
        lr = load_crop(func, x, y)
        mse, gan = super_resolve(mse_model, lr), super_resolve(gan_model, lr)
        labels = segment(gan)
        for sub, image in (("lr", lr), ("mse", mse), ("gan", gan), ("labels", labels)):
            write_png(args.out / sub / f"{stem}.png", image)
        print(f"{stem}: {class_histogram(labels, names)}", flush=True)
        rows.append((lr, mse, gan, labels))

    write_sources(args.out / "SOURCES.md", args.models)
    if args.preview:
        preview(rows, args.preview)
    print(f"wrote {len(PHOTOS)} examples to {args.out}")


if __name__ == "__main__":
    main()
