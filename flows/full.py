"""Flow ``desra`` (deployment ``full``): the DeSRA pipeline over a drop of real-world images.

In this process (``desra run``, or a drop of one batch) it streams every image of the drop through the
pipeline at once (:func:`desra.tasks.images.process`); under a deployment, a drop larger than ``batch_size``
images is split into batches, each a run of the ``desra-batch`` deployment on the same work pool, so
that several workers share the drop. It then gathers the per-image reports into ``runs/<run>.parquet`` and
publishes a table and a summary artifact. Images already in the store cost no model work, so a
scheduled run over a growing drop processes only the new images. The final state counts failures.
"""

import io
import time
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Completed, Failed
from pydantic import Field

from desra.pipeline.drop import drop_folder, scan_drop
from desra.pipeline.objects import is_url
from desra.pipeline.options import RunOptions, with_options
from desra.pipeline.remote import bucket_of, work_root
from desra.pipeline.report import IMAGE_COLUMNS, read_batch_rows
from desra.pipeline.settings import Settings
from desra.pipeline.text import inert
from desra.tasks.finetune import finetune_generator
from desra.tasks.gpu import ensure_gpu_limit
from desra.tasks.heartbeat import heartbeats
from desra.tasks.images import process
from desra.tasks.preflight import admit, admit_finetuning, refuse
from desra.tasks.progress import Progress
from desra.tasks.report import write_run_report
from desra_core import DesraError
from desra_core.errors import MissingObjectError
from desra_core.finetune.options import FinetuneOptions
from desra_core.listing import list_image_entries

__all__ = ["BATCH_DEPLOYMENT", "desra", "run_in_process"]

BATCH_DEPLOYMENT = "desra-batch/desra-batch"


def _run_batches_on_workers(batches: list[list[str]], parameters: dict, progress, settings: Settings,
                            takeover_after: float | None = None) -> None:
    """One run of the ``desra-batch`` deployment per batch; wait until all have finished.

    This run holds a worker slot while it waits, so with one worker at ``--limit 1`` (or a pool whose
    concurrency limit this run fills) no worker could ever start a batch run. Whenever a batch run is still
    Scheduled ``takeover_after`` seconds after the last batch run was picked up (default: three worker polls,
    ``3 × PREFECT_WORKER_QUERY_SECONDS``, at least 10 s), this run claims the last such one the way a worker
    does, by moving it to Pending (Prefect lets only one proposer move a run from Scheduled to Pending; a worker
    that comes later is refused), processes its batch in this process and ends the batch run Completed or
    Failed with a message that says so. Even if a worker and this run both did a batch, each image's work
    would be done once: the store's claims see to it.

    While it processes a claimed batch, this run sends the batch run's heartbeats
    (:func:`desra.tasks.heartbeat.heartbeats`,
    the first one accepted by the server before any image is touched), since no engine of its own runs: if this
    process dies, the batch run's heartbeats stop with this run's, and the zombie automation of ``desra deploy``
    marks both Crashed, which frees the pool slots they hold (a claimed run without heartbeats would stay Pending,
    holding its slot, for ever: the automation watches only runs that send heartbeats). The batch run stays
    Pending meanwhile, not Running: its work runs in this run's process, which already counts as the pool's
    running flow run.

    A batch run that ends ``Crashed`` (its worker died; the zombie automation marks it) is finished here too,
    once: the images that the dead worker published are taken from the store, and the entries it had claimed
    are computed once their claims' lease has run out.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun, StateType
    from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
    from prefect.deployments import run_deployment
    from prefect.settings import get_current_settings
    from prefect.states import Completed, Failed, Pending

    if takeover_after is None:
        takeover_after = max(10.0, 3.0 * float(get_current_settings().worker.query_seconds))
    logger = get_run_logger()
    runs: list[FlowRun] = []
    for i, stems in enumerate(batches):
        started = run_deployment(BATCH_DEPLOYMENT, parameters={**parameters, "stems": stems}, timeout=0,
                                 flow_run_name=f"batch {i + 1}/{len(batches)}")
        if not isinstance(started, FlowRun):  # a coroutine: what Prefect's async_dispatch gives in an event loop
            started.close()
            raise RuntimeError("expected the desra flow to run synchronously, got a running event loop")
        runs.append(started)
    stems_of = {r.id: stems for r, stems in zip(runs, batches, strict=True)}
    run_of = {r.id: r for r in runs}
    pending, scheduled = {r.id for r in runs}, [r.id for r in runs]  # scheduled: in batch order
    last_pickup = time.monotonic()
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(2)
            for run_id in list(pending):
                state = client.read_flow_run(run_id).state
                if state is None:  # no state yet: as good as Scheduled
                    continue
                if state.type != StateType.SCHEDULED and run_id in scheduled:
                    scheduled.remove(run_id)
                    last_pickup = time.monotonic()
                if state.is_final():
                    pending.discard(run_id)
                if state.is_crashed() and stems_of[run_id]:  # its worker died: finish its batch here, once
                    logger.warning("batch run %s crashed: processing its %d image(s) here; entries its worker had "
                                   "claimed wait for their lease to run out", run_id, len(stems_of[run_id]))
                    try:
                        process(settings, parameters["input_dir"], parameters["output_dir"], parameters["run_id"],
                                stems_of[run_id], batch=f"{run_id}-again")
                    except Exception as e:  # the parent run goes on; _gather reports the missing images
                        logger.error("could not finish crashed batch run %s here: %s", run_id, inert(e))
                    stems_of[run_id] = []
            if scheduled and time.monotonic() - last_pickup >= takeover_after:
                run_id = scheduled.pop()  # workers take the oldest first: take the newest
                parent = f"{runtime_flow_run.id} ({runtime_flow_run.name})"
                claim: OrchestrationResult[Any] = client.set_flow_run_state(
                    run_id, Pending(message=f"processed in parent run {parent}: no worker was free"), force=False)
                if claim.status == SetStateStatus.ACCEPT:
                    logger.info("no worker picked up batch run %s within %.0f s: processing its %d image(s) here",
                                run_id, takeover_after, len(stems_of[run_id]))
                    try:
                        with heartbeats(run_of[run_id], BATCH_DEPLOYMENT.split("/")[0]):
                            process(settings, parameters["input_dir"], parameters["output_dir"],
                                    parameters["run_id"], stems_of[run_id], batch=str(run_id))
                    except Exception as e:  # the parent run goes on; _gather reports the missing images
                        client.set_flow_run_state(run_id, Failed(message=f"processed in parent run {parent}, "
                                                                         f"which failed on it: {inert(e)}"), force=True)
                    else:
                        client.set_flow_run_state(run_id, Completed(message=f"processed in parent run {parent}: "
                                                                            "no worker was free"), force=True)
                    pending.discard(run_id)  # the timer runs on: with no worker free, the next batch at once
                else:  # a worker got there first
                    last_pickup = time.monotonic()
            progress.update(100.0 * (len(runs) - len(pending)) / len(runs))


def _gather(output_dir: str, stems: list[str], run_id: str) -> list[dict]:
    """Image-level rows from ``reports/<stem>.parquet`` (written by whichever worker ran the batch).

    Only a report that this run wrote counts (its ``run_id`` column is ``run_id``), or the row that this run's
    batch recorded for the image (:func:`~desra.pipeline.report.read_batch_rows`: an image taken whole from the
    store publishes no new report). A report left by an earlier run, with no row from this run's batches, means
    that the batch died before it got to the image, and the image is a failed row, never the old result passed
    off as this run's."""
    rows: list[dict[str, Any]] = []
    remote = bucket_of(output_dir)
    recorded = read_batch_rows(work_root(output_dir), run_id, remote)
    for stem in stems:
        path = Path(output_dir) / "reports" / f"{stem}.parquet"
        if remote is not None:  # the bucket, where every worker published its images
            try:
                first = pd.read_parquet(io.BytesIO(remote.read(f"reports/{stem}.parquet"))).iloc[0]
            except MissingObjectError:
                first = None
        else:
            first = pd.read_parquet(path).iloc[0] if path.exists() else None
        if (first is None or first.get("run_id") != run_id) and stem in recorded:
            rows.append(recorded[stem])
            continue
        if first is None or first.get("run_id") != run_id:
            rows.append({"stem": stem, "status": "failed", "run_id": run_id,
                         "error": "its batch run ended without a report from this run (see the desra-batch run)"})
            continue
        rows.append({k: (None if pd.isna(first[k]) else first[k]) if k in first else None for k in IMAGE_COLUMNS})
    return rows


@flow(name="desra", flow_run_name="desra {input_dir}", validate_parameters=True)
@with_options(RunOptions)
def desra(
    input_dir: str,
    output_dir: str,
    finetune: bool = False,
    finetune_settings: dict | None = None,
    batch_size: Annotated[int, Field(ge=1)] = 32,
    scale_out: bool | None = None,
    **options: Any,
):
    """Detect (and, with ``finetune``, delete) GAN-SR artifacts in every image of ``input_dir``.

    The run's settings are keyword parameters too, one per option of :class:`~desra.pipeline.options.RunOptions`
    (``mse_model``, ``threshold``, ``device``…: their types, bounds, defaults and help are written there once,
    and arrive here in ``options``).

    ``finetune``: afterwards, when any image has artifacts, fine-tune the GAN model on the drop's readable
    images, a share of them held out to validate on (what flow ``finetune`` runs after its admission, here with
    this run's admitted settings; ``finetune_settings`` passes its options, e.g. ``{"iterations": 400,
    "validate_every": 20}``, checked with their paths before any image is read; the same run as
    ``desra finetune``'s, in ``OUT/finetune/<gan>-<key>/``, so a run started again resumes). A generator is
    shipped only when the held-out images can show an improvement and a checkpoint lowers their artifacts beyond
    the measured noise while keeping the detail of every one; the message says which, or why none.
    ``scale_out``: run batches of ``batch_size`` images as ``desra-batch`` deployment runs; by default only
    when this run itself comes from a deployment and the drop has more than one batch. In this process the
    whole drop is one stream, whatever ``batch_size``.
    """
    logger = get_run_logger()
    tuning: FinetuneOptions | None = None
    if finetune:  # what fine-tuning adds to the run (its options and paths), refused before anything is created
        admitted = admit_finetuning(output_dir, finetune_settings)
        if isinstance(admitted, State):  # refused
            return admitted
        tuning = admitted
    # Before anything is read or created: paths inside the allowed roots, valid options; then device,
    # models, segmenter and output root, before any image is touched.
    settings = admit(input_dir=input_dir, output_dir=output_dir, **options)
    if isinstance(settings, State):  # refused
        return settings
    ensure_gpu_limit()
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{str(runtime_flow_run.id or 'local')[:8]}"
    try:
        # Through the folder that admit() opened and checked: refused entries too, each gets its report row.
        stems = (sorted({item["stem"] for item in scan_drop(input_dir)}) if is_url(input_dir)
                 else sorted(list_image_entries(drop_folder(input_dir))))
    except DesraError as e:  # no such folder, or not a folder
        return refuse(e)
    batches = [stems[i:i + batch_size] for i in range(0, len(stems), batch_size)]
    progress = Progress(f"desra: {len(stems)} image(s) in {len(batches)} batch(es)")
    if scale_out is None:
        scale_out = runtime_deployment.id is not None and len(batches) > 1
    if scale_out and batches:
        logger.info("%d images in %d batches: running them as %s deployment runs", len(stems), len(batches),
                    BATCH_DEPLOYMENT)
        # the device and the SR models as asked: each batch run is admitted on its own worker, which resolves
        # them there (a model given as a URL is fetched into that worker's cache, not this one's)
        asked = {name: options[name] for name in ("device", "mse_model", "gan_model")}
        parameters = dict(input_dir=input_dir, output_dir=output_dir, run_id=run_id,
                          **settings.replace(**asked).options())
        _run_batches_on_workers(batches, parameters, progress, settings)
        rows = _gather(output_dir, stems, run_id)
    else:  # in this process: one stream over the whole drop (batches only divide work between workers)
        rows = process(settings, input_dir, output_dir, run_id, None, progress)
    write_run_report(rows, output_dir, run_id, {"Threshold": settings.detection.threshold,
                                                    "Input folder": input_dir})
    failed = [r for r in rows if r.get("status") != "ok"]
    message = f"{len(rows) - len(failed)} ok, {len(failed)} failed of {len(rows)} image(s)"
    if tuning is not None:  # finetune=True, its options admitted above
        readable = [r["stem"] for r in rows if r.get("status") == "ok"]
        if any((r.get("region_count") or 0) > 0 for r in rows if r.get("status") == "ok"):
            # Every readable image, not only the flagged ones: where no artifact was found the pseudo-GT is the
            # GAN's own result, so the model keeps its behaviour there (the README's fine-tuning table), and
            # some of them are held out to validate on.
            # The run's admitted settings, whole (not admitted again): the pairs come from the store this run
            # has just filled.
            tuned = finetune_generator(input_dir, output_dir, settings, tuning, readable)
            if tuned["generator"] is None:
                message += f"; fine-tuning {settings.gan_model} shipped no model: {tuned['reason']}"
            else:
                message += (f"; fine-tuned {settings.gan_model} on {tuned['pairs']} image(s), shipped step "
                            f"{tuned['chosen_step']}: {tuned['generator']}")
        else:
            message += "; no artifacts found, nothing to fine-tune"
    if failed:
        return Failed(message=message + "; first: " + f"{inert(failed[0]['stem'])}: {inert(failed[0].get('error'))}")
    return Completed(message=message)


def run_in_process(**parameters):
    """Run flow ``desra`` in this process and return its final state (what ``desra run`` does).

    Without ``PREFECT_API_URL`` the run goes to Prefect's embedded API, which lives and dies with this
    process. Flow-run heartbeats are then switched off: they exist so that a server can mark a run whose
    process died as crashed, and the embedded server dies with it, so nobody would read them, while
    stopping the heartbeat thread costs up to a second at the end of every flow run. Against a real
    server (``PREFECT_API_URL`` set) Prefect's heartbeat setting is left as it is.
    """
    import contextlib

    from prefect.context import SettingsContext, get_settings_context

    context = get_settings_context()
    scope: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if not context.settings.api.url:  # embedded API: a copy of the settings without heartbeats (a plain
        # model copy: Prefect's temporary_settings re-reads every setting source, a tenth of a second)
        flows = context.settings.flows.model_copy(update={"heartbeat_frequency": None})
        scope = SettingsContext(profile=context.profile, settings=context.settings.model_copy(update={"flows": flows}))
    with scope:
        return desra(**parameters, return_state=True)
