"""Does a fine-tuned model remove artifacts on photos nobody showed it? Defaults chosen on some, reported on others.

Fifteen public-domain / CC0 photos of varied kinds ship inside scikit-image's wheel (``skimage/data``; install
the ``bench`` extra, ``pip install -e '.[bench]'``, or give ``--photos DIR``); :data:`PHOTOS` records each one's
kind and licence, from scikit-image's own docstrings. Each becomes a real-world-like low-resolution input:
area-downscaled to a long side of 160 px and JPEG-compressed at quality 80, as photos on the web are. There is
no SegFormer offline, so the benchmark runs without the semantic adjustment (``segmenter=None``); the models
are the compact ``realesr_general_x4v3`` GAN against the L1-trained SPAN from ``../shared/models``, with the
product's example detection settings (threshold 0.8, min area 500).

The photos are split once, by photo, into two pools:

* :data:`CHOICE` (9 photos): the only photos any choice sees. For each split (a seed), 5 of them are the
  training drop and 4 are the validation folder (``--validate``) that the shipping rule judges on; the
  validation always holds the pool's one clean photo (``cell``), since blurring shows on clean photos.
  The default objective is chosen on these validation figures.
* :data:`REPORT` (6 photos): never trained on, never validated on, never used to choose anything. The
  figures reported are the shipped model's on these photos (a refusal ships nothing: the original model).

Every candidate runs through ``desra.pipeline.finetuning.run_finetuning``, the one function behind
``desra finetune``, the ``finetune`` flow and ``desra(finetune=True)``, with the product's shipping rule, over
3 splits × 3 training seeds. Runs resume from the store and their checkpoints, so a killed benchmark goes on
where it stopped; finished runs are read back from ``--results``.

    python benchmarks/finetune_generalization.py --work /tmp/fg            # runs what is missing, then the table
    python benchmarks/finetune_generalization.py --work /tmp/fg --table    # only the table, from the results
    python benchmarks/finetune_generalization.py --work /tmp/fg --leave-one-out  # detail on a left-out photo
    python benchmarks/finetune_generalization.py --work /tmp/fg --blends   # the runs' weights blended back

Per run, one JSON line (in ``--results``, default ``WORK/results.jsonl``): the candidate, split, seed, whether a
checkpoint shipped (and the rule's sentence), the choice-pool validation figures, and per report photo the
original and shipped artifact fraction and detail ratio. The table gives, per candidate, over the 9 runs: the
median and worst artifact change on the report photos with artifacts (original fraction ≥ 0.01), the worst
per-image detail ratio, and the largest artifact gain on the report photos without artifacts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from desra.pipeline.drop import drop_items
from desra.pipeline.finetuning import run_finetuning
from desra.pipeline.models import Models
from desra.pipeline.pairs import process_stored, read_stored
from desra.pipeline.settings import Settings
from desra.pipeline.steps import Run
from desra_core import DetectionConfig
from desra_core.finetune.options import FinetuneOptions
from desra_core.finetune.validation import Validator, detail_ratios
from desra_core.models.sr import load_sr_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
LONG_SIDE, JPEG_QUALITY = 160, 80
CLEAN_BELOW = 0.01
"""A photo with an original artifact fraction below this counts as "without artifacts"."""

PHOTOS: dict[str, tuple[str, str, str]] = {
    # stem: (file in skimage/data, kind, licence as scikit-image's docstring gives it)
    "astronaut": ("astronaut.png", "face, suit, flag", "public domain (NASA)"),
    "brick": ("brick.png", "architecture: a brick wall", "CC0 (CC0Textures, Bricks25)"),
    "camera": ("camera.png", "face, camera, buildings", "CC0 (Lav Varshney)"),
    "cell": ("cell.png", "microscopy, nearly flat", "CC0"),
    "chelsea": ("chelsea.png", "fur: a cat", "CC0 (Stefan van der Walt)"),
    "clock_motion": ("clock_motion.png", "machine: a clock, motion blur", "public domain (Stefan van der Walt)"),
    "coffee": ("coffee.png", "a cup of coffee: liquid, porcelain", "CC0 (Rachel Michetti)"),
    "coins": ("coins.png", "metal: coins", "no known copyright restrictions (Greek coins, Pompeii)"),
    "grass": ("grass.png", "foliage: grass", "CC0 (CC0Textures)"),
    "gravel": ("gravel.png", "gravel texture", "CC0 (CC0Textures, Gravel04)"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "sky: galaxies", "public domain (NASA)"),
    "ihc": ("ihc.png", "microscopy: stained tissue", "no known copyright restrictions"),
    "retina": ("retina.jpg", "medical: retina", "CC0 (Häggström, 2014)"),
    "rocket": ("rocket.jpg", "machine and sky: a launch", "public domain (SpaceX)"),
    "text": ("text.png", "text, handwritten", "public domain"),
}
CHOICE = ("astronaut", "brick", "camera", "cell", "coffee", "grass", "hubble_deep_field", "ihc", "retina")
REPORT = ("chelsea", "clock_motion", "coins", "gravel", "rocket", "text")
ALWAYS_VALIDATED = ("cell",)
SPLITS, SEEDS, VALIDATION_SIZE = (0, 1, 2), (0, 1, 2), 4

NO_VGG = {"perceptual": 0.0, "gan": 0.0}
CANDIDATES: dict[str, dict[str, Any]] = {
    # name: the options that differ from the product's defaults; "defaults" is what a user gets without VGG19
    # weights (the automatic objective: desra_core.finetune.options)
    "L1 only": {**NO_VGG, "texture": 0.0},
    "L1 + texture 1": {**NO_VGG, "texture": 1.0},
    "defaults": {},
    # fewer crops forced onto artifact pixels (the default is 0.5): measured, not adopted (docs/finetuning.md)
    "artifact share 0.2": {"artifact_share": 0.2},
    "artifact share 0": {"artifact_share": 0.0},
}


def photo_folder(given: Path | None) -> Path:
    if given is not None:
        return given
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise SystemExit("expected scikit-image (pip install -e '.[bench]') or --photos DIR with the photos")
    return Path(spec.origin).parent / "data"


def make_inputs(photos: Path, folder: Path) -> Path:
    """Each photo as a low-resolution input ``<stem>.png`` in ``folder`` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, (file, _, _) in PHOTOS.items():
        target = folder / f"{stem}.png"
        if target.exists():
            continue
        image = cv2.imread(str(photos / file), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"expected a photo at {photos / file}, got none")
        h, w = image.shape[:2]
        scale = LONG_SIDE / max(h, w)
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        _, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        cv2.imwrite(str(target), cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    return folder


def split(seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) stems of the choice pool for one split."""
    rest = sorted(set(CHOICE) - set(ALWAYS_VALIDATED))
    order = np.random.default_rng(seed).permutation(len(rest))
    validation = sorted([rest[i] for i in order[:VALIDATION_SIZE - len(ALWAYS_VALIDATED)]] + list(ALWAYS_VALIDATED))
    return sorted(set(CHOICE) - set(validation)), validation


def link_drop(inputs: Path, folder: Path, stems: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        target = folder / f"{stem}.png"
        if not target.exists():
            target.write_bytes((inputs / f"{stem}.png").read_bytes())
    return folder


class Reporter:
    """Scores a generator on the report photos against the original model's stored results."""

    def __init__(self, settings: Settings, inputs: Path, work: Path) -> None:
        run = Run(settings=settings, output_dir=str(work / "report_out"), run_id="report", models=Models(settings))
        ok, failed = process_stored(run, drop_items(str(link_drop(inputs, work / "report", list(REPORT))), None,
                                                    None))
        if failed:
            raise SystemExit(f"expected every report photo to run, got failures: {failed}")
        stored = [read_stored(run, item, row) for item, row in ok]
        self.images = [s.validation_image() for s in stored]
        original = {s.stem: (s.score(settings.gan_model).artifact_fraction, s.score(settings.gan_model).detail_kept)
                    for s in stored}
        self.validator = Validator(load_sr_model(settings.gan_model), self.images, settings.detection,
                                   tile=settings.tile, overlap=settings.overlap, original=original)

    def __call__(self, generator: torch.nn.Module | None) -> dict[str, dict[str, float]]:
        original = self.validator.original
        if generator is None:  # nothing shipped: the user keeps the original model
            return {n: {"before": f, "after": f, "detail": 1.0} for n, (f, _) in original.per_image.items()}
        score = self.validator(generator)
        ratios = detail_ratios(score, original)
        return {n: {"before": original.per_image[n][0], "after": score.per_image[n][0],
                    "detail": ratios.get(n, float("nan"))} for n in original.per_image}


def one_run(name: str, split_seed: int, seed: int, settings: Settings, inputs: Path, work: Path,
            reporter: Reporter, *, holdout: bool = False) -> dict[str, Any]:
    """One fine-tuning run of candidate ``name``: on the split's 5 training photos validated on its 4
    (``--validate``), or, with ``holdout``, as a user who gives no ``--validate`` runs it: the whole choice pool
    as the drop and the default held-out share chosen with ``--split-seed split_seed``."""
    extra: dict[str, Any] = {"seed": seed}
    if holdout:
        drop = link_drop(inputs, work / "choice", list(CHOICE))
        extra["split_seed"] = split_seed
    else:
        train, validation = split(split_seed)
        drop = link_drop(inputs, work / f"split{split_seed}" / "train", train)
        extra["validate_dir"] = str(link_drop(inputs, work / f"split{split_seed}" / "validation", validation))
    options = FinetuneOptions(**{**CANDIDATES[name], **extra})
    began = time.perf_counter()
    run = run_finetuning(settings, drop, work / "out", options, say=lambda m: print("  " + m, flush=True))
    train, validation = sorted(run.data.train_files), sorted(run.data.validation_files)
    result = run.delivery.result
    chosen = result.chosen
    validation_figures = None
    if chosen is not None and result.original is not None:
        validation_figures = {"before": result.original.artifact_fraction, "after": chosen.score.artifact_fraction,
                              "worst_detail": min(detail_ratios(chosen.score, result.original).values())}
    return {"candidate": name, "split": split_seed, "seed": seed, "mode": "holdout" if holdout else "validate",
            "train": train, "validation": validation,
            "shipped": chosen is not None, "step": None if chosen is None else chosen.step,
            "weights": None if chosen is None else chosen.weights, "reason": result.reason,
            "validation_figures": validation_figures, "report": reporter(result.chosen_generator),
            "minutes": round((time.perf_counter() - began) / 60, 2)}


def summarize(row: dict[str, Any]) -> dict[str, float]:
    """One run's figures on the report photos."""
    report = row["report"]
    flagged = [r for r in report.values() if r["before"] >= CLEAN_BELOW]
    clean = [r for r in report.values() if r["before"] < CLEAN_BELOW]
    return {"change": statistics.mean(r["after"] for r in flagged) / statistics.mean(r["before"] for r in flagged)
            - 1, "worst_detail": min(r["detail"] for r in report.values()),
            "clean_gain": max((r["after"] - r["before"] for r in clean), default=0.0)}


def table(rows: list[dict[str, Any]]) -> str:
    """Per candidate and validation mode, over its runs (splits × seeds): the report photos' figures."""
    lines = ["| candidate | validation | shipped | artifact change, median (worst) | worst detail ratio, median "
             "(worst) | clean photos' gain, worst | choice-pool validation change, median |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in CANDIDATES:
        for mode, label in (("validate", "4 photos (--validate)"), ("holdout", "default held-out share")):
            mine = [r for r in rows if r["candidate"] == name and r.get("mode", "validate") == mode]
            if not mine:
                continue
            figures = [summarize(r) for r in mine]
            changes = [f["change"] for f in figures]
            details = [f["worst_detail"] for f in figures]
            val = [r["validation_figures"]["after"] / r["validation_figures"]["before"] - 1 if r["shipped"] else 0.0
                   for r in mine]
            lines.append(f"| {name} | {label} | {sum(r['shipped'] for r in mine)}/{len(mine)} | "
                         f"{statistics.median(changes):+.0%} ({max(changes):+.0%}) | "
                         f"{statistics.median(details):.3f} ({min(details):.3f}) | "
                         f"{max(f['clean_gain'] for f in figures):+.4f} | {statistics.median(val):+.0%} |")
    return "\n".join(lines)


def leave_one_out(work: Path, limits: tuple[float, ...] = (0.9, 0.925, 0.95, 0.975, 1.0)) -> str:
    """Would a stricter detail guard carry over to a photo it did not see? Measured on the choice photos only.

    For every finished run (its checkpoints' per-image validation scores, from ``checkpoint.pt``) and every one of
    its validation photos: choose among the validated checkpoints as the rule does, on the *other* validation
    photos (each keeps ≥ ``limit`` of its detail, their mean artifact fraction falls; the lowest wins), then read
    the left-out photo's detail ratio under the chosen checkpoint.
    """
    lines = ["| training | guard on the other validation photos | cases | shipped | left-out < 0.9 detail | "
             "worst left-out |", "|---|---:|---:|---:|---:|---:|"]
    groups: dict[str, list[tuple[list[dict[str, Any]], dict[str, Any]]]] = {}
    for checkpoint in sorted((work / "out" / "finetune").glob("*/checkpoint.pt")):
        card = checkpoint.with_name("model_card.json")
        if card.exists():
            candidates = torch.load(checkpoint, map_location="cpu", weights_only=True).get("candidates", [])
            facts = json.loads(card.read_text())
            training = facts["settings"]["training"]
            weights = ", ".join(f"{k} {v:g}" for k, v in training["weights"].items() if v)
            group = f"{weights}; artifact share {training['artifact_fraction']:g}"
            groups.setdefault(group, []).append((candidates, facts["validation"]["per_image"]))
    for (group, runs), limit in ((g, limit) for g in sorted(groups.items()) for limit in limits):
        cases, shipped, left_out = 0, 0, []
        for candidates, per_image in runs:
            base = {k: v["original"] for k, v in per_image.items()}
            for out in base:
                others = [k for k in base if k != out and base[k]["detail"] > 0]
                cases += 1
                best = None
                for c in candidates:
                    scores = c["score"]["per_image"]
                    mean = statistics.mean(scores[k][0] for k in others)
                    if (others and min(scores[k][1] / base[k]["detail"] for k in others) >= limit
                            and mean < statistics.mean(base[k]["artifact_fraction"] for k in others)
                            and (best is None or mean < best[0])):
                        best = (mean, scores)
                if best is not None and base[out]["detail"] > 0:
                    shipped += 1
                    left_out.append(best[1][out][1] / base[out]["detail"])
        lines.append(f"| {group} | {limit} | {cases} | {shipped} | {sum(r < 0.9 for r in left_out)} | "
                     f"{min(left_out, default=float('nan')):.3f} |")
    return "\n".join(lines)


def blends(work: Path, reporter: Reporter, settings: Settings, alphas: tuple[float, ...] = (0.25, 0.5, 1.0)) -> str:
    """Would shipping part of the change keep the detail? Network interpolation (as ESRGAN interpolates its PSNR
    and GAN models): for every finished run's last weights θ, the weights θ₀ + α(θ − θ₀) on the report photos.

    Measured, not used by the rule: if detail came back in proportion to α, a rule could ship a blend instead of
    refusing. Per α, over the runs: the report photos' artifact change and their worst per-photo detail ratio.
    """
    gan = load_sr_model(settings.gan_model).descriptor.model
    original = {k: v.detach().clone() for k, v in gan.state_dict().items()}
    lines = ["| α | runs | report photos with artifacts: change, median (worst) | worst detail ratio, median (worst) |",
             "|---:|---:|---:|---:|"]
    lasts = [torch.load(c, map_location="cpu", weights_only=True)["generator"]
             for c in sorted((work / "out" / "finetune").glob("*/checkpoint.pt"))]
    for alpha in alphas:
        figures = []
        for last in lasts:
            gan.load_state_dict({k: v + alpha * (last[k] - v) if v.is_floating_point() else last[k]
                                 for k, v in original.items()})
            figures.append(summarize({"report": reporter(gan)}))
        changes, details = [f["change"] for f in figures], [f["worst_detail"] for f in figures]
        lines.append(f"| {alpha:g} | {len(figures)} | {statistics.median(changes):+.0%} ({max(changes):+.0%}) | "
                     f"{statistics.median(details):.3f} ({min(details):.3f}) |")
    return "\n".join(lines)


def read_rows(results: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="inputs, store, fine-tuning runs (kept: runs resume)")
    ap.add_argument("--results", type=Path, help="the runs' JSON lines (default: WORK/results.jsonl)")
    ap.add_argument("--photos", type=Path, help="folder with the photos of PHOTOS (default: scikit-image's data)")
    ap.add_argument("--candidates", nargs="*", default=list(CANDIDATES), help="which candidates to run")
    ap.add_argument("--holdout", action="store_true",
                    help="run the candidates as a user without --validate does: the default held-out share")
    ap.add_argument("--splits", type=int, nargs="*", default=list(SPLITS), help="which splits to run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="only print the table from the results")
    ap.add_argument("--leave-one-out", action="store_true",
                    help="only print the leave-one-validation-photo-out analysis of the finished runs")
    ap.add_argument("--blends", action="store_true",
                    help="only print the report photos' figures of the finished runs' weights blended with the "
                         "original's (θ₀ + α(θ − θ₀))")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = args.results or args.work / "results.jsonl"
    if args.leave_one_out:
        print(leave_one_out(args.work))
        return
    if not args.table:
        models = SHARED / "models"
        settings = Settings(mse_model=str(models / "span_x4_ch52.mse.safetensors"),
                            gan_model=str(models / "realesr_general_x4v3.gan.safetensors"), segmenter=None,
                            device="cpu", detection=DetectionConfig(threshold=0.8, min_area=500))
        inputs = make_inputs(photo_folder(args.photos), args.work / "inputs")
        reporter = Reporter(settings, inputs, args.work)
        if args.blends:
            print(blends(args.work, reporter, settings))
            return
        mode = "holdout" if args.holdout else "validate"
        for name in args.candidates:
            for split_seed in args.splits:
                for seed in SEEDS:
                    key = (name, split_seed, seed, mode)
                    if key in {(r["candidate"], r["split"], r["seed"], r.get("mode", "validate"))
                               for r in read_rows(results)}:  # another process may have run it meanwhile
                        continue
                    print(f"{name} | {mode} split {split_seed} | seed {seed}", flush=True)
                    row = one_run(name, split_seed, seed, settings, inputs, args.work, reporter,
                                  holdout=args.holdout)
                    print(json.dumps(row), flush=True)
                    with results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    print(table(read_rows(results)))


if __name__ == "__main__":
    main()
