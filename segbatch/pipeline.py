"""The job: plan on the driver, read → predict → encode → write on Ray Data, finalize.

This is the only module that wires Ray (the datasink lives in :mod:`segbatch.stages.sink`, kept
torch-free; what the driver decides before and around it lives in :mod:`segbatch.driver`). Each
stage gets explicit arguments:

    manifest ─▶ read_slices (CPU tasks) ─▶ RayPredictor (actor pool, GPU-pinned or CPU)
             ─▶ encode_batch (CPU tasks) ─▶ PartsDatasink (atomic part files) ─▶ finalize
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from segbatch.config import JobConfig
from segbatch.driver import interrupt
from segbatch.driver.layout import ClusterShape, Layout, LayoutRequest, cluster_shape, fit_layout, size_layout
from segbatch.driver.plan import Prepared, check_output_place, coco_info, model_options, prepare
from segbatch.driver.progress import CommitCounter, Monitor, Needs
from segbatch.driver.summary import RunSummary
from segbatch.errors import JobError
from segbatch.executor import ACTOR_TASK_RETRIES, READ_TASK_RETRIES, Executor, ModelLoadError, encode_commit
from segbatch.io import fs as fsio
from segbatch.outputs.exports import describe, record_exports, stale_forms, write_exports
from segbatch.outputs.finalize import FinalizeSpec, finalize
from segbatch.outputs.folder import JOB, MANIFEST, METRICS, PARTS, SUCCESS, OutDir
from segbatch.outputs.parts import write_part
from segbatch.outputs.schema import PART_SCHEMA
from segbatch.stages.encode import EncodeSpec, encode_batch
from segbatch.stages.read import CPU_DEVICE_FILTERS, DEVICE_FILTERS
from segbatch.stages.strips import expand, strips_per_image

__all__ = ["RunSummary", "run"]

log = logging.getLogger("segbatch")

# Images of failed batches that are retried one per task before the run gives up; more
# than this means something broader than a bad image (storage down, every worker dying).
ISOLATE_MAX = 256
ROWS_PER_PART = 64  # rows per committed part file of a large run (--rows-per-part)
# How long an explicit --ray-address may take to answer before the run stops with a message.
CONNECT_TIMEOUT_S = 10.0


def run(config: JobConfig) -> RunSummary:
    """Run one job end to end; resumable. Raises :class:`JobError` before any work on bad input."""
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _configure_logging(config.verbose)
    start = _start(config)
    try:
        return _run(config, start, t_start, started)
    finally:
        start.stop()


def _run(config: JobConfig, start: _StartUp, t_start: float, started: str) -> RunSummary:
    prep, ray_up_s = start.prep, start.ray_up_s
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
        try:
            layout, first_commit_s = _execute(config, prep, todo, start)
        except ModelLoadError:
            if not prep.resumed and not prep.out.part_files():  # nothing was labeled: left as found
                _forget(prep.out, remove_folder=not prep.out_existed)
            raise
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
    if config.report:  # every run: class frequencies and confidence need no labels
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
    final = {
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
    }
    out.write_json(JOB, final)
    fsio.write_bytes_atomic(out.fs, out.path(SUCCESS), b"")
    notes = (*notes, *_write_extra_forms(config, prep, final, first_started))
    rate = todo.num_rows / (t_final - t_ray) if todo.num_rows and t_final > t_ray else None
    return _summary(config, prep, metrics, todo.num_rows, len(committed), t_end - t_start, rate, report, notes)


def _forget(out: OutDir, remove_folder: bool) -> None:
    """Remove what a run that labeled nothing wrote (job.json, the manifest), and the output folder
    if this run created it and nothing else is in it: a run that stops because the model actors
    cannot build the model (weights that do not fit, found where the model is built) ends as one
    that stopped on the driver."""
    for name in (JOB, MANIFEST):
        with contextlib.suppress(FileNotFoundError):
            out.fs.rm(out.path(name))
    with contextlib.suppress(OSError):
        if remove_folder and out.fs.exists(out.root) and not out.fs.ls(out.root):
            out.fs.rmdir(out.root)


def _write_extra_forms(config: JobConfig, prep: Prepared, job: dict[str, Any], first_started: str) -> tuple[str, ...]:
    """The ``--export`` forms (COCO aside: finalize wrote it), from the tables finalize wrote,
    through the function ``segbatch export`` uses; returns a line per form for the summary.

    They come after ``_SUCCESS``: the run is complete whatever becomes of them, and a form that
    fails is written later by ``segbatch export`` (or a rerun) with no model run.
    """
    forms = [f for f in config.exports if f != "coco"]
    if not forms:
        return ()
    out = prep.out
    settings = config.export_settings(coco_info(config.model, first_started))
    t0 = time.perf_counter()
    try:
        records = write_exports(out, forms, settings)
    except JobError as err:
        raise JobError(
            f"the run in {config.output} is complete, but writing {', '.join(forms)} failed: {err}; once that is "
            f"fixed, `segbatch export {config.output} --format {','.join(forms)}` writes them (no model run)"
        ) from err
    job = record_exports(job, records, settings)
    job["timings"] = {**job["timings"], "exports_s": round(time.perf_counter() - t0, 3)}
    out.write_json(JOB, job)
    return tuple(describe(form, record["counts"], out) for form, record in records.items())


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
    settings = config.export_settings(coco_info(config.model, job.get("started", "")))
    extra = list(notes)
    stale = stale_forms(job, ["coco", *(f for f in config.exports if f != "coco")], settings)
    if stale:
        records = write_exports(out, stale, settings)
        out.write_json(JOB, record_exports(job, records, settings))
        for form, record in records.items():
            if form == "coco":
                message = (
                    f"rewrote the COCO files with the new export options ({record['counts']['annotations']} "
                    f"annotations, {settings.coco.segmentation}); no model run"
                )
            else:
                message = describe(form, record["counts"], out) + "; no model run"
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


@dataclasses.dataclass
class _StartUp:
    """What a run has when its work can begin: the plan, and (when there is work) the cluster,
    the layout and the model actors, already starting."""

    prep: Prepared
    ray_up_s: float | None = None  # from the start of run() until Ray was up and the actors created
    t_up: float | None = None  # wall clock when Ray was up
    cluster: ClusterShape | None = None
    layout: Layout | None = None
    precision: str = "fp32"
    executor: Executor | None = None
    decode: str = "host"  # where JPEGs are decoded: --decode resolved for the layout

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.stop()
            self.executor = None


def _start(config: JobConfig) -> _StartUp:
    """Plan and start: :func:`prepare` (torch imports, weights, listing, pairing) runs in a thread
    while this thread connects to Ray (a local cluster takes ~3 s to start here), sizes the
    layout and creates the model actors, which then import torch while the planning goes on:
    start-up costs the longest of the three, not their sum. (Ray must be started from the main
    thread: its node processes die with the thread that started them.)"""
    t0 = time.perf_counter()
    if _nothing_to_do_likely(config):
        return _StartUp(prepare(config))
    quick_checks(config)  # the common mistakes fail at once, before a cluster is started for nothing
    result: list[Any] = []

    def plan() -> None:
        try:
            result.append(prepare(config))
        except BaseException as err:  # re-raised in the caller's thread
            result.append(err)

    planner = threading.Thread(target=plan, name="segbatch-plan", daemon=True)
    planner.start()
    launched = None
    started_ray = not ray.is_initialized()
    try:
        _connect(config.ray_address)
        launched = _launch(config)
        ray_up_s = time.perf_counter() - t0
    finally:
        planner.join()
        outcome = result[0] if result else None
        if not isinstance(outcome, Prepared) or launched is None:
            if launched is not None:
                launched.executor.stop()
            if started_ray:
                ray.shutdown()  # a cluster this run started must not outlive its error
    if isinstance(outcome, BaseException):
        raise outcome
    assert isinstance(outcome, Prepared)
    return _StartUp(outcome, ray_up_s, launched.t_up, launched.cluster, launched.layout, launched.precision,
                    launched.executor, launched.decode)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Launched:
    t_up: float
    cluster: ClusterShape
    layout: Layout
    precision: str
    executor: Executor
    decode: str  # "host" or "device"


def _launch(config: JobConfig) -> _Launched:
    """Size the layout from the cluster and create the model actors (they load the model later)."""
    t_up = time.time()
    cluster = cluster_shape()
    layout = fit_layout(size_layout(_request(config), cluster), cluster)
    precision = config.precision
    if not layout.gpus_per_actor and precision != "fp32":
        log.warning("--precision %s applies on a GPU; the model actors run on the CPU: fp32", precision)
        precision = "fp32"
    for warning in layout.warnings:
        log.warning("%s", warning)
    settings = {
        "options": model_options(config),
        "precision": precision,
        "channels_last": config.channels_last,
        "fold_batchnorm": config.fold_batchnorm,
        "num_threads": layout.torch_threads,
        "announce": config.verbose,
        # Label quality needs the class probabilities; only runs with labels pay for them.
        "quality_stride": config.quality_stride if config.labels is not None and config.quality_stride else None,
        "tiling": _tiling(config, layout),
    }
    # --decode auto: JPEGs go to the model actors as bytes, on a GPU (nvJPEG) and on a CPU too:
    # there, decoding in the actor costs less CPU in all than decoding in a read task and moving
    # ~1 MB of pixels per image through the object store (bench/overhead.py: ~27 against ~49 ms
    # an image), and a 2-core machine labels 128 images ~10 % sooner (bench/README.md).
    decode = config.decode if config.decode != "auto" else "device"
    return _Launched(t_up, cluster, layout, precision, Executor.start(layout, settings), decode)


def _tiling(config: JobConfig, layout: Layout) -> Any:
    """A tiled run's :class:`segbatch.stages.tiled.TiledRead` for the model actors (None: untiled)."""
    spec = config.tile_spec()
    if spec is None:
        return None
    from segbatch.stages.tiled import TiledRead

    # Tiles per forward pass as images are batched: the batch on a GPU; on a CPU the model's own
    # images per pass (ModelBundle.cpu_batch: 1 for convolutional networks, 2 for transformers).
    per_pass = layout.batch_size if layout.gpus_per_actor else None
    return TiledRead(spec, dict(config.storage_options), config.high_bit_depth, config.max_image_pixels, per_pass,
                     config.tile_merge, config.tile_merge_threshold, config.tile_full_pass)  # fmt: skip


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
        fsio.require_shared_folder(fs, config.input, "input")
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
        logging.getLogger(name).setLevel(logging.INFO if verbose else level)


def _execute(config: JobConfig, prep: Prepared, todo: pa.Table, start: _StartUp) -> tuple[dict[str, Any], float | None]:
    """Label the images in ``todo`` with the run's executor; returns the layout that ran (for
    job.json) and the seconds from Ray up to the first committed part."""
    if start.executor is None:  # planned without a cluster (a finished job, it seemed): start now
        _connect(config.ray_address)
        launched = _launch(config)
        start.cluster, start.layout, start.precision = launched.cluster, launched.layout, launched.precision
        start.decode = launched.decode
        start.executor, start.t_up = launched.executor, launched.t_up
    executor, layout, cluster = start.executor, start.layout, start.cluster
    assert executor is not None and layout is not None and cluster is not None and start.t_up is not None
    so = config.storage_options
    # Tiled runs with fewer images than about twice the actors split each image into strips of
    # tile rows that run on different actors (segbatch.stages.strips): one strip per batch.
    strips = 1
    if config.tile is not None:
        strips = config.tile_strips or strips_per_image(layout.max_actors, todo.num_rows)
    batches = todo.num_rows * strips if strips > 1 else -(-todo.num_rows // layout.batch_size)
    if layout.max_actors > batches:
        # More model actors than model batches would hold models that never get work.
        if layout.chosen["actors"] == "flag":
            log.info("%d actors asked for %d batch(es) of images: starting %d", layout.actors, batches, batches)
        executor.shrink(batches)
        layout = dataclasses.replace(layout, actors=min(layout.actors, batches), max_actors=batches)
        executor.layout = layout
    given = [f for f, how in layout.chosen.items() if how == "flag"]
    log.info(
        "labeling %d images with %s: %s (%s; cluster: %s)",
        todo.num_rows,
        config.model,
        layout.describe(),
        f"from flags: {', '.join(given)}; the rest sized" if given else "sized from the cluster",
        cluster.describe(),
    )
    loaded = prep.loaded
    executor.load(ray.put(prep.resolved), loaded.signature())
    encode_spec = EncodeSpec(
        task=loaded.task,
        categories=loaded.categories,
        background=loaded.background,
        eval_space=prep.eval_space,
        label_kind=prep.label_kind,
        missing_labels=config.missing_labels,
        storage_options=so,
        score_threshold=config.score_threshold,
        quality_stride=executor.settings.get("quality_stride") if loaded.task == "semantic" else None,
    )
    parts_url = prep.out.url_of(PARTS)
    # Small runs commit often (the first part, and progress, come after one batch); large ones
    # in parts of up to 64 rows (fewer files for resume to read and finalize to merge).
    rows_per_part = config.rows_per_part or max(layout.batch_size, min(ROWS_PER_PART, todo.num_rows // 32))
    group = max(1, rows_per_part // layout.batch_size)
    encode_task = encode_commit.options(num_cpus=layout.task_cpus, max_retries=READ_TASK_RETRIES)

    def encode(predicted: list[Any]) -> Any:
        return encode_task.remote(encode_spec, parts_url, so, *predicted)

    counter = CommitCounter()
    monitor = Monitor(
        todo.num_rows,
        counter.read,
        Needs(gpus=layout.gpus_per_actor, cpus=min(layout.cpus_per_actor, 1.0)),
        config.stall_timeout,
        ray.nodes,
    )
    # read_batch's arguments after the rows: a tiled run reads only the sizes (the actors read
    # regions); --decode device sends JPEGs to the actors as bytes.
    # On CPU actors every torch resize filter can run where the model is (segbatch.stages.read).
    filters = DEVICE_FILTERS if layout.gpus_per_actor else CPU_DEVICE_FILTERS
    read_args = (loaded.preprocess, so, config.high_bit_depth, config.max_image_pixels, config.tile is not None,
                 start.decode, filters)  # fmt: skip
    if strips > 1:
        log.info("each image is split into %d strips of tile rows across the model actors", strips)
    work = expand(todo, strips) if strips > 1 else todo
    todo_ref = ray.put(work)
    try:
        failed = executor.run(work.num_rows, todo_ref, read_args, encode, group, counter, monitor, strips)
    finally:
        monitor.close()
    first = monitor.first_commit
    executor.stop()  # the model actors' CPUs and GPUs go to the one-image tasks below, if any
    committed = prep.out.committed_ids()
    left = todo.filter(pc.invert(pc.is_in(todo.column("image_id"), value_set=pa.array(sorted(committed), pa.int64()))))
    if left.num_rows:
        if not failed:
            log.warning("%d images have no committed result although every batch finished", left.num_rows)
        settings = {**executor.settings, "model_holder": [ray.put(prep.resolved)]}
        label_alone(left, read_args, settings, encode_spec, parts_url,
                    num_cpus=layout.cpus_per_actor, num_gpus=layout.gpus_per_actor)  # fmt: skip
    record = {**layout.to_dict(), "precision": start.precision, "decode": start.decode, "cluster": cluster.describe()}
    if config.tile is not None:
        record["tile_strips"] = strips
    return record, None if first is None else round(first - start.t_up, 3)


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


def label_alone(
    rows: pa.Table,
    read_args: tuple[Any, ...],
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
    read_args: tuple[Any, ...],
    predictor_kwargs: dict[str, Any],
    encode_spec: EncodeSpec,
    parts_url: str,
) -> str:
    """read → predict → encode → commit for ``rows`` (one image), in a worker of its own.
    ``read_args``: :func:`segbatch.stages.read.read_batch`'s arguments after the rows."""
    so = read_args[1]
    batch = {c: np.array(rows.column(c).to_pylist(), dtype=object) for c in rows.column_names}
    from segbatch.stages.actor import RayPredictor
    from segbatch.stages.read import read_batch

    predicted = RayPredictor(**predictor_kwargs)(read_batch(batch, *read_args))
    return write_part(encode_batch(predicted, encode_spec), parts_url, so)


# Ray kills a worker process idle for 1 s once more workers exist than CPUs are free, and the
# model actors hold most of a small machine's CPUs: every read and encode task then started a
# new process that imported torch again (~3 s of CPU on 2 cores; SegFormer's batches, 7 s
# apart, paid it every batch, halving the actor's rate). A cluster segbatch starts keeps idle
# workers for the job (cluster.yaml sets the same for the clusters it starts).
IDLE_WORKER_KEEP_MS = 300_000
LOCAL_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS}


def _connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS, or an already started local one), or
    start a local one without the dashboard (its dozen processes cost a small machine seconds
    of CPU at start; ``ray start --head`` gives one) that keeps idle worker processes
    (:data:`LOCAL_SYSTEM_CONFIG`).

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
        kwargs["_system_config"] = LOCAL_SYSTEM_CONFIG
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
