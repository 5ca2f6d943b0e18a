"""The job: plan on the driver, read → predict → encode → write on Ray Data, finalize.

This is the only module that wires Ray (the datasink lives in :mod:`segbatch.stages.sink`, kept
torch-free). Each stage gets explicit arguments:

    manifest ─▶ read_slices (CPU tasks) ─▶ Predictor (actor pool, GPU-pinned or CPU)
             ─▶ encode_batch (CPU tasks) ─▶ PartsDatasink (atomic part files) ─▶ finalize
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from segbatch._version import __version__
from segbatch.categories import EvalSpace, build_eval_space, parse_label_map
from segbatch.config import JobConfig, redact_url
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.io.listing import Plan, build_plan, open_labels
from segbatch.models.registry import LoadedModel, ModelOptions, get_model_spec
from segbatch.models.weights import ResolvedWeights, load_model, resolve_weights
from segbatch.outputs.finalize import FinalizeSpec, finalize
from segbatch.outputs.folder import JOB, MANIFEST, METRICS, PARTS, SUCCESS, OutDir, check_output, job_identity
from segbatch.outputs.parts import write_part
from segbatch.outputs.schema import PART_SCHEMA
from segbatch.stages.encode import EncodeSpec, encode_batch
from segbatch.stages.feed import read_slices
from segbatch.stages.predict import Predictor, pick_device
from segbatch.stages.read import read_batch
from segbatch.stages.sink import PartsDatasink

log = logging.getLogger("segbatch")

READ_TASK_RETRIES = 3
ACTOR_TASK_RETRIES = 2
# Images of failed batches that are retried one per task before the run gives up; more
# than this means something broader than a bad image (storage down, every worker dying).
ISOLATE_MAX = 256
# Ray Data puts each input block in the object store from the driver (~1 ms each here):
# past this many model batches, a block carries several (its read task reads them in turn).
FEED_BLOCKS = 1000


@dataclass(frozen=True)
class RunSummary:
    """What a run did; also printed at its end."""

    output: str
    num_images: int
    num_processed: int  # images computed by this run
    num_skipped: int  # images already committed by an earlier run
    num_errors: int
    num_masks: int
    num_labeled: int
    mean_dice: float | None
    seconds: float
    images_per_second: float | None
    metrics: dict[str, Any]
    report: bool = False  # report.html was written

    def lines(self) -> list[str]:
        rate = f", {self.images_per_second:.2f} img/s" if self.images_per_second else ""
        out = [
            f"segbatch: {self.num_images} images ({self.num_processed} processed, {self.num_skipped} resumed, "
            f"{self.num_errors} errors) -> {self.num_masks} masks in {self.seconds:.1f} s{rate}"
        ]
        if self.num_labeled:
            dice = "n/a" if self.mean_dice is None else f"{self.mean_dice:.4f}"
            out.append(f"  mean Dice {dice} over {self.num_labeled} labeled images (background excluded)")
            for name, c in self.metrics.get("classes", {}).items():
                if c.get("dice") is not None:
                    out.append(f"    {name:<24} Dice {c['dice']:.4f}  IoU {c['iou']:.4f}")
        unmatched = self.metrics.get("unmatched", {})
        if unmatched.get("model_only") or unmatched.get("label_only"):
            out.append(
                f"  categories only the model knows: {unmatched.get('model_only')}; "
                f"only the labels know: {unmatched.get('label_only')}"
            )
        files = "predictions.coco.json, predictions.results.json, images.parquet, masks.parquet, metrics.json"
        if self.num_labeled and self.report:
            files += ", report.html"
        out.append(f"  outputs in {self.output}: {files}")
        return out


@dataclass(frozen=True)
class _Prepared:
    out: OutDir
    plan: Plan
    label_kind: str | None
    loaded: LoadedModel
    weights: ResolvedWeights
    eval_space: EvalSpace
    job: dict[str, Any]
    resumed: bool


def _model_options(config: JobConfig) -> ModelOptions:
    return ModelOptions(
        score_threshold=config.score_threshold, mask_threshold=config.mask_threshold, min_size=config.min_size
    )


def prepare(config: JobConfig) -> _Prepared:
    """Everything that can fail before work starts: model, weights, input, labels, output."""
    so = config.storage_options
    spec = get_model_spec(config.model)
    weights = resolve_weights(spec, config.weights, so)
    loaded = load_model(spec, weights, _model_options(config))
    label_map = None
    label_map_sha = None
    if config.label_map is not None:
        try:
            data = fsio.read_bytes(config.label_map, so)
        except FileNotFoundError:
            raise JobError(f"label map {config.label_map!r} does not exist") from None
        label_map = parse_label_map(data, config.label_map)
        label_map_sha = hashlib.sha256(data).hexdigest()
    out = OutDir.open(config.output, so)
    fsio.require_shared_folder(out.fs, config.output, "output")
    identity = job_identity(
        input=redact_url(config.input),
        labels=None if config.labels is None else redact_url(config.labels),
        label_map_sha256=label_map_sha,
        model=config.model,
        weights_source=redact_url(weights.source),
        weights_sha256=weights.sha256,
        options={
            "score_threshold": config.score_threshold,
            "mask_threshold": config.mask_threshold,
            "min_size": config.min_size,
            "precision": config.precision,
            "channels_last": config.channels_last,
            "fold_batchnorm": config.fold_batchnorm,
            "missing_labels": config.missing_labels,
            "extensions": list(config.extensions),
        },
    )
    resumed = check_output(out, identity)
    labels = None if config.labels is None else open_labels(config.labels, so)
    if resumed and out.exists(MANIFEST):
        # The manifest is frozen at the first run: a resumed run covers exactly those
        # images, and the input is not listed again.
        plan = Plan(
            manifest=out.read_table(MANIFEST),
            unmatched_labels=out.read_json(JOB).get("labels", {}).get("unmatched_label_files", 0),
        )
    else:
        plan = build_plan(config.input, labels, config.extensions, so)
    label_kind = None if labels is None else labels.kind
    eval_space = build_eval_space(
        loaded.categories,
        loaded.background,
        label_kind,
        labels.coco.categories
        if labels is not None and labels.coco is not None
        else (label_map.categories if label_map else None),
        label_map.match if label_map else None,
    )
    job = {
        "identity": identity,
        "config": config.public_dict(),
        "model": {
            "name": spec.name,
            "task": spec.task,
            "description": spec.description,
            "categories": list(loaded.categories),
            "background": loaded.background,
            "preprocess": loaded.preprocess.to_dict(),
            "weights": {"source": redact_url(weights.source), "sha256": weights.sha256},
        },
        "labels": {"kind": label_kind, "unmatched_label_files": plan.unmatched_labels},
        "eval_classes": eval_space.to_dict(),
        "versions": _versions(),
    }
    return _Prepared(out, plan, label_kind, loaded, weights, eval_space, job, resumed)


def run(config: JobConfig) -> RunSummary:
    """Run one job end to end; resumable. Raises :class:`JobError` before any work on bad input."""
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prep = prepare(config)
    out, manifest = prep.out, prep.plan.manifest
    if not prep.resumed or not out.exists(MANIFEST):
        out.write_table(MANIFEST, manifest)
    out.write_json(JOB, {**prep.job, "status": "running", "started": started})
    all_ids = set(manifest.column("image_id").to_pylist())
    committed = out.committed_ids() & all_ids
    done = pc.is_in(manifest.column("image_id"), value_set=pa.array(sorted(committed), pa.int64()))
    todo = manifest.filter(pc.invert(done))
    if prep.resumed and not todo.num_rows and out.exists(SUCCESS):
        metrics = out.read_json(METRICS)
        log.info("output %s already holds this job, complete: nothing to do", config.output)
        return _summary(config, metrics, processed=0, skipped=len(committed), seconds=time.perf_counter() - t_start)
    if committed:
        log.info("resuming: %d of %d images already committed, %d to go", len(committed), len(all_ids), todo.num_rows)
    t_ray = time.perf_counter()
    if todo.num_rows:
        _execute(config, prep, todo)
    t_final = time.perf_counter()
    metrics = finalize(
        out,
        all_ids,
        FinalizeSpec(
            task=prep.loaded.task,
            categories=prep.loaded.categories,
            background=prep.loaded.background,
            eval_classes=prep.job["eval_classes"],
            coco_info=coco_info(config.model, started),
            export=config.export_options(),
            coco_labels=config.labels if prep.label_kind == "coco" else None,
        ),
    )
    if config.report and metrics["num_labeled"]:
        from segbatch.audit.report import AuditOptions, write_report

        report = write_report(out, AuditOptions(), metrics=metrics)
        log.info("audit report: %s", report)
    t_end = time.perf_counter()
    timings = {
        "plan_s": round(t_ray - t_start, 3),
        "inference_s": round(t_final - t_ray, 3),
        "finalize_s": round(t_end - t_final, 3),
        "total_s": round(t_end - t_start, 3),
    }
    out.write_json(
        JOB,
        {
            **prep.job,
            "status": "complete",
            "started": started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images_this_run": todo.num_rows,
            "images_resumed": len(committed),
            "timings": timings,
        },
    )
    fsio.write_bytes_atomic(out.fs, out.path(SUCCESS), b"")
    return _summary(
        config,
        metrics,
        processed=todo.num_rows,
        skipped=len(committed),
        seconds=t_end - t_start,
        inference_seconds=t_final - t_ray,
    )


def coco_info(model: str, created: str) -> dict[str, Any]:
    return {
        "description": f"segbatch {__version__} predictions of {model}",
        "version": __version__,
        "date_created": created,
    }


def _summary(
    config: JobConfig,
    metrics: dict[str, Any],
    *,
    processed: int,
    skipped: int,
    seconds: float,
    inference_seconds: float | None = None,
) -> RunSummary:
    rate = processed / inference_seconds if inference_seconds and processed else None
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
        report=config.report,
    )


def _execute(config: JobConfig, prep: _Prepared, todo: pa.Table) -> None:
    """Run read → predict → encode → write on Ray Data for the images in ``todo``."""
    _connect(config.ray_address)
    so = config.storage_options
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    calls = config.calls_per_actor or (2 if gpus else 1)
    log.info(
        "labeling %d images with %s on %d actor(s) (%s, %d batch(es) in at once)",
        todo.num_rows,
        config.model,
        config.actors,
        f"{gpus:g} GPU each" if gpus else "CPU",
        calls,
    )
    weights_ref = ray.put(prep.weights)
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
        "weights_holder": [weights_ref],
        "model_name": config.model,
        "options": _model_options(config),
        "precision": config.precision,
        "channels_last": config.channels_last,
        "fold_batchnorm": config.fold_batchnorm,
        "num_threads": config.torch_threads or max(1, int(config.cpus_per_actor)),
    }
    parts_url = prep.out.url_of(PARTS)
    # One block per model batch, so that reading, inference and encoding pipeline; the
    # blocks hold batch indices only (segbatch.stages.feed), so a million images start in seconds.
    num_batches = -(-todo.num_rows // config.batch_size)
    todo_ref = ray.put(todo)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.max_errored_blocks
    # A batch that still fails after its retries (a worker dying on a poison image) is set
    # aside instead of failing the run; its images are retried one by one below.
    ctx.max_errored_blocks = -1
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
                    "batch_size": config.batch_size,
                    "preprocess": loaded.preprocess,
                    "storage_options": so,
                },
                batch_size=1,
                batch_format="numpy",
                num_cpus=1,
                max_retries=READ_TASK_RETRIES,
                scheduling_strategy="SPREAD",
            )
            ds = ds.map_batches(
                _RayPredictor,
                fn_constructor_kwargs=predictor_kwargs,
                batch_size=config.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=config.actors),
                num_gpus=gpus,
                num_cpus=config.cpus_per_actor,
                # One actor per node before two on one: the pool uses every node's cores (and
                # memory bandwidth), and losing a node loses as few actors as possible.
                scheduling_strategy="SPREAD",
                # A dead actor is restarted (Ray Data's default) and its batch retried a bounded
                # number of times (Ray Data's default is forever), so a poison batch cannot loop.
                max_task_retries=ACTOR_TASK_RETRIES,
                # Ray Data runs a callable class's __call__ one at a time even so: the other
                # calls' threads fetch and batch inputs and store outputs meanwhile.
                max_concurrency=calls,
            )
        ds = ds.map_batches(
            encode_batch,  # type: ignore[arg-type]  # Ray types fn as one-argument; fn_kwargs give the rest
            fn_kwargs={"spec": encode_spec},
            batch_size=config.batch_size,
            batch_format="numpy",
            num_cpus=1,
        )
        ds.write_datasink(PartsDatasink(parts_url, so, config.rows_per_part))
    finally:
        ctx.max_errored_blocks = saved
    committed = prep.out.committed_ids()
    left = todo.filter(pc.invert(pc.is_in(todo.column("image_id"), value_set=pa.array(sorted(committed), pa.int64()))))
    if left.num_rows:
        _label_alone(
            left,
            loaded.preprocess,
            so,
            predictor_kwargs,
            encode_spec,
            parts_url,
            num_cpus=config.cpus_per_actor,
            num_gpus=gpus,
        )


def _label_alone(
    rows: pa.Table,
    preprocess: Any,
    so: Mapping[str, Any],
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
        task.remote(rows.slice(i, 1), preprocess, so, predictor_kwargs, encode_spec, parts_url)
        for i in range(rows.num_rows)
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
        write_part(pa.Table.from_pylist(errors, schema=PART_SCHEMA), parts_url, so)


@ray.remote
def _label_one(
    rows: pa.Table,
    preprocess: Any,
    so: Mapping[str, Any],
    predictor_kwargs: dict[str, Any],
    encode_spec: EncodeSpec,
    parts_url: str,
) -> str:
    """read → predict → encode → commit for ``rows`` (one image), in a worker of its own."""
    batch = {c: np.array(rows.column(c).to_pylist(), dtype=object) for c in rows.column_names}
    predicted = _RayPredictor(**predictor_kwargs)(read_batch(batch, preprocess, so))
    return write_part(encode_batch(predicted, encode_spec), parts_url, so)


def _connect(address: str | None) -> None:
    if ray.is_initialized():
        return
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)


class _RayPredictor(Predictor):
    """:class:`Predictor` fed from the object store, on the GPU Ray assigned (if any)."""

    def __init__(self, weights_holder: list[Any], **kwargs: Any) -> None:
        # The ObjectRef travels inside a list so that Ray does not resolve it at
        # construction; the actor fetches the checkpoint bytes once, here.
        gpu_ids = ray.get_gpu_ids()
        device = pick_device(gpu_ids)
        ctx = ray.get_runtime_context()
        worker = (
            f"node={ctx.get_node_id()[:12]} pid={os.getpid()} device={device} gpus={','.join(str(g) for g in gpu_ids)}"
        )
        super().__init__(weights=lambda: ray.get(weights_holder[0]), device=device, worker=worker, **kwargs)
        # Ray forwards actor output to the driver: one line per model actor says where it runs.
        print(f"segbatch: model actor ready: {worker}", flush=True)


def _versions() -> dict[str, str]:
    import pycocotools
    import torch
    import torchvision

    return {
        "segbatch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ray": ray.__version__,
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "pycocotools": getattr(pycocotools, "__version__", "unknown"),
        "platform": sys.platform,
    }
