"""The ``desra`` command line.

``desra detect``  find GAN-SR artifacts in folders of MSE-SR / GAN-SR results (masks, pseudo-GT, report)
``desra metrics`` score predicted masks against ground-truth masks
``desra upscale`` super-resolve a folder with any SR model spandrel loads
``desra run``     the full pipeline (flow ``desra``) in this process, on Prefect's embedded API
``desra deploy``  register the Prefect deployments (work pool ``desra``) on a Prefect server
``desra finetune`` fine-tune a GAN-SR model on pseudo-GT from detected artifacts (DeSRA's delete step)
``desra evaluate`` artifact fraction and kept detail per image, before/after fine-tuning
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from desra.pipeline.text import inert
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
    """The device a command asked for, checked on this machine (ConfigError naming it otherwise), before any
    model is loaded: `--device bogus` is a device problem, not a weights problem."""
    from desra.pipeline.models import check_device

    return check_device(name)


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
    """The pipeline's steps from detection on (segmentation with --segmenter, detection, pseudo-GT, publish)
    over SR results that exist already; outputs and reports as the flows write them."""
    import time
    import uuid

    from desra.pipeline.drop import result_items
    from desra.pipeline.models import Models
    from desra.pipeline.report import write_run_files
    from desra.pipeline.settings import Settings
    from desra.pipeline.steps import Run
    from desra.pipeline.stream import process_images
    from desra_core.image import atomic_write_bytes

    settings = Settings.from_options(threshold=args.threshold, min_area=args.min_area,
                                     min_area_fraction=args.min_area_fraction, segmenter=args.segmenter or None,
                                     labels_dir=str(args.labels) if args.labels else None, feather=args.feather,
                                     device=args.device)
    items = result_items(str(args.mse), str(args.gan), settings.labels_dir)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-detect-{uuid.uuid4().hex[:8]}"
    models = Models(settings, sr=False) if settings.segmenter_in_use else None  # no SR model: results are given
    run = Run(settings=settings, output_dir=str(args.out), run_id=run_id, models=models)
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="detect", unit="img", file=sys.stderr)
    try:
        rows = process_images(items, run, on_row=None if bar is None else lambda row: bar.update(1))
    finally:
        if bar is not None:
            bar.close()
    semantic = (f"labels from {args.labels}" if args.labels else f"segmenter {args.segmenter}" if args.segmenter
                else "off (every class weighs 1.0)")
    runs_path, page = write_run_files(
        rows, str(args.out), run_id, title=f"desra detect: {args.gan}",
        run_numbers={"Threshold": args.threshold, "Min area fraction": args.min_area_fraction,
                     "Semantic adjustment": semantic, "Feather (px)": args.feather, "MSE folder": str(args.mse),
                     "GAN folder": str(args.gan)})
    report_path = args.out / "report.parquet"  # this run's rows, as runs/<run>.parquet has them
    atomic_write_bytes(report_path, runs_path.read_bytes())
    failed = [r for r in rows if r.get("status") != "ok"]
    for row in failed:
        print(f"failed: {inert(row['stem'])}: {inert(row.get('error'))}", file=sys.stderr)
    flagged = sum((r.get("region_count") or 0) > 0 for r in rows if r.get("status") == "ok")
    print(f"{len(rows) - len(failed)} ok, {len(failed)} failed; {flagged} image(s) with artifacts; "
          f"report: {report_path} (run {runs_path})")
    if isinstance(page, Path):
        print(f"review page: {page}")
    else:  # e.g. a full disk: the reports are written, the page is only a view of them
        print(f"warning: could not write the review page: {inert(page)}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from desra_core import artifact_metrics
    from desra_core.image import read_mask
    from desra_core.listing import list_images

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
        print(f"failed: {inert(r['stem'])}: {inert(r['error'])}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} ok, {len(failed)} failed; x{model.scale} {model.architecture} "
          f"({model.source}) into {args.out_dir}")
    return 1 if failed else 0


_DEPLOY_REQUIRED = ("DESRA_DROP_DIR", "DESRA_OUTPUT_DIR")
_DEPLOY_DEFAULTS = {
    "DESRA_MSE_MODEL": "realesrnet_x4plus",
    "DESRA_GAN_MODEL": "realesrgan_x4plus",
    "DESRA_SEGMENTER": "nvidia/segformer-b5-finetuned-ade-640-640",
}
_PREFECT_FILE = Path("deployments") / "prefect.yaml"


def _project_root() -> Path | None:
    """The folder holding ``deployments/prefect.yaml``: the current directory or one of its parents,
    else the checkout that the installed ``flows`` package lives in."""
    import importlib.util

    candidates = [Path.cwd(), *Path.cwd().parents]
    spec = importlib.util.find_spec("flows")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc).resolve().parent for loc in spec.submodule_search_locations]
    return next((c for c in candidates if (c / _PREFECT_FILE).is_file()), None)


def _print_registered(pool: str, names: list[str]) -> dict | None:
    """One line per deployment of ``names`` that the API now has in ``pool``; the parameters that the API
    holds for ``desra/full`` (None when it has no such deployment)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        WorkPoolFilter,
        WorkPoolFilterName,
    )

    full = None
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
        for d in sorted(found, key=lambda d: d.name):
            flow_name = client.read_flow(d.flow_id).name
            every = [f"every {s.schedule.interval.total_seconds():g} s" for s in d.schedules
                     if getattr(s.schedule, "interval", None) is not None]
            print(f"  {flow_name}/{d.name}" + (f"  ({', '.join(every)})" if every else ""))
            if (flow_name, d.name) == ("desra", "full"):
                full = dict(d.parameters)
    return full


def _deploy_environment(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with desra's defaults for unset (or empty) model variables; an empty ``DESRA_SEGMENTER``
    is kept: it means no semantic adjustment."""
    env = dict(environ)
    for name, value in _DEPLOY_DEFAULTS.items():
        if name not in env or (not env[name] and name != "DESRA_SEGMENTER"):
            env[name] = value
    return env


def _cmd_deploy(args: argparse.Namespace) -> int:
    import os
    import subprocess

    import yaml

    from desra.automations import default_within_seconds, worker_heartbeat_seconds
    from desra.tasks.env import configure

    missing = [name for name in _DEPLOY_REQUIRED if not os.environ.get(name)]
    if missing:
        print(f"error: set {' and '.join(missing)} first: the scheduled deployment desra/full takes its "
              "input_dir and output_dir from DESRA_DROP_DIR and DESRA_OUTPUT_DIR", file=sys.stderr)
        return 2
    if args.pool_limit < 0:
        print(f"error: expected --pool-limit of 0 (no limit) or more, got {args.pool_limit}", file=sys.stderr)
        return 2
    heartbeat = worker_heartbeat_seconds()  # ConfigError (exit 2) for a bad value
    root = _project_root()
    if root is None:
        print(f"error: expected {_PREFECT_FILE} in the current directory, one of its parents or the checkout of "
              f"the installed flows package, got none (cwd: {Path.cwd()}); run desra deploy from the desra "
              "repository", file=sys.stderr)
        return 2
    configure()
    env = _deploy_environment(os.environ)
    env.setdefault("DESRA_PROJECT_DIR", str(root))
    names = [d["name"] for d in yaml.safe_load((root / _PREFECT_FILE).read_text())["deployments"]]

    from prefect.settings import get_current_settings

    api_url = os.environ.get("PREFECT_API_URL") or get_current_settings().api.url
    if not api_url:
        print("error: set PREFECT_API_URL to the Prefect server's API (e.g. http://127.0.0.1:4200/api) and "
              "PREFECT_API_AUTH_STRING to its PREFECT_SERVER_API_AUTH_STRING first", file=sys.stderr)
        return 2
    from desra.pool import ensure_pool

    try:
        pool = ensure_pool(args.pool, limit=args.pool_limit or None)
    except DesraError:
        raise
    except Exception as e:  # API errors: say which server and what to check
        hint = ("the server wants credentials: set PREFECT_API_AUTH_STRING to its PREFECT_SERVER_API_AUTH_STRING"
                if "401" in str(e) else
                "the server has CSRF protection on: keep PREFECT_CLIENT_CSRF_SUPPORT_ENABLED at its default, true"
                if "403" in str(e) and "csrf" in str(e).lower() else "is the server running and reachable?")
        print(f"error: could not create or update work pool {args.pool!r} on {api_url} ({type(e).__name__}: "
              f"{e}); {hint}", file=sys.stderr)
        return 1
    print(pool.summary())
    from desra.csrf import csrf_warning

    try:
        csrf = csrf_warning(api_url)
    except Exception as e:  # the pool exists: say that the check could not be made, and go on
        csrf = f"could not ask {api_url} whether it has CSRF protection on ({type(e).__name__}: {e})"
    if csrf:
        print(f"warning: {csrf}", file=sys.stderr)

    prefect = [sys.executable, "-m", "prefect"]
    deploy = [*prefect, "--no-prompt", "deploy", "--prefect-file", str(_PREFECT_FILE)]
    if args.pool == "desra":  # the pool that prefect.yaml names
        commands = [[*deploy, "--all"]]
    else:  # `--all` ignores --pool: one deployment at a time
        commands = [[*deploy, "--name", name, "--pool", args.pool] for name in names]
    for command in commands:
        result = subprocess.run(command, cwd=root, env=env)
        if result.returncode != 0:
            print(f"error: prefect deploy failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode

    print(f"\nregistered from {root / _PREFECT_FILE} into work pool {args.pool!r} "
          f"(code at DESRA_PROJECT_DIR={env['DESRA_PROJECT_DIR']}):")
    os.environ.update({k: env[k] for k in ("DESRA_PROJECT_DIR", *_DEPLOY_DEFAULTS)})
    registered = None
    try:
        registered = _print_registered(args.pool, names)
    except Exception as e:  # the deployments exist; only the summary failed
        print(f"  {', '.join(names)} (could not list them: {type(e).__name__}: {e}; try `prefect deployment ls`)")
    if registered is None:  # what was sent, when the API could not be asked
        registered = {"input_dir": env["DESRA_DROP_DIR"], "output_dir": env["DESRA_OUTPUT_DIR"],
                      "mse_model": env["DESRA_MSE_MODEL"], "gan_model": env["DESRA_GAN_MODEL"],
                      "segmenter": env["DESRA_SEGMENTER"]}
    segmenter = registered.get("segmenter")
    for label, value in (("drop (input_dir)", registered.get("input_dir")),
                         ("output root (output_dir)", registered.get("output_dir")),
                         ("MSE model", registered.get("mse_model")), ("GAN model", registered.get("gan_model")),
                         ("segmenter", segmenter if segmenter else "none (no semantic adjustment)"),
                         ("pool limit", f"{args.pool_limit} flow run(s) at once in pool {args.pool!r}"
                          if args.pool_limit else f"none on pool {args.pool!r} (each worker's --limit only)"),
                         ("heartbeat", f"every {heartbeat} s" if heartbeat else "off")):
        print(f"  {label + ':':<26}{value}")
    if args.zombie_automation:
        from desra.automations import ZOMBIE_AUTOMATION_NAME, ensure_zombie_automation

        try:
            print(ensure_zombie_automation(default_within_seconds(heartbeat)).summary())
        except Exception as e:  # the deployments exist; say what is missing and how to add it
            print(f"error: the deployments are registered, but the automation {ZOMBIE_AUTOMATION_NAME!r} that marks "
                  f"runs of dead workers Crashed could not be created ({type(e).__name__}: {e}); run desra deploy "
                  "again", file=sys.stderr)
            return 1
    beat = f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={heartbeat} " if heartbeat else ""
    why = " (the crash detection's window counts on it)" if args.zombie_automation else ""
    print(f"start each worker with the same PREFECT_API_URL and PREFECT_API_AUTH_STRING, code at "
          f"{env['DESRA_PROJECT_DIR']}, and this heartbeat{why}:\n"
          f"  {beat}prefect worker start --pool {args.pool} --limit 1")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import httpx

    import desra.tasks  # noqa: F401  (Prefect environment defaults before Prefect loads)
    from desra.embedded import start_embedded_server
    from desra.flows.full import run_in_process

    start_embedded_server()  # without PREFECT_API_URL: an embedded server that dies with this process
    try:
        state = run_in_process(
            input_dir=str(args.input_dir), output_dir=str(args.out), mse_model=args.mse_model,
            gan_model=args.gan_model, segmenter=None if args.no_semantic or args.labels else args.segmenter,
            labels_dir=str(args.labels) if args.labels else None, threshold=args.threshold,
            min_area=args.min_area, min_area_fraction=args.min_area_fraction, tile=args.tile, overlap=args.overlap,
            feather=args.feather, batch_size=args.batch_size, device=args.device)
    except httpx.HTTPError as e:  # the Prefect API went away for longer than the client's retries
        from prefect.settings import PREFECT_API_URL

        print(f"error: lost the Prefect API at {PREFECT_API_URL.value() or 'the embedded server'} "
              f"({type(e).__name__}: {e}); finished images are kept in the store under {args.out}: run again "
              "to finish the rest", file=sys.stderr)
        return 1
    print(f"desra run: {state.name}: {state.message or ''}".rstrip(": "))
    print(f"outputs: {args.out} (masks/, pseudo_gt/, sr/, reports/, runs/)")
    return 0 if state.is_completed() else 1


def _loss_bar(total: int):
    """A progress callback showing the losses when stderr is a terminal, else a no-op."""
    if not sys.stderr.isatty():
        return lambda record: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="finetune", unit="it", file=sys.stderr)

    def update(record):
        bar.update(1)
        bar.set_postfix(l1=f"{record['l1']:.4f}", perc=f"{record['perceptual']:.3f}", gan=f"{record['gan']:.3f}")
        val = record.get("val_artifact_fraction", float("nan"))
        if val == val:  # validated at this step (NaN otherwise): keep showing the latest figures
            update.val = f"{val:.4f}/{record['val_detail_ratio']:.2f}"
        if update.val:
            bar.set_postfix_str(f"{bar.postfix}, val artifacts/detail={update.val}")
    update.val = ""
    update.close = bar.close
    return update


def _cmd_finetune(args: argparse.Namespace) -> int:
    from desra.finetuning import run_finetune

    return run_finetune(args, _device(args.device), _loss_bar)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from desra.finetuning import run_evaluate

    return run_evaluate(args, _device(args.device))


def _add_model_pair_options(p: argparse.ArgumentParser, *, many_gans: bool) -> None:
    p.add_argument("--gan", required=True, action="append" if many_gans else "store",
                   help="GAN-SR model: known name or weights file" + (" (repeat to compare)" if many_gans else ""))
    p.add_argument("--mse", required=True, help="MSE-SR model: known name or weights file")
    p.add_argument("--images", type=Path, required=True, help="folder of low-resolution real-world images")
    sem = p.add_mutually_exclusive_group(required=True)
    sem.add_argument("--labels", type=Path, help="folder of ADE20K label maps of the GAN results, by stem")
    sem.add_argument("--segmenter", metavar="ID_OR_PATH", help="segment the GAN results with this SegFormer")
    sem.add_argument("--no-semantic", action="store_true", help="skip the semantic adjustment")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; the pipeline's store and outputs go here too (reused by a later command)")
    _add_detection_options(p)
    p.add_argument("--feather", type=float, default=0.0, help="pseudo-GT blend width in pixels")
    p.add_argument("--tile", type=int, default=512, help="largest SR tile side in input pixels")
    p.add_argument("--overlap", type=int, default=32, help="SR tile overlap in input pixels")
    p.add_argument("--device", default="auto", help="torch device; auto = cuda when available")


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
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (masks/, pseudo_gt/, reports/, runs/, report.parquet, report.html)")
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

    p = sub.add_parser("deploy", help="register the Prefect deployments of deployments/prefect.yaml "
                                      "(needs DESRA_DROP_DIR, DESRA_OUTPUT_DIR and a Prefect server)",
                       description="Create the process work pool (or bring an existing one to desra's locked job "
                                   "template, where a run cannot set its command, environment or working folder, "
                                   "and to --pool-limit) and register the deployments of deployments/prefect.yaml "
                                   "on the Prefect API (PREFECT_API_URL, with PREFECT_API_AUTH_STRING when the "
                                   "server wants credentials). This is the one way to deploy desra: "
                                   "`prefect deploy` alone would not create the locked pool. desra/full runs "
                                   "every 10 minutes over DESRA_DROP_DIR into DESRA_OUTPUT_DIR, desra/on-drop on "
                                   "each desra.drop.landed event; models: DESRA_MSE_MODEL, DESRA_GAN_MODEL, "
                                   "DESRA_SEGMENTER (set but empty: no semantic adjustment). Workers run the code "
                                   "in DESRA_PROJECT_DIR (default: this checkout); start each with "
                                   "`PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 prefect worker start --pool desra "
                                   "--limit 1` (the heartbeat that the crash detection's 90-s window counts on).")
    p.add_argument("--pool", default="desra", help="process work pool to create or lock and deploy to "
                                                   "(default: %(default)s)")
    p.add_argument("--pool-limit", type=int, default=1, metavar="N",
                   help="flow runs at once in the whole pool: one per worker (start each worker with --limit 1); "
                        "0 = no pool limit (default: %(default)s, for one worker)")
    p.add_argument("--no-zombie-automation", dest="zombie_automation", action="store_false",
                   help="do not create the automation that marks flow runs Crashed when their heartbeats stop "
                        "(their worker died; see PREFECT_FLOWS_HEARTBEAT_FREQUENCY)")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("finetune", help="fine-tune a GAN-SR model so that the detected artifacts go away")
    _add_model_pair_options(p, many_gans=False)
    from desra_core.finetune.options import DEFAULTS as FT  # the one set of defaults (flows use it too)

    p.add_argument("--iterations", type=int, default=FT.iterations, help="training iterations (default: %(default)s)")
    p.add_argument("--batch", type=int, default=FT.batch, help="crops per iteration (default: %(default)s)")
    p.add_argument("--crop", type=int, default=FT.crop,
                   help="HR crop side, a multiple of the scale (default: %(default)s)")
    p.add_argument("--lr", type=float, default=FT.lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--ema", type=float, default=FT.ema,
                   help="EMA decay of the generator; 0 = off (default: %(default)s)")
    p.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=FT.perceptual > 0,
                   help="add the VGG19 perceptual term (needs VGG19 weights: torchvision's cache or --vgg-weights)")
    p.add_argument("--adversarial", action="store_true", default=FT.gan > 0,
                   help="add the adversarial term against a U-Net discriminator (--discriminator to start from one)")
    p.add_argument("--no-gan", dest="adversarial", action="store_false",
                   help="no adversarial term (the default; kept for older command lines)")
    p.add_argument("--discriminator", type=Path, help="pretrained U-Net discriminator (e.g. *_netD.pth)")
    p.add_argument("--vgg-weights", help="local VGG19 weights file (offline machines)")
    p.add_argument("--checkpoint-every", type=int, default=FT.checkpoint_every,
                   help="steps between checkpoints; the same command run again resumes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=FT.seed, help="training seed (default: %(default)s)")
    p.add_argument("--artifact-share", type=float, default=FT.artifact_share,
                   help="share of training crops forced onto artifact pixels (default: %(default)s)")
    p.add_argument("--validate", type=Path, metavar="DIR",
                   help="folder of validation images, never trained on (default: hold out --holdout of --images)")
    p.add_argument("--validate-labels", type=Path, metavar="DIR",
                   help="label maps of the validation images, by stem (default: the --labels folder)")
    p.add_argument("--holdout", type=float, default=FT.holdout,
                   help="share of --images held out for validation without --validate, at least one "
                        "(default: %(default)s)")
    p.add_argument("--split-seed", type=int, default=FT.split_seed,
                   help="seed of the held-out choice (recorded in the card)")
    p.add_argument("--validate-every", type=int, default=FT.validate_every,
                   help="steps between validations (default: %(default)s)")
    p.add_argument("--min-detail-ratio", type=float, default=FT.min_detail_ratio,
                   help="least detail, relative to the original model, that a shipped checkpoint keeps on every "
                        "validation image (default: %(default)s); exit code 3 when no checkpoint qualifies")
    p.add_argument("--min-artifact-images", type=int, default=FT.min_artifact_images, metavar="N",
                   help="validation images with artifacts beyond the measured noise that shipping needs; with "
                        "fewer nothing is trained and the exit code is 3 (default: %(default)s)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="artifact fraction and kept detail per image and GAN model")
    _add_model_pair_options(p, many_gans=True)
    p.set_defaults(func=_cmd_evaluate)

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
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per desra-batch run when a deployment scales out; in this process the whole "
                        "drop streams at once (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device; auto = cuda when available")
    p.set_defaults(func=_cmd_run)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {inert(e)}", file=sys.stderr)
        return 2
    except DesraError as e:  # a problem with the run as a whole (e.g. a missing input folder)
        print(f"error: {inert(e)}", file=sys.stderr)
        return 1
