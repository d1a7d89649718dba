"""The ``desra`` command line.

``desra detect``  find GAN-SR artifacts in folders of MSE-SR / GAN-SR results (masks, pseudo-GT, report)
``desra metrics`` score predicted masks against ground-truth masks
``desra upscale`` super-resolve a folder with any SR model spandrel loads
``desra run``     the full pipeline (flow ``desra``) in this process, on Prefect's embedded API
``desra deploy``  register the Prefect deployments (work pool ``desra``) on a Prefect server
``desra finetune`` fine-tune a GAN-SR model on pseudo-GT from detected artifacts (DeSRA's delete step)
``desra evaluate`` artifact fraction and kept detail per image, before/after fine-tuning
``desra watch``   turn a bucket's object-created notifications (S3 → SQS) into debounced desra.drop.landed events
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from desra.pipeline.options import FinetuneFields, RunOptions, check_options, option_fields, options_of
from desra.pipeline.text import inert
from desra_core import ConfigError, DesraError
from desra_core.finetune.options import TEXTURE_DEFAULT

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


# The options of the commands come from the one definition of each option (desra.pipeline.options): flag
# --<name with ->, type, default and help from the field; bad values are refused by the model (exit 2).
_NO_SR = ("mse_model", "gan_model", "tile", "overlap")
"""Run options of ``desra detect``, whose SR results are given: no SR model, no tiling."""
_ALIASES = {"mse_model": ("--mse",), "gan_model": ("--gan",), "labels_dir": ("--labels",),
            "validate_dir": ("--validate",), "validate_labels_dir": ("--validate-labels",)}
"""Older spellings of the options' flags, kept working."""
_SWITCHES = {"perceptual": (("--perceptual",), 1.0, ("--no-perceptual",)),
             "gan": (("--adversarial", "--gan-weight"), 0.1, ("--no-adversarial", "--no-gan")),
             "texture": (("--texture",), TEXTURE_DEFAULT, ("--no-texture",))}
"""Loss weights that a bare flag switches to the Real-ESRGAN recipe's value (``--perceptual``: 1.0; ``--texture``:
desra's texture weight), a flag with a value sets (``--perceptual 0.5``) and ``--no-…`` switches off; none of them
given: automatic (None). The adversarial weight's flag is ``--adversarial`` (``--gan`` names the GAN model)."""
_EXCLUSIVE = (("segmenter", "labels_dir"), ("min_area", "min_area_fraction"))
"""Options of which a command line gives at most one (with ``--no-semantic`` in the first group)."""


def _flag(name: str) -> str:
    """An option's flag on the command line: ``min_area`` → ``--min-area``."""
    return "--" + name.replace("_", "-")


def _value_type(info) -> type:
    """The type a flag's text converts to: the field's annotation without ``None``."""
    import typing

    kinds = [k for k in typing.get_args(info.annotation) if k is not type(None)]
    return kinds[0] if kinds else info.annotation


def _add_option(p, name: str, info, help_suffix: str = "", *, repeat: bool = False) -> None:
    """One option from its field: flags, destination (the field's name), type, default and help."""
    text = (info.description + help_suffix).replace("%", "%%") + " (default: %(default)s)"
    if repeat:
        p.add_argument(_flag(name), *_ALIASES.get(name, ()), dest=name, type=_value_type(info), action=_Repeated,
                       default=[info.default], metavar=name.upper(), help=f"{text}; repeat to compare")
        return
    if name in _SWITCHES:
        flags, on, off = _SWITCHES[name]
        if info.default is None:
            text = text.replace("%(default)s", "auto")
        p.add_argument(*flags, dest=name, type=float, nargs="?", const=on, default=info.default, metavar="WEIGHT",
                       help=f"{text}; the flag alone: {on}")
        p.add_argument(*off, dest=name, action="store_const", const=0.0, default=info.default,
                       help=f"no such term ({name} = 0)")
        return
    kind = _value_type(info)
    if kind is bool:
        p.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=info.default, help=text)
        return
    p.add_argument(_flag(name), *_ALIASES.get(name, ()), dest=name, type=kind, default=info.default,
                   metavar=name.upper(), help=text)


class _Repeated(argparse.Action):
    """A repeatable option (``--gan A --gan B``): a list of the values given, else of the one default."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*([] if given is self.default else given), values])


def _add_options(p: argparse.ArgumentParser, *models, skip: tuple[str, ...] = (), semantic_required: bool = False,
                 repeat: tuple[str, ...] = ()) -> None:
    """Every option of ``models`` but ``skip`` (see the tables above for flags and groups); those of ``repeat``
    may be given more than once. :func:`main` validates the values by the models before the command runs."""
    fields = {name: info for name, info in option_fields(*models).items() if name not in skip}
    grouped = {name: group for group in _EXCLUSIVE for name in group}
    done: set[str] = set()
    for name in fields:
        if name in done:
            continue
        members = [m for m in grouped.get(name, (name,)) if m in fields]
        target: argparse._ActionsContainer = p  # the parser, or one of its mutually exclusive groups
        if len(members) > 1 or name == "segmenter":
            target = p.add_mutually_exclusive_group(required=semantic_required and name == "segmenter")
        for member in members:
            _add_option(target, member, fields[member], repeat=member in repeat)
        if name == "segmenter":
            target.add_argument("--no-semantic", dest="segmenter", action="store_const", const=None,
                                default=argparse.SUPPRESS, help="skip the semantic adjustment (Eq. 9): every class "
                                                                "weighs 1.0")
        done.update(members)
    p.set_defaults(checked_models=models)


def _check_options(args: argparse.Namespace) -> None:
    """The command line's option values, validated by the models that define them; raises ConfigError naming
    the flag (``--threshold``), so that a bad value ends the command with exit code 2 before anything runs."""
    for model in getattr(args, "checked_models", ()):
        values = options_of(model, vars(args))
        for name, value in values.items():  # a repeatable option (evaluate's --gan): each of its values
            if isinstance(value, list):
                for item in value:
                    check_options(model, {**values, name: item}, label=_flag)
        check_options(model, {k: v for k, v in values.items() if not isinstance(v, list)}, label=_flag)


def _options(args: argparse.Namespace, model) -> dict:
    """The values of ``model``'s options that the command line has (by the options' names)."""
    return options_of(model, vars(args))


def _location(text: str) -> Path | str:
    """A folder, or a bucket URL kept as written (``Path`` would fold ``s3://b`` into ``s3:/b``)."""
    from desra.pipeline.objects import is_url

    return text if is_url(text) else Path(text)


def _run_options(args: argparse.Namespace) -> dict:
    """The run's settings as the command line gives them (the flat options of ``Settings.from_options``; with
    label maps given, the segmenter is not used)."""
    return _options(args, RunOptions)


def _cmd_detect(args: argparse.Namespace) -> int:
    """The pipeline's steps from detection on (segmentation with --segmenter, detection, pseudo-GT, publish)
    over SR results that exist already; outputs and reports as the flows write them."""
    import time
    import uuid

    from desra.pipeline.admission import admit
    from desra.pipeline.drop import result_items
    from desra.pipeline.models import Models
    from desra.pipeline.report import write_run_files
    from desra.pipeline.steps import Run
    from desra.pipeline.stream import process_images
    from desra_core.image import atomic_write_bytes

    # The one admission (no SR model: every SR result is given; the result folders are confined like a drop).
    settings = admit(None, str(args.out), _run_options(args),
                     more_paths={"mse_dir": str(args.mse), "gan_dir": str(args.gan)}, sr=False).settings
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
    semantic = (f"labels from {args.labels_dir}" if args.labels_dir else f"segmenter {args.segmenter}" if args.segmenter
                else "off (every class weighs 1.0)")
    runs_path, page = write_run_files(
        rows, str(args.out), run_id, title=f"desra detect: {args.gan}",
        run_numbers={"Threshold": args.threshold, "Min area fraction": args.min_area_fraction,
                     "Semantic adjustment": semantic, "Feather (px)": args.feather, "MSE folder": str(args.mse),
                     "GAN folder": str(args.gan)})
    report_path = args.out / "report.parquet"  # this run's rows, as runs/<run>.parquet has them
    atomic_write_bytes(report_path, Path(runs_path).read_bytes())  # a local run: a path, not a URL
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
    from desra.pipeline.admission import admit
    from desra_core.models.sr import load_sr_model

    # The one admission: the device, before the model loads (`--device bogus` names the device, not the
    # weights); the folders and the model confined; the output root created and written.
    admitted = admit(str(args.in_dir), str(args.out_dir), {"segmenter": None, "device": args.device},
                     more_paths={"model": args.model}, sr=False)
    model = load_sr_model(args.model, device=admitted.device)
    rows = run_upscale(model, args.in_dir, args.out_dir, tile=args.tile or None, overlap=args.overlap,
                       batch_size=args.batch, precision=args.precision, progress=_progress("upscale"))
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"failed: {inert(r['stem'])}: {inert(r['error'])}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} ok, {len(failed)} failed; x{model.scale} {model.architecture} "
          f"({model.source}) into {args.out_dir}")
    return 1 if failed else 0


_DEPLOY_REQUIRED = ("DESRA_DROP_DIR", "DESRA_OUTPUT_DIR")
_DEPLOY_DEFAULTS = {f"DESRA_{name.upper()}": RunOptions.model_fields[name].default
                    for name in ("mse_model", "gan_model", "segmenter")}
"""The model variables of deployments/prefect.yaml, with the run options' defaults."""
_PREFECT_FILE = "prefect.yaml"  # in the package desra.deployments (the repository's deployments/)


def _prefect_file() -> Path:
    """``prefect.yaml`` as installed with desra (package ``desra.deployments``), whatever the working folder;
    the path may not exist in a broken install (the caller checks)."""
    from importlib.resources import files

    return Path(str(files("desra.deployments").joinpath(_PREFECT_FILE)))


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
    from prefect.client.schemas.schedules import IntervalSchedule

    full = None
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
        for d in sorted(found, key=lambda d: d.name):
            flow_name = client.read_flow(d.flow_id).name
            every = [f"every {s.schedule.interval.total_seconds():g} s" for s in d.schedules
                     if isinstance(s.schedule, IntervalSchedule)]
            print(f"  {flow_name}/{d.name}" + (f"  ({', '.join(every)})" if every else ""))
            if (flow_name, d.name) == ("desra", "full"):
                full = dict(d.parameters)
    return full


def _deploy_environment(environ: Mapping[str, str]) -> dict[str, str]:
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
    import tempfile

    import yaml

    from desra import __version__
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
    from desra.pool import kubernetes_job_from_args

    kubernetes = kubernetes_job_from_args(args)  # ConfigError (exit 2): a Kubernetes option on a process pool
    prefect_file = _prefect_file()
    if not prefect_file.is_file():
        print(f"error: expected the deployment file {prefect_file} that is installed with desra, got no such "
              "file; reinstall desra", file=sys.stderr)
        return 2
    configure()
    env = _deploy_environment(os.environ)
    names = [d["name"] for d in yaml.safe_load(prefect_file.read_text())["deployments"]]

    from prefect.settings import get_current_settings

    api_url = os.environ.get("PREFECT_API_URL") or get_current_settings().api.url
    if not api_url:
        print("error: set PREFECT_API_URL to the Prefect server's API (e.g. http://127.0.0.1:4200/api) and "
              "PREFECT_API_AUTH_STRING to its PREFECT_SERVER_API_AUTH_STRING first", file=sys.stderr)
        return 2
    from desra.pool import ensure_pool

    try:
        if kubernetes is None:
            pool = ensure_pool(args.pool, limit=args.pool_limit or None)
        else:
            pool = ensure_pool(args.pool, limit=args.pool_limit or None, pool_type="kubernetes", kubernetes=kubernetes)
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
    deploy = [*prefect, "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    if args.pool == "desra":  # the pool that prefect.yaml names
        commands = [[*deploy, "--all"]]
    else:  # `--all` ignores --pool: one deployment at a time
        commands = [[*deploy, "--name", name, "--pool", args.pool] for name in names]
    # `prefect deploy` imports the entrypoints (desra.flows.…) with its working folder first on sys.path: an
    # empty folder of its own, so that nothing in the caller's folder (a `desra/` there) can stand in for them.
    with tempfile.TemporaryDirectory(prefix="desra-deploy-") as empty:
        for command in commands:
            result = subprocess.run(command, cwd=empty, env=env)
            if result.returncode != 0:
                print(f"error: prefect deploy failed with exit code {result.returncode}", file=sys.stderr)
                return result.returncode

    print(f"\nregistered from {prefect_file} into work pool {args.pool!r} (workers run the installed desra "
          f"{__version__}):")
    os.environ.update({k: env[k] for k in _DEPLOY_DEFAULTS})
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
    if kubernetes is not None:
        print(f"start a Kubernetes worker where it can reach the cluster (pip install 'desra[k8s]' or "
              f"prefect-kubernetes; no GPU needed there: each flow run is a job of {kubernetes.image} with one "
              f"GPU), with the same PREFECT_API_URL and PREFECT_API_AUTH_STRING, and this heartbeat{why}:\n"
              f"  {beat}prefect worker start --pool {args.pool} --type kubernetes")
        return 0
    print(f"start each worker, in any folder, where desra {__version__} is installed, with the same PREFECT_API_URL "
          f"and PREFECT_API_AUTH_STRING, and this heartbeat{why}:\n"
          f"  {beat}prefect worker start --pool {args.pool} --limit 1")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import httpx

    import desra.tasks  # noqa: F401  (Prefect environment defaults before Prefect loads)
    from desra.embedded import start_embedded_server
    from desra.flows.full import run_in_process

    start_embedded_server()  # without PREFECT_API_URL: an embedded server that dies with this process
    try:
        state = run_in_process(input_dir=str(args.input_dir), output_dir=str(args.out), batch_size=args.batch_size,
                               **_run_options(args))
    except httpx.HTTPError as e:  # the Prefect API went away for longer than the client's retries
        from prefect.settings import PREFECT_API_URL

        print(f"error: lost the Prefect API at {PREFECT_API_URL.value() or 'the embedded server'} "
              f"({type(e).__name__}: {e}); finished images are kept in the store under {args.out}: run again "
              "to finish the rest", file=sys.stderr)
        return 1
    print(f"desra run: {state.name}: {state.message or ''}".rstrip(": "))
    print(f"outputs: {args.out} (masks/, pseudo_gt/, sr/, reports/, runs/)")
    return 0 if state.is_completed() else 1


class _LossBar:
    """A progress callback: a bar on stderr with each step's losses and the latest validation figures."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="finetune", unit="it", file=sys.stderr)
        self.val = ""

    def __call__(self, record: Mapping[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(l1=f"{record['l1']:.4f}", perc=f"{record['perceptual']:.3f}",
                             gan=f"{record['gan']:.3f}", tex=f"{record.get('texture', 0.0):.3f}")
        val = record.get("val_artifact_fraction", float("nan"))
        if val == val:  # validated at this step (NaN otherwise): keep showing the latest figures
            self.val = f"{val:.4f}/{record['val_detail_ratio']:.2f}"
        if self.val:
            self.bar.set_postfix_str(f"{self.bar.postfix}, val artifacts/detail={self.val}")

    def close(self) -> None:
        self.bar.close()


def _loss_bar(total: int) -> Callable[[Mapping[str, float]], None]:
    """A progress callback showing the losses when stderr is a terminal, else a no-op."""
    if not sys.stderr.isatty():
        return lambda record: None
    return _LossBar(total)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from desra.finetuning import run_finetune

    return run_finetune(args, _loss_bar)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from desra.finetuning import run_evaluate

    return run_evaluate(args)


def _cmd_watch(args: argparse.Namespace) -> int:
    from desra.watch import run_watch

    return run_watch(args)


def _add_images_and_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, required=True, help="folder of low-resolution real-world images")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; the pipeline's store and outputs go here too (reused by a later command)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="desra", description="Detect and remove GAN super-resolution artifacts.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("detect", help="detect artifacts in paired MSE-SR / GAN-SR folders")
    p.add_argument("--mse", type=Path, required=True, help="folder of MSE-SR results")
    p.add_argument("--gan", type=Path, required=True, help="folder of GAN-SR results (paired by file stem)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (masks/, pseudo_gt/, reports/, runs/, report.parquet, report.html; label "
                        "maps of --segmenter in labels/)")
    _add_options(p, RunOptions, skip=_NO_SR, semantic_required=True)
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
    _add_option(p, "tile", RunOptions.model_fields["tile"], "; 0 = whole image")  # checked by upscale()
    _add_option(p, "overlap", RunOptions.model_fields["overlap"])
    p.add_argument("--batch", type=int, default=4, help="tiles per forward pass (default: %(default)s)")
    _add_option(p, "device", RunOptions.model_fields["device"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.set_defaults(func=_cmd_upscale)

    p = sub.add_parser("deploy", help="register desra's Prefect deployments, from any folder "
                                      "(needs DESRA_DROP_DIR, DESRA_OUTPUT_DIR and a Prefect server)",
                       description="Create the process work pool (or bring an existing one to desra's locked job "
                                   "template, where a run cannot set its command, environment or working folder, "
                                   "and to --pool-limit; --pool-type kubernetes: a Kubernetes pool whose jobs run "
                                   "--image with one GPU, and whose runs cannot set the image, command, env, "
                                   "namespace or service account) and register the deployments of the prefect.yaml "
                                   "installed with desra (deployments/prefect.yaml in the repository) on the "
                                   "Prefect API (PREFECT_API_URL, with PREFECT_API_AUTH_STRING when the "
                                   "server wants credentials). This is the one way to deploy desra: "
                                   "`prefect deploy` alone would not create the locked pool. desra/full runs "
                                   "every 10 minutes over DESRA_DROP_DIR into DESRA_OUTPUT_DIR, desra/on-drop on "
                                   "each desra.drop.landed event; models: DESRA_MSE_MODEL, DESRA_GAN_MODEL, "
                                   "DESRA_SEGMENTER (set but empty: no semantic adjustment). Workers run the "
                                   "installed desra package (the deployments' entrypoints are desra.flows "
                                   "modules), in any folder; start each with "
                                   "`PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 prefect worker start --pool desra "
                                   "--limit 1` (the heartbeat that the crash detection's 90-s window counts on).")
    p.add_argument("--pool", default="desra", help="work pool to create or lock and deploy to "
                                                   "(default: %(default)s)")
    p.add_argument("--pool-limit", type=int, default=1, metavar="N",
                   help="flow runs at once in the whole pool: one per worker (start each worker with --limit 1); "
                        "0 = no pool limit (default: %(default)s, for one worker)")
    from desra.pool import add_kubernetes_arguments

    add_kubernetes_arguments(p, type_flag="--pool-type")
    p.add_argument("--no-zombie-automation", dest="zombie_automation", action="store_false",
                   help="do not create the automation that marks flow runs Crashed when their heartbeats stop "
                        "(their worker died; see PREFECT_FLOWS_HEARTBEAT_FREQUENCY)")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser("finetune", help="fine-tune a GAN-SR model so that the detected artifacts go away",
                       description="Fine-tune --gan on pseudo-GT from --mse where artifacts are detected (DeSRA's "
                                   "delete step). Exit code 3 when nothing is shipped: no checkpoint keeps "
                                   "--min-detail-ratio of the detail on every validation image, or fewer than "
                                   "--min-artifact-images validation images have artifacts (then nothing is "
                                   "trained).")
    _add_images_and_out(p)
    _add_options(p, RunOptions, FinetuneFields, semantic_required=True)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="artifact fraction and kept detail per image and GAN model")
    _add_images_and_out(p)
    _add_options(p, RunOptions, semantic_required=True, repeat=("gan_model",))
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("run", help="run the whole pipeline on a folder of low-resolution images (embedded Prefect)")
    p.add_argument("input_dir", type=_location,
                   help="folder of real-world (low-resolution) images, or a bucket prefix (s3://bucket/drop)")
    p.add_argument("--out", type=_location, required=True,
                   help="output root (masks/, pseudo_gt/, sr/, reports/, runs/), a folder or s3://bucket/prefix")
    _add_options(p, RunOptions)
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per desra-batch run when a deployment scales out; in this process the whole "
                        "drop streams at once (default: %(default)s)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("watch", help="emit one desra.drop.landed event per burst of uploads to a bucket's drop "
                                     "folder (S3 notifications through SQS)",
                       description="Consume the S3 object-created notifications that the bucket sends to "
                                   "--queue-url and, for each drop folder under --drop (s3://bucket/prefix/<drop>), "
                                   "emit one desra.drop.landed event (payload folder, output_dir) to the Prefect "
                                   "API (PREFECT_API_URL) once it has had --quiet seconds without new objects, so "
                                   "that desra/on-drop runs once per burst. Messages are deleted only after their "
                                   "event reached the server; SIGTERM/SIGINT stop it after the current poll.")
    from desra.watch import add_arguments as add_watch_arguments

    add_watch_arguments(p)
    p.set_defaults(func=_cmd_watch)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_options(args)
        return args.func(args)
    except ConfigError as e:
        print(f"error: {inert(e)}", file=sys.stderr)
        return 2
    except DesraError as e:  # a problem with the run as a whole (e.g. a missing input folder)
        print(f"error: {inert(e)}", file=sys.stderr)
        return 1
