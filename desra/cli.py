"""The ``desra`` command line.

``desra detect``  find GAN-SR artifacts in folders of MSE-SR / GAN-SR results (masks, pseudo-GT, report)
``desra metrics`` score predicted masks against ground-truth masks
``desra upscale`` super-resolve a folder with any SR model spandrel loads
``desra run``     the full pipeline (flow ``desra``) in this process, on Prefect's embedded API
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from desra_core import ConfigError, DesraError, DetectionConfig

__all__ = ["build_parser", "main"]


def _progress(desc: str):
    """A progress-bar wrapper when stderr is a terminal, else the identity."""
    def wrap(items):
        items = list(items)
        if not sys.stderr.isatty():
            return iter(items)
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="img", file=sys.stderr)
    return wrap


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_detection_options(p: argparse.ArgumentParser) -> None:
    defaults = DetectionConfig()
    p.add_argument("--threshold", type=float, default=defaults.threshold,
                   help="artifact where the adjusted similarity is below this (default: %(default)s)")
    area = p.add_mutually_exclusive_group()
    area.add_argument("--min-area", type=int, default=defaults.min_area,
                      help="keep regions of more than this many pixels (default: %(default)s, the paper's)")
    area.add_argument("--min-area-fraction", type=float, default=None,
                      help="instead of --min-area: keep regions larger than this fraction of the image")


def _cmd_detect(args: argparse.Namespace) -> int:
    from desra.batch import DetectJob, run_detect, write_report

    config = DetectionConfig(threshold=args.threshold, min_area=args.min_area,
                             min_area_fraction=args.min_area_fraction)
    segmenter = None
    if args.segmenter:
        from desra_core.models.segmentation import load_segmenter

        segmenter = load_segmenter(args.segmenter, device=_device(args.device))
    job = DetectJob(mse_dir=args.mse, gan_dir=args.gan, out_dir=args.out, labels_dir=args.labels,
                    segmenter=segmenter, config=config, feather=args.feather)
    report = run_detect(job, progress=_progress("detect"))
    report_path = args.out / "report.parquet"
    write_report(report, report_path)
    failed = report[report["status"] != "ok"]
    for row in failed.itertuples():
        print(f"failed: {row.stem}: {row.error}", file=sys.stderr)
    ok = report[report["status"] == "ok"]
    print(f"{len(ok)} ok, {len(failed)} failed; {int((ok['region_count'] > 0).sum())} image(s) with artifacts; "
          f"report: {report_path}")
    return 1 if len(failed) else 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from desra_core import artifact_metrics
    from desra_core.image import list_images, read_mask

    pred, gt = list_images(args.pred), list_images(args.gt)
    stems = sorted(pred.keys() & gt.keys())
    for side, names in (("prediction", pred.keys() - gt.keys()), ("ground truth", gt.keys() - pred.keys())):
        if names:
            print(f"warning: {len(names)} {side} mask(s) without a partner, ignored: {sorted(names)[:5]}",
                  file=sys.stderr)
    if not stems:
        print(f"error: no mask stem is in both {args.pred} and {args.gt}", file=sys.stderr)
        return 2
    result = artifact_metrics((read_mask(pred[s]) for s in stems), (read_mask(gt[s]) for s in stems),
                              overlap=args.overlap, border=args.border)
    print(f"{result.images} image(s), {result.predicted_regions} predicted and {result.true_regions} true regions")
    print(json.dumps(result.as_dict()))
    return 0


def _cmd_upscale(args: argparse.Namespace) -> int:
    from desra.batch import run_upscale
    from desra_core.models.sr import load_sr_model

    model = load_sr_model(args.model, device=_device(args.device))
    rows = run_upscale(model, args.in_dir, args.out_dir, tile=args.tile or None, overlap=args.overlap,
                       batch_size=args.batch, precision=args.precision, progress=_progress("upscale"))
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"failed: {r['stem']}: {r['error']}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} ok, {len(failed)} failed; x{model.scale} {model.architecture} "
          f"({model.source}) into {args.out_dir}")
    return 1 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    import tasks  # noqa: F401  (Prefect environment defaults before Prefect loads)
    from flows.full import desra

    state = desra(
        input_dir=str(args.input_dir), output_dir=str(args.out), mse_model=args.mse_model,
        gan_model=args.gan_model, segmenter=None if args.no_semantic or args.labels else args.segmenter,
        labels_dir=str(args.labels) if args.labels else None, threshold=args.threshold, min_area=args.min_area,
        min_area_fraction=args.min_area_fraction, tile=args.tile, overlap=args.overlap, feather=args.feather,
        batch_size=args.batch_size, device=args.device, return_state=True)
    print(f"desra run: {state.name}: {state.message or ''}".rstrip(": "))
    print(f"outputs: {args.out} (masks/, pseudo_gt/, sr/, reports/, runs/)")
    return 0 if state.is_completed() else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desra", description="Detect and remove GAN super-resolution artifacts.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("detect", help="detect artifacts in paired MSE-SR / GAN-SR folders")
    p.add_argument("--mse", type=Path, required=True, help="folder of MSE-SR results")
    p.add_argument("--gan", type=Path, required=True, help="folder of GAN-SR results (paired by file stem)")
    sem = p.add_mutually_exclusive_group(required=True)
    sem.add_argument("--labels", type=Path, help="folder of ADE20K label maps of the GAN results (by stem)")
    sem.add_argument("--segmenter", metavar="ID_OR_PATH",
                     help="segment the GAN results with this SegFormer (hub id or save_pretrained folder; "
                          "'backend:ARG' for another registered backend); label maps go to OUT/labels/")
    sem.add_argument("--no-semantic", action="store_true",
                     help="skip the semantic adjustment (Eq. 9): every class weighs 1.0")
    p.add_argument("--out", type=Path, required=True, help="output folder (masks/, pseudo_gt/, report.parquet)")
    p.add_argument("--device", default="auto", help="torch device for --segmenter (default: cuda if available)")
    _add_detection_options(p)
    p.add_argument("--feather", type=float, default=0.0,
                   help="blend width (pixels) of the pseudo-GT across the mask edge (default: hard cut)")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("metrics", help="IoU and region precision/recall of predicted masks")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted masks")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth masks (paired by stem)")
    p.add_argument("--overlap", type=float, default=0.5, help="region hit rule (default: %(default)s)")
    p.add_argument("--border", type=int, default=5, help="ignored frame in pixels (default: %(default)s)")
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser("upscale", help="super-resolve every image of a folder")
    p.add_argument("--model", required=True, help="known weights name (e.g. realesrgan_x4plus) or a weights file")
    p.add_argument("in_dir", type=Path, help="folder of input images")
    p.add_argument("out_dir", type=Path, help="output folder (<stem>.png, same bit depth as the input)")
    p.add_argument("--tile", type=int, default=512,
                   help="largest tile side in input pixels; 0 = whole image (default: %(default)s)")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in input pixels (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="tiles per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device; auto = cuda when available, else cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.set_defaults(func=_cmd_upscale)

    p = sub.add_parser("run", help="run the whole pipeline on a folder of low-resolution images (embedded Prefect)")
    p.add_argument("input_dir", type=Path, help="folder of real-world (low-resolution) images")
    p.add_argument("--out", type=Path, required=True, help="output root (masks/, pseudo_gt/, sr/, reports/, runs/)")
    p.add_argument("--mse-model", default="realesrnet_x4plus", help="MSE-SR model: known name or file")
    p.add_argument("--gan-model", default="realesrgan_x4plus", help="GAN-SR model: known name or file")
    sem = p.add_mutually_exclusive_group()
    sem.add_argument("--segmenter", default="nvidia/segformer-b5-finetuned-ade-640-640",
                     help="SegFormer hub id or folder (default: %(default)s)")
    sem.add_argument("--labels", type=Path, help="folder of precomputed label maps of the GAN results, by stem")
    sem.add_argument("--no-semantic", action="store_true", help="skip the semantic adjustment")
    _add_detection_options(p)
    p.add_argument("--feather", type=float, default=0.0, help="pseudo-GT blend width in pixels")
    p.add_argument("--tile", type=int, default=512, help="largest SR tile side in input pixels")
    p.add_argument("--overlap", type=int, default=32, help="SR tile overlap in input pixels")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device; auto = cuda when available")
    p.set_defaults(func=_cmd_run)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DesraError as e:  # a problem with the run as a whole (e.g. a missing input folder)
        print(f"error: {e}", file=sys.stderr)
        return 1
