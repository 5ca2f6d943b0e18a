"""The job: plan on the driver, read → predict → encode → write on Ray Data, finalize.

This is the only module that wires Ray (the datasink lives in :mod:`segbatch.stages.sink`, kept
torch-free; what the driver decides before and around it lives in :mod:`segbatch.driver`). Each
stage gets explicit arguments:

    manifest ─▶ read_slices (CPU tasks) ─▶ Predictor (actor pool, GPU-pinned or CPU)
             ─▶ encode_batch (CPU tasks) ─▶ PartsDatasink (atomic part files) ─▶ finalize
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from segbatch.config import JobConfig
from segbatch.driver import interrupt
from segbatch.driver.layout import LayoutRequest, cluster_shape, fit_layout, size_layout
from segbatch.driver.plan import Prepared, check_output_place, coco_info, model_options, prepare
from segbatch.driver.progress import CommitCounter, Monitor, Needs
from segbatch.driver.summary import RunSummary
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.outputs.coco import rewrite_coco_exports
from segbatch.outputs.finalize import FinalizeSpec, finalize
from segbatch.outputs.folder import JOB, MANIFEST, METRICS, PARTS, SUCCESS
from segbatch.outputs.parts import write_part
from segbatch.outputs.schema import PART_SCHEMA
from segbatch.stages.encode import EncodeSpec, encode_batch
from segbatch.stages.feed import read_slices
from segbatch.stages.predict import Predictor, pick_device
from segbatch.stages.read import read_batch
from segbatch.stages.sink import PartsDatasink

__all__ = ["RunSummary", "run"]

log = logging.getLogger("segbatch")

READ_TASK_RETRIES = 3
ACTOR_TASK_RETRIES = 2
# Images of failed batches that are retried one per task before the run gives up; more
# than this means something broader than a bad image (storage down, every worker dying).
ISOLATE_MAX = 256
# Ray Data puts each input block in the object store from the driver (~1 ms each here):
# past this many model batches, a block carries several (its read task reads them in turn).
FEED_BLOCKS = 1000
# How long an explicit --ray-address may take to answer before the run stops with a message.
CONNECT_TIMEOUT_S = 10.0


def run(config: JobConfig) -> RunSummary:
    """Run one job end to end; resumable. Raises :class:`JobError` before any work on bad input."""
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _configure_logging(config.verbose)
    prep, ray_up_s = _plan_while_ray_starts(config)
    for warning in prep.warnings:
        log.warning("%s", warning)
    out, manifest = prep.out, prep.plan.manifest
    notes = _input_notes(prep)
    all_ids = set(manifest.column("image_id").to_pylist())
    committed = out.committed_ids() & all_ids
    done = pc.is_in(manifest.column("image_id"), value_set=pa.array(sorted(committed), pa.int64()))
    todo = manifest.filter(pc.invert(done))
    if prep.resumed and not todo.num_rows and out.exists(SUCCESS):
        return _finished_already(config, prep, len(committed), notes, time.perf_counter() - t_start)
    first_started = out.read_json(JOB).get("started", started) if prep.resumed else started
    if not prep.resumed or not out.exists(MANIFEST):
        out.write_table(MANIFEST, manifest)
    out.write_json(JOB, {**prep.job, "status": "running", "started": first_started, "this_run_started": started})
    if committed:
        log.info("resuming: %d of %d images already committed, %d to go", len(committed), len(all_ids), todo.num_rows)
    t_ray = time.perf_counter()
    applied = dict(prep.job["applied"])
    layout: dict[str, Any] = {}
    first_commit_s = None
    if todo.num_rows:
        layout, first_commit_s = _execute(config, prep, todo)
        applied["precision"] = layout["precision"]
    t_final = time.perf_counter()
    export = config.export_options()
    metrics = finalize(
        out,
        all_ids,
        FinalizeSpec(
            task=prep.loaded.task,
            categories=prep.loaded.categories,
            background=prep.loaded.background,
            eval_classes=prep.job["eval_classes"],
            coco_info=coco_info(config.model, first_started),
            export=export,
            coco_labels=config.labels if prep.label_kind == "coco" else None,
        ),
    )
    report = False
    if config.report and metrics["num_labeled"]:
        from segbatch.audit.report import AuditOptions, write_report

        log.info("audit report: %s", write_report(out, AuditOptions(), metrics=metrics))
        report = True
    t_end = time.perf_counter()
    timings = {
        "ray_up_s": None if ray_up_s is None else round(ray_up_s, 3),  # from the start of run()
        "first_commit_s": first_commit_s,  # from Ray up to the first committed part
        "plan_s": round(t_ray - t_start, 3),
        "inference_s": round(t_final - t_ray, 3),
        "finalize_s": round(t_end - t_final, 3),
        "total_s": round(t_end - t_start, 3),
    }
    out.write_json(
        JOB,
        {
            **prep.job,
            "applied": applied,
            "layout": layout,
            "coco_export": export.to_dict(),
            "status": "complete",
            "started": first_started,
            "this_run_started": started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images_this_run": todo.num_rows,
            "images_resumed": len(committed),
            "timings": timings,
        },
    )
    fsio.write_bytes_atomic(out.fs, out.path(SUCCESS), b"")
    rate = todo.num_rows / (t_final - t_ray) if todo.num_rows and t_final > t_ray else None
    return _summary(config, prep, metrics, todo.num_rows, len(committed), t_end - t_start, rate, report, notes)


def _input_notes(prep: Prepared) -> tuple[str, ...]:
    notes = []
    skipped = prep.plan.skipped.describe()
    if skipped:
        log.info("%s", skipped)
    if prep.plan.ambiguous:
        log.warning(
            "%d images were not paired with a label because their stem (or COCO basename) is not unique; "
            "their rows say why (error column), and manifest.parquet's label_note column",
            prep.plan.ambiguous,
        )
    if prep.changes is not None and prep.changes.describe():
        notes.append(prep.changes.describe() or "")
        log.warning("%s", prep.changes.describe())
    return tuple(notes)


def _finished_already(
    config: JobConfig, prep: Prepared, committed: int, notes: tuple[str, ...], seconds: float
) -> RunSummary:
    """A rerun of a finished job: nothing to label. Export options that differ from what the COCO
    files hold are applied now (as ``segbatch export`` does), and job.json records them."""
    out = prep.out
    job = out.read_json(JOB)
    export = config.export_options()
    extra = list(notes)
    if job.get("coco_export") != export.to_dict():
        counts = rewrite_coco_exports(out, export, coco_info(config.model, job.get("started", "")))
        message = (
            f"rewrote the COCO files with the new export options ({counts['annotations']} annotations, "
            f"{export.segmentation}); no model run"
        )
        log.info("output %s already holds this job, complete: %s", config.output, message)
        extra.append(message)
    else:
        log.info("output %s already holds this job, complete: nothing to do", config.output)
    metrics = out.read_json(METRICS)
    report = out.exists("report.html")
    return _summary(config, prep, metrics, 0, committed, seconds, None, report, tuple(extra))


def _summary(
    config: JobConfig,
    prep: Prepared,
    metrics: dict[str, Any],
    processed: int,
    skipped: int,
    seconds: float,
    rate: float | None,
    report: bool,
    notes: tuple[str, ...],
) -> RunSummary:
    background = prep.loaded.background
    return RunSummary(
        output=config.output,
        num_images=metrics["num_images"],
        num_processed=processed,
        num_skipped=skipped,
        num_errors=metrics["num_errors"],
        num_masks=metrics["num_masks"],
        num_labeled=metrics["num_labeled"],
        mean_dice=metrics.get("mean_dice"),
        seconds=seconds,
        images_per_second=rate,
        metrics=metrics,
        report=report,
        background=None if background is None else prep.eval_space.names[prep.eval_space.background or 0],
        notes=notes,
    )


def _plan_while_ray_starts(config: JobConfig) -> tuple[Prepared, float | None]:
    """:func:`prepare` (torch imports, weights, listing, pairing) in a thread while this thread
    connects to Ray (a local cluster takes ~5 s to start here): start-up costs the longer of the
    two, not their sum. Ray must be started from the main thread: its node processes die with
    the thread that started them. Returns the plan and when Ray was up (s since run() began)."""
    t0 = time.perf_counter()
    if ray.is_initialized() or _nothing_to_do_likely(config):
        return prepare(config), None
    quick_checks(config)  # the common mistakes fail at once, before a cluster is started for nothing
    result: list[Any] = []

    def plan() -> None:
        try:
            result.append(prepare(config))
        except BaseException as err:  # re-raised in the caller's thread
            result.append(err)

    planner = threading.Thread(target=plan, name="segbatch-plan", daemon=True)
    planner.start()
    try:
        _connect(config.ray_address)
    finally:
        ray_up = time.perf_counter() - t0
        planner.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        ray.shutdown()  # a cluster this run started must not outlive its error
        raise outcome
    return outcome, ray_up


def _nothing_to_do_likely(config: JobConfig) -> bool:
    """A rerun of a finished job (``_SUCCESS`` there) usually has nothing to label: no cluster then."""
    try:
        fs, root = fsio.resolve(config.output, config.storage_options)
        return bool(fs.exists(fsio.join(root, SUCCESS)))
    except Exception:  # any storage problem is prepare()'s to report, with its message
        return True


def quick_checks(config: JobConfig) -> None:
    """Checks that need no torch and no listing: the output, the input's existence."""
    check_output_place(config)
    with fsio.storage_errors(config.input, "input"):
        fs, root = fsio.resolve(config.input, config.storage_options)
        if not fs.exists(root):
            raise JobError(f"input {config.input!r} does not exist")


# Ray's loggers kept quieter unless --verbose: Ray Data's per-operator progress (segbatch shows
# its own), its notice that those progress bars are off, and Ray's notice that token
# authentication is on (README "Ray clusters with token authentication").
_QUIET = {
    "ray.data": logging.WARNING,
    "ray.data._internal.progress": logging.ERROR,
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}


def _configure_logging(verbose: bool) -> None:
    """Ray's own progress and notices only with --verbose; segbatch's progress otherwise."""
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)


def _execute(config: JobConfig, prep: Prepared, todo: pa.Table) -> tuple[dict[str, Any], float | None]:
    """Run read → predict → encode → write on Ray Data for the images in ``todo``; returns the
    layout that ran (for job.json) and the seconds from Ray up to the first committed part."""
    _connect(config.ray_address)
    t_up = time.time()
    so = config.storage_options
    cluster = cluster_shape()
    layout = fit_layout(size_layout(_request(config), cluster), cluster)
    batches = -(-todo.num_rows // layout.batch_size)
    if layout.actors > batches:
        # More model actors than model batches would start models that never get work.
        if layout.chosen["actors"] == "flag":
            log.info("%d actors asked for %d batch(es) of images: starting %d", layout.actors, batches, batches)
        layout = dataclasses.replace(layout, actors=batches, max_actors=max(batches, 1))
    precision = config.precision
    if not layout.gpus_per_actor and precision != "fp32":
        log.warning("--precision %s applies on a GPU; the model actors run on the CPU: fp32", precision)
        precision = "fp32"
    for warning in layout.warnings:
        log.warning("%s", warning)
    given = [f for f, how in layout.chosen.items() if how == "flag"]
    log.info(
        "labeling %d images with %s: %s (%s; cluster: %s)",
        todo.num_rows,
        config.model,
        layout.describe(),
        f"from flags: {', '.join(given)}; the rest sized" if given else "sized from the cluster",
        cluster.describe(),
    )
    model_ref = ray.put(prep.resolved)
    loaded = prep.loaded
    encode_spec = EncodeSpec(
        task=loaded.task,
        categories=loaded.categories,
        background=loaded.background,
        eval_space=prep.eval_space,
        label_kind=prep.label_kind,
        missing_labels=config.missing_labels,
        storage_options=so,
    )
    predictor_kwargs = {
        "model_holder": [model_ref],
        "options": model_options(config),
        "precision": precision,
        "channels_last": config.channels_last,
        "fold_batchnorm": config.fold_batchnorm,
        "num_threads": layout.torch_threads,
        "announce": config.verbose,
    }
    parts_url = prep.out.url_of(PARTS)
    counter: Any = ray.remote(num_cpus=0)(CommitCounter).remote()
    batch_size = layout.batch_size
    # One block per model batch, so that reading, inference and encoding pipeline; the
    # blocks hold batch indices only (segbatch.stages.feed), so a million images start in seconds.
    num_batches = -(-todo.num_rows // batch_size)
    todo_ref = ray.put(todo)
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.max_errored_blocks, ctx.enable_progress_bars)
    # A batch that still fails after its retries (a worker dying on a poison image) is set
    # aside instead of failing the run; its images are retried one by one below.
    ctx.max_errored_blocks = -1
    ctx.enable_progress_bars = config.verbose
    try:
        # from_items, not range: an in-memory source, so Ray Data paces decoding by the
        # model (a read source runs ahead of it and the first result comes ~6 s later here).
        ds: ray.data.Dataset = ray.data.from_items(
            [{"id": i} for i in range(num_batches)], override_num_blocks=min(num_batches, FEED_BLOCKS)
        )
        # Retries and SPREAD have no named parameter yet: **ray_remote_args is how Ray Data
        # takes them (deprecated, removed in Ray 2.64, hence the pin in pyproject.toml).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            # Read tasks retry a bounded number of times when their worker dies (a decode error
            # is an error row, not a retry). Giving them remote args the actors lack also keeps
            # Ray Data from fusing decoding into the model actors: decoding runs in parallel
            # CPU tasks, spread over the cluster, while the actors only run the model.
            ds = ds.map_batches(
                read_slices,  # type: ignore[arg-type]  # Ray types fn as one-argument; fn_kwargs give the rest
                fn_kwargs={
                    "todo_holder": [todo_ref],
                    "batch_size": batch_size,
                    "preprocess": loaded.preprocess,
                    "storage_options": so,
                    "high_bit_depth": config.high_bit_depth,
                },
                batch_size=1,
                batch_format="numpy",
                num_cpus=layout.task_cpus,
                max_retries=READ_TASK_RETRIES,
                scheduling_strategy="SPREAD",
            )
            ds = ds.map_batches(
                _RayPredictor,
                fn_constructor_kwargs=predictor_kwargs,
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=layout.actors, max_size=layout.max_actors),
                num_gpus=layout.gpus_per_actor,
                num_cpus=layout.cpus_per_actor,
                # One actor per node before two on one: the pool uses every node's cores (and
                # memory bandwidth), and losing a node loses as few actors as possible.
                scheduling_strategy="SPREAD",
                # A dead actor is restarted (Ray Data's default) and its batch retried a bounded
                # number of times (Ray Data's default is forever), so a poison batch cannot loop.
                max_task_retries=ACTOR_TASK_RETRIES,
                # Ray Data runs a callable class's __call__ one at a time even so: the other
                # calls' threads fetch and batch inputs and store outputs meanwhile.
                max_concurrency=layout.calls_per_actor,
            )
        ds = ds.map_batches(
            encode_batch,  # type: ignore[arg-type]  # Ray types fn as one-argument; fn_kwargs give the rest
            fn_kwargs={"spec": encode_spec},
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=layout.task_cpus,
        )
        sink = PartsDatasink(parts_url, so, config.rows_per_part, counter=counter)
        monitor = Monitor(
            todo.num_rows,
            lambda: ray.get(counter.read.remote()),
            Needs(gpus=layout.gpus_per_actor, cpus=min(layout.cpus_per_actor, 1.0)),
            config.stall_timeout,
            ray.nodes,
        )
        _write_watched(ds, sink, monitor)
    finally:
        ctx.max_errored_blocks, ctx.enable_progress_bars = saved
    first = monitor.first_commit
    committed = prep.out.committed_ids()
    left = todo.filter(pc.invert(pc.is_in(todo.column("image_id"), value_set=pa.array(sorted(committed), pa.int64()))))
    if left.num_rows:
        _label_alone(
            left,
            (loaded.preprocess, so, config.high_bit_depth),
            predictor_kwargs,
            encode_spec,
            parts_url,
            num_cpus=layout.cpus_per_actor,
            num_gpus=layout.gpus_per_actor,
        )
    ray.kill(counter)
    record = {**layout.to_dict(), "precision": precision, "cluster": cluster.describe()}
    return record, None if first is None else round(first - t_up, 3)


def _request(config: JobConfig) -> LayoutRequest:
    return LayoutRequest(
        actors=config.actors,
        gpus_per_actor=config.gpus_per_actor,
        cpus_per_actor=config.cpus_per_actor,
        torch_threads=config.torch_threads,
        calls_per_actor=config.calls_per_actor,
        batch_size=config.batch_size,
        task_cpus=config.task_cpus,
    )


def _write_watched(ds: ray.data.Dataset, sink: PartsDatasink, monitor: Monitor) -> None:
    """``ds.write_datasink(sink)`` in a thread while this one shows progress and watches for a
    stall; a stall raises :class:`JobError` here (the pipeline thread is left to Ray's shutdown)."""
    failure: list[BaseException] = []

    def write() -> None:
        try:
            ds.write_datasink(sink)
        except BaseException as err:  # re-raised in the caller's thread
            failure.append(err)

    worker = threading.Thread(target=write, name="segbatch-pipeline", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(timeout=0.25)
            monitor.poll()
        monitor.poll()
    finally:
        monitor.close()
    if failure:
        raise failure[0]


def _label_alone(
    rows: pa.Table,
    read_args: tuple[Any, Mapping[str, Any], str],
    predictor_kwargs: dict[str, Any],
    encode_spec: EncodeSpec,
    parts_url: str,
    *,
    num_cpus: float,
    num_gpus: float,
) -> None:
    """Label each image of the failed batches in a task of its own; commit an error row for
    an image whose worker still dies (or fails) every time, so one poison image cannot fail
    the run, and its batch-mates are labeled normally."""
    if rows.num_rows > ISOLATE_MAX:
        raise JobError(
            f"{rows.num_rows} images have no committed result after their batches failed "
            f"{ACTOR_TASK_RETRIES + 1} times (see the errors above); that is more than bad images "
            "explain: fix the cause and rerun the same command to resume"
        )
    log.warning(
        "%d images are in batches that failed %d times (a lost node, or an image that kills its worker); "
        "labeling them one per task",
        rows.num_rows,
        ACTOR_TASK_RETRIES + 1,
    )
    task = _label_one.options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_retries=ACTOR_TASK_RETRIES, retry_exceptions=False
    )
    refs = [
        task.remote(rows.slice(i, 1), read_args, predictor_kwargs, encode_spec, parts_url) for i in range(rows.num_rows)
    ]
    errors = []
    for ref, row in zip(refs, rows.to_pylist(), strict=True):
        try:
            ray.get(ref)
        except ray.exceptions.RayError as err:
            reason = type(getattr(err, "cause", None) or err).__name__
            log.error(
                "image %s (image_id %d) failed alone %d times (%s): committed as an error row",
                row["uri"],
                row["image_id"],
                ACTOR_TASK_RETRIES + 1,
                reason,
            )
            errors.append(
                {
                    "image_id": row["image_id"],
                    "file_name": row["file_name"],
                    "uri": row["uri"],
                    "status": "error",
                    "labeled": False,
                    "num_masks": 0,
                    "error": f"predict: the worker died or failed on this image alone "
                    f"{ACTOR_TASK_RETRIES + 1} times ({reason})",
                }
            )
    if errors:
        write_part(pa.Table.from_pylist(errors, schema=PART_SCHEMA), parts_url, read_args[1])


@ray.remote
def _label_one(
    rows: pa.Table,
    read_args: tuple[Any, Mapping[str, Any], str],
    predictor_kwargs: dict[str, Any],
    encode_spec: EncodeSpec,
    parts_url: str,
) -> str:
    """read → predict → encode → commit for ``rows`` (one image), in a worker of its own.
    ``read_args``: (preprocess, storage options, high-bit-depth conversion)."""
    preprocess, so, high_bit_depth = read_args
    batch = {c: np.array(rows.column(c).to_pylist(), dtype=object) for c in rows.column_names}
    predicted = _RayPredictor(**predictor_kwargs)(read_batch(batch, preprocess, so, high_bit_depth))  # type: ignore[arg-type]
    return write_part(encode_batch(predicted, encode_spec), parts_url, so)


def _connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS, or an already started local one), or
    start a local one without the dashboard (its dozen processes cost a small machine seconds
    of CPU at start; ``ray start --head`` gives one).

    An explicit ``host:port`` that does not answer stops the run within
    :data:`CONNECT_TIMEOUT_S` seconds, naming the address: ``ray.init`` itself retries forever.
    """
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    if target and target not in ("auto", "local") and "://" not in target:
        check_reachable(target, CONNECT_TIMEOUT_S)
    kwargs: dict[str, Any] = {}
    if _starts_local_cluster(address):
        kwargs["include_dashboard"] = False
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, **kwargs)
    interrupt.reinstall()  # ray.init installs a SIGTERM handler of its own


def _starts_local_cluster(address: str | None) -> bool:
    """Whether ``ray.init(address)`` will start a new local cluster (no address found to join)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address) is None  # type: ignore[arg-type]  # None: auto-detect
    except Exception:  # a Ray without it: let ray.init decide, with its defaults
        return False


def check_reachable(address: str, timeout: float) -> None:
    """Raise :class:`JobError` unless a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise JobError(f"Ray address {address!r} is not host:port (e.g. 127.0.0.1:6379)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(2.0, timeout)):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise JobError(
                    f"no Ray cluster answers at {address} ({err.strerror or err}) after {timeout:g} s; "
                    f"start one there (`ray start --head --port {port}`), or leave out --ray-address "
                    "(and RAY_ADDRESS) to start a local cluster"
                ) from None
            time.sleep(0.5)


class _RayPredictor(Predictor):
    """:class:`Predictor` fed from the object store, on the GPU Ray assigned (if any)."""

    def __init__(self, model_holder: list[Any], announce: bool = False, **kwargs: Any) -> None:
        # The ObjectRef travels inside a list so that Ray does not resolve it at
        # construction; the actor fetches the model's bytes (a ResolvedModel) once, here.
        gpu_ids = ray.get_gpu_ids()
        device = pick_device(gpu_ids)
        ctx = ray.get_runtime_context()
        worker = (
            f"node={ctx.get_node_id()[:12]} pid={os.getpid()} device={device} gpus={','.join(str(g) for g in gpu_ids)}"
        )
        super().__init__(model=lambda: ray.get(model_holder[0]), device=device, worker=worker, **kwargs)
        if announce:  # --verbose: Ray forwards actor output to the driver, one line per actor
            print(f"segbatch: model actor ready: {worker}", flush=True)
