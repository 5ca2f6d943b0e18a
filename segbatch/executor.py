"""The streaming loop on Ray core: read tasks → model actors → encode + commit tasks.

:mod:`segbatch.pipeline` plans the job; this module runs it. The model actors are created the
moment the cluster is up — they import torch and build nothing until :meth:`Executor.load`
hands them the model — so their start-up (≈1.5 s of CPU each: torch, and torchvision without
``torch._dynamo``, :mod:`segbatch.models.vision_import`) overlaps the driver's planning instead
of following it. Then, per model batch of ``batch_size``
images::

    read_slice (CPU task: fetch, decode, resize) ──▶ ModelActor.predict (the least busy ready
    actor; the read result moves from the object store straight to it) ──▶ encode_commit (CPU
    task: RLE, label scoring, one atomically committed part file per ``group`` batches)

Backpressure: each ready actor has at most ``calls_per_actor + 1`` batches queued (one running,
one waiting, so it never idles between batches), reads run at most one batch per queue slot
ahead, so memory holds a few batches whatever the number of images. Failures: read and encode
tasks retry on a lost worker (``max_retries``); a dead actor is restarted and its call retried
(``max_restarts``, ``max_task_retries``); a batch that still fails is set aside, and
:func:`segbatch.pipeline.label_alone` labels its images one per task afterwards.

Why not Ray Data's actor pool (segbatch used it before): its executor starts the pool only once
the input exists, adds three service actors and a fixed start-up of several seconds, and its
fusion and budget heuristics left encode waiting behind the model on small machines. On the
2-core machine this project is measured on, that start-up was most of a 256-image run.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from segbatch.driver.layout import Layout
from segbatch.driver.progress import CommitCounter, Monitor
from segbatch.errors import JobError

log = logging.getLogger("segbatch")

READ_TASK_RETRIES = 3
ACTOR_TASK_RETRIES = 2  # a batch goes to a model actor at most this many times more


class ModelNotLoaded(RuntimeError):
    """A model actor that Ray restarted (its process died) has no model until loaded again."""


class ModelLoadError(JobError):
    """The model actors cannot build the model (weights that do not fit it, found where it is
    built), or built another than the driver planned: nothing was labeled."""


WAIT_S = 0.25  # the loop wakes at least this often: progress, watchdog


@ray.remote
class ModelActor:
    """One model on the device Ray assigned; created at once, loaded when the plan is ready."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        import torch  # the slow part of starting, done while the driver plans

        threads = settings.get("num_threads")
        if threads:
            torch.set_num_threads(int(threads))
        from segbatch.stages.actor import placement  # the predictor, imported now too

        if settings.get("announce"):  # --verbose: every actor says where it runs as soon as it exists
            print(f"segbatch: model actor started: {placement()[1]}", flush=True)
        from segbatch.models.vision_import import import_torchvision

        import_torchvision()  # now, while the driver plans; without torch._dynamo (0.1 s, not 1.3)
        self.settings = dict(settings)
        self.predictor: Any = None

    def load(self, model_holder: list[Any]) -> tuple[str, dict[str, Any]]:
        """Build the model from ``[ObjectRef of a ResolvedModel]``; returns where it runs and the
        built model's :meth:`~segbatch.models.info.ModelInfo.signature` (the driver planned from one)."""
        from segbatch.models.info import ModelInfo
        from segbatch.stages.actor import RayPredictor
        from segbatch.stages.cpu_clock import mark

        self.predictor = RayPredictor(model_holder=model_holder, **self.settings)
        mark("actor_start")  # bench/overhead.py: its start-up CPU, apart from the per-image cost
        return str(self.predictor.worker), ModelInfo.of(self.predictor.bundle).signature()

    def predict(self, batch: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        """(images, predicted batch): called with ``num_returns=2``, so that the driver learns the
        call succeeded from the first, small object while the batch goes straight to encode."""
        if self.predictor is None:
            raise ModelNotLoaded("this model actor was restarted and has no model yet")
        out = self.predictor(batch)
        return len(out["status"]), out


@ray.remote
def read_slice(todo_holder: list[Any], start: int, stop: int, read_args: tuple[Any, ...]) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of the images to label, read (fetch, decode, resize; or, for
    ``--decode device``, fetch and check JPEGs, which the model actor decodes). ``read_args``:
    :func:`segbatch.stages.read.read_batch`'s arguments after the rows."""
    from segbatch.stages.feed import read_rows

    return read_rows(todo_holder, start, stop, *read_args)


@ray.remote
def encode_commit(
    spec: Any, parts_url: str, storage_options: Mapping[str, Any], *batches: dict[str, Any]
) -> tuple[int, int]:
    """Encode predicted batches and commit them as one part file; returns (images, errors)."""
    import pyarrow.compute as pc

    from segbatch.stages.columns import concat_columns
    from segbatch.stages.cpu_clock import stage_clock
    from segbatch.stages.encode import encode_batch
    from segbatch.stages.sink import commit_batch
    from segbatch.stages.strips import join_rows

    if batches and "strip_part" in batches[0]:  # strips of large images: one row per image again
        batches = (join_rows({k: concat_columns([b[k] for b in batches]) for k in batches[0]}),)
    images = sum(len(b["status"]) for b in batches)
    with stage_clock("encode", images):
        table = pa.concat_tables([encode_batch(b, spec) for b in batches])
    with stage_clock("write", images):
        committed = commit_batch(table, parts_url, storage_options)
    ok = committed.column("ok")
    return committed.num_rows, committed.num_rows - (pc.sum(ok).as_py() or 0)


@dataclass
class _Actor:
    handle: Any
    ready_ref: Any  # ObjectRef of load(); done when the model is built
    ready: bool = False
    worker: str = ""
    queued: int = 0  # predict calls sent and not yet finished


@dataclass
class _Batch:
    index: int  # model batch number: rows index*batch_size ...
    attempts: int = 0  # times sent to a model actor
    read: Any = None  # ObjectRef of read_slice
    done: Any = None  # ObjectRef of the predict call's first return (images): small, fetched
    predicted: Any = None  # ObjectRef of its second return (the predicted batch): left in the store
    actor: _Actor | None = None


@dataclass
class Executor:
    """Runs one job's batches; see the module docstring."""

    layout: Layout
    settings: dict[str, Any]  # ModelActor settings (Predictor keyword arguments but the model)
    handles: list[Any] = field(default_factory=list)  # the ModelActors, from the start
    model_ref: Any = None  # the model, in the object store, once loaded
    expected: dict[str, Any] | None = None  # the signature the driver planned from (ModelInfo.signature)
    actors: list[_Actor] = field(default_factory=list)  # those handed the model, with their state

    @classmethod
    def start(cls, layout: Layout, settings: dict[str, Any]) -> Executor:
        """Create the model actors now (they start importing torch); they get the model later."""
        ex = cls(layout, settings)
        options = {
            "num_cpus": layout.cpus_per_actor,
            "num_gpus": layout.gpus_per_actor,
            # A dead actor comes back (a poison image, a lost node); the executor loads its model
            # again and resends its batch, a bounded number of times (Ray's own retry would reach
            # the restarted actor before its model does).
            "max_restarts": -1,
            "max_task_retries": 0,
            "max_concurrency": layout.calls_per_actor,
            # One actor per node before two on one: every node's cores (and memory bandwidth)
            # are used, and losing a node loses as few actors as possible.
            "scheduling_strategy": "SPREAD",
        }
        ex.handles = [ModelActor.options(**options).remote(settings) for _ in range(layout.max_actors)]  # type: ignore[attr-defined]
        return ex

    def load(self, model_ref: Any, expected: dict[str, Any] | None = None) -> None:
        """Hand every actor the model (shipped once through the object store); ``expected``: the
        :meth:`~segbatch.models.info.ModelInfo.signature` each built model must have."""
        self.model_ref, self.expected = model_ref, expected
        self.actors = [_Actor(h, self._load(h)) for h in self.handles]

    def _load(self, handle: Any) -> Any:
        # Retried until the actor is up: a restarting actor answers "unavailable" meanwhile.
        return handle.load.options(max_task_retries=-1).remote([self.model_ref])

    def _reload(self, actor: _Actor) -> None:
        """The actor died and Ray restarts it: load the model into the new process (Ray runs the
        call once the restart is done)."""
        if actor.ready:
            actor.ready, actor.queued = False, 0
            actor.ready_ref = self._load(actor.handle)

    def shrink(self, keep: int) -> None:
        """Stop actors beyond ``keep`` (a small job needs fewer than the cluster holds)."""
        for h in self.handles[keep:]:
            ray.kill(h)
        self.handles = self.handles[:keep]

    def stop(self) -> None:
        """End the model actors: those with a model exit gracefully (ray.kill's SIGTERM makes a
        worker print its stack, which reaches the driver's console); the others are killed."""
        loaded = {id(a.handle) for a in self.actors if a.ready}
        for h in self.handles:
            if id(h) in loaded:
                h.__ray_terminate__.remote()
            else:
                ray.kill(h)
        self.handles, self.actors = [], []

    def run(
        self,
        num_rows: int,
        todo_ref: Any,
        read_args: tuple[Any, ...],
        encode: Callable[[list[Any]], Any],
        group: int,
        counter: CommitCounter,
        monitor: Monitor,
        strips: int = 1,
    ) -> list[int]:
        """Label rows ``0..num_rows`` of the todo table; returns the indices of the model batches
        that failed for good (to be labeled image by image). ``encode(predicted refs)`` submits
        one encode+commit task for ``group`` predicted batches (fewer for the last).

        ``strips`` > 1: each row is one strip of an image, ``strips`` rows an image
        (:mod:`segbatch.stages.strips`): a batch is one strip, and an encode task takes whole
        images only — ``group`` rounded to whole images, each sent once all its strips are in."""
        size = 1 if strips > 1 else self.layout.batch_size
        group = max(1, group // strips) * strips if strips > 1 else group
        total = -(-num_rows // size)
        upcoming = deque(range(total))
        reads: deque[_Batch] = deque()  # read, waiting for an actor
        predicting: dict[Any, _Batch] = {}  # predict ref → batch
        predicted: list[_Batch] = []  # waiting to be grouped into an encode task
        encoding: dict[Any, list[_Batch]] = {}  # encode ref → batches
        failed: list[int] = []
        read_task = read_slice.options(
            num_cpus=self.layout.task_cpus, max_retries=READ_TASK_RETRIES, scheduling_strategy="SPREAD"
        )
        per_actor = self.layout.calls_per_actor + 1
        while upcoming or reads or predicting or predicted or encoding:
            ready = [a for a in self.actors if a.ready]
            # Reads run ahead just enough to fill every queue slot of the actors (pending actors
            # count once each, so the first batches are read while the models load).
            room = sum(per_actor - a.queued for a in ready) + sum(1 for a in self.actors if not a.ready)
            while upcoming and len(reads) < max(1, room):
                i = upcoming.popleft()
                reads.append(
                    _Batch(i, read=read_task.remote([todo_ref], i * size, min(num_rows, (i + 1) * size), read_args))
                )
            while reads and ready:
                actor = min(ready, key=lambda a: a.queued)
                if actor.queued >= per_actor:
                    break
                batch = reads.popleft()
                batch.actor, actor.queued, batch.attempts = actor, actor.queued + 1, batch.attempts + 1
                batch.done, batch.predicted = actor.handle.predict.options(num_returns=2).remote(batch.read)
                predicting[batch.done] = batch
            # Group predicted batches into one commit (the last ones as they come).
            last = not (upcoming or reads or predicting)
            if strips > 1:
                predicted = self._commit_images(predicted, strips, group, last, encode, encoding)
            else:
                while predicted and (len(predicted) >= group or last):
                    chunk, predicted = predicted[:group], predicted[group:]
                    encoding[encode([b.predicted for b in chunk])] = chunk
            waiting = [a.ready_ref for a in self.actors if not a.ready] + list(predicting) + list(encoding)
            done, _ = ray.wait(waiting, num_returns=1, timeout=WAIT_S) if waiting else ([], [])
            if done:  # take everything that finished meanwhile, not just one
                done, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            for ref in done:
                self._finished(ref, predicting, reads, predicted, encoding, failed, counter)
            monitor.poll()
        return sorted(failed)

    @staticmethod
    def _commit_images(
        predicted: list[_Batch],
        strips: int,
        group: int,
        last: bool,
        encode: Callable[[list[Any]], Any],
        encoding: dict[Any, list[_Batch]],
    ) -> list[_Batch]:
        """Send the images whose ``strips`` batches are all predicted to encode, ``group`` batches a
        task (the rest as they come once nothing else is left); returns the batches still waiting.
        At the end, strips of an image whose other strips failed are dropped: the image has no
        committed row and is labeled alone afterwards."""
        by_image: dict[int, list[_Batch]] = {}
        for b in predicted:
            by_image.setdefault(b.index // strips, []).append(b)
        whole = [sorted(bs, key=lambda b: b.index) for bs in by_image.values() if len(bs) == strips]
        ready = [b for bs in whole for b in bs]
        while ready and (len(ready) >= group or last):
            chunk, ready = ready[:group], ready[group:]
            encoding[encode([b.predicted for b in chunk])] = chunk
        sent = {id(b) for bs in whole for b in bs} - {id(b) for b in ready}
        return [] if last and not ready else [b for b in predicted if id(b) not in sent]

    def _finished(
        self,
        ref: Any,
        predicting: dict[Any, _Batch],
        reads: deque[_Batch],
        predicted: list[_Batch],
        encoding: dict[Any, list[_Batch]],
        failed: list[int],
        counter: CommitCounter,
    ) -> None:
        for a in self.actors:
            if a.ready_ref == ref and not a.ready:
                try:
                    a.worker, built = ray.get(ref)
                except ray.exceptions.RayActorError:
                    a.ready_ref = self._load(a.handle)  # it died while loading: load again once restarted
                    return
                except ray.exceptions.RayError as err:
                    cause = getattr(err, "cause", None)
                    reason = str(cause) if isinstance(cause, JobError) else _first_line(err)
                    raise ModelLoadError(f"a model actor could not build the model: {reason}") from err
                if self.expected is not None and built != self.expected:
                    differs = sorted(k for k in built if built[k] != self.expected.get(k))
                    raise ModelLoadError(
                        f"the model actors built a model whose {', '.join(differs)} differ from what the run was "
                        f"planned with ({ {k: built[k] for k in differs} } against "
                        f"{ {k: self.expected.get(k) for k in differs} }); please report this as a segbatch bug"
                    )
                a.ready = True
                return
        if ref in predicting:
            batch = predicting.pop(ref)
            actor = batch.actor
            assert actor is not None
            actor.queued = max(0, actor.queued - 1)
            try:
                ray.get(ref)  # the image count; raises if the call failed
                predicted.append(batch)
            except (ray.exceptions.RayActorError, ModelNotLoaded) as err:
                # The actor died (a poison image, a lost node) or was restarted without its model.
                self._reload(actor)
                if batch.attempts <= ACTOR_TASK_RETRIES:
                    reads.appendleft(batch)  # its read result is still in the store
                else:
                    log.warning("model batch %d failed %d times (%s); its images will be labeled one by one",
                                batch.index, batch.attempts, _first_line(err))  # fmt: skip
                    failed.append(batch.index)
            except ray.exceptions.RayError as err:
                log.warning("model batch %d failed (%s); its images will be labeled one by one", batch.index,
                            _first_line(err))  # fmt: skip
                failed.append(batch.index)
            return
        batches = encoding.pop(ref)
        try:
            images, errors = ray.get(ref)
            counter.add(images, errors)
        except ray.exceptions.RayError as err:
            log.warning("committing model batches %s failed (%s); their images will be labeled one by one",
                        [b.index for b in batches], _first_line(err))  # fmt: skip
            failed.extend(b.index for b in batches)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
