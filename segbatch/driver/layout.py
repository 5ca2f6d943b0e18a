"""The job's layout, sized from the cluster: model actors, their CPUs, GPUs and threads, task CPUs.

With no flags, :func:`size_layout` reads the cluster (live nodes, and the node types its
autoscaler may add) and picks the layout measured fastest (``bench/throughput.py``):

* GPUs (live or from the autoscaler): one actor per GPU (an autoscaling pool from one actor up
  to every GPU the autoscaler may add), 1 CPU each, 2 batches in at once, batch 32;
* CPUs only: one actor per :data:`THREADS_PER_ACTOR` CPUs of a node (at least one; at most one
  per :data:`ACTOR_MEMORY` of its memory), each running the model on that many torch threads,
  batch 8, one batch at a time. Each actor reserves its threads less half a CPU and each
  read/encode task :data:`TASK_CPUS`: the model threads and the light read/encode work share
  the cores. On this project's 2-core machine (AMD EPYC) one actor with 2 threads labeled 256
  images in 27 s against 33–37 s for two single-threaded actors (oneDNN's convolutions ran
  2.5× faster on 2 threads than on 1: ``bench/README.md``).

Every explicit flag wins. :func:`fit_layout` then checks the layout against the cluster before
any work: model actors plus one read and one encode task must fit. CPU reservations that do not
fit are scaled down (Ray's CPU reservations are scheduling bookkeeping, not isolation: the
actors still run, sharing the cores, which is what someone asking for ``--actors 2`` on two
cores expects) with a warning; GPUs cannot be made up, so a GPU request the cluster cannot meet
exits 2 naming the numbers and a layout that fits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from segbatch.errors import JobError

GPU_BATCH = 32
CPU_BATCH = 8
GPU_CALLS = 2  # a GPU actor takes in the next batch while one runs
THREADS_PER_ACTOR = 4  # torch threads of a CPU actor at most; bigger nodes get more actors
TASK_CPUS = 0.25  # per read or encode task
MIN_ACTOR_CPUS = 0.05  # below this a reservation no longer means anything: too many actors
ACTOR_MEMORY = 1 << 30  # node memory per CPU actor (model, activations, Ray's buffers)


@dataclass(frozen=True)
class NodeShape:
    """Resources of one node (``count`` nodes of a type the autoscaler may add)."""

    cpus: float
    gpus: float
    memory: float  # bytes
    count: int = 1


@dataclass(frozen=True)
class ClusterShape:
    """The cluster as the driver sees it: live nodes, and node types the autoscaler may add."""

    nodes: tuple[NodeShape, ...]
    scalable: tuple[NodeShape, ...] = ()

    @property
    def live_cpus(self) -> float:
        return sum(n.cpus * n.count for n in self.nodes)

    @property
    def live_gpus(self) -> float:
        return sum(n.gpus * n.count for n in self.nodes)

    @property
    def max_cpus(self) -> float:
        return self.live_cpus + sum(n.cpus * n.count for n in self.scalable)

    @property
    def max_gpus(self) -> float:
        return self.live_gpus + sum(n.gpus * n.count for n in self.scalable)

    def largest(self, key: str) -> float:
        return max([getattr(n, key) for n in (*self.nodes, *self.scalable)], default=0.0)

    def describe(self) -> str:
        def one(n: NodeShape) -> str:
            mem = f", {n.memory / 2**30:.0f} GiB" if n.memory else ""
            return f"{n.count}×({n.cpus:g} CPU, {n.gpus:g} GPU{mem})"

        live = " + ".join(one(n) for n in self.nodes) or "no nodes"
        extra = " + ".join(one(n) for n in self.scalable)
        return f"{live}" + (f"; autoscaler may add up to {extra}" if extra else "")


@dataclass(frozen=True)
class LayoutRequest:
    """What the user asked for (None: size it from the cluster)."""

    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    torch_threads: int | None = None
    calls_per_actor: int | None = None
    batch_size: int | None = None
    task_cpus: float | None = None


@dataclass(frozen=True)
class Layout:
    """The layout a run uses; recorded in job.json and said in the first log line."""

    actors: int  # model actors at the start
    max_actors: int  # the pool may grow to this many as the autoscaler adds GPU nodes
    gpus_per_actor: float
    cpus_per_actor: float  # CPU reservation per actor
    torch_threads: int
    calls_per_actor: int
    batch_size: int
    task_cpus: float  # CPU reservation per read / encode task
    chosen: dict[str, str] = field(default_factory=dict)  # field → "flag" or "sized"
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        pool = f"{self.actors}" + (f"..{self.max_actors}" if self.max_actors > self.actors else "")
        device = (
            f"{self.gpus_per_actor:g} GPU + {self.cpus_per_actor:g} CPU"
            if self.gpus_per_actor
            else (f"{self.cpus_per_actor:g} CPU")
        )
        return (
            f"{pool} model actor(s) × ({device}, {self.torch_threads} torch thread(s), "
            f"{self.calls_per_actor} batch(es) in at once), batch {self.batch_size}, "
            f"{self.task_cpus:g} CPU per read/encode task"
        )


def size_layout(request: LayoutRequest, cluster: ClusterShape) -> Layout:
    """The layout for ``cluster``: every field the request leaves None sized as the module says."""
    chosen = {f: ("flag" if getattr(request, f) is not None else "sized") for f in _FIELDS}
    gpu = request.gpus_per_actor if request.gpus_per_actor is not None else (1.0 if cluster.max_gpus > 0 else 0.0)
    if gpu > 0:
        per_gpu = max(1, math.floor(1 / gpu)) if gpu < 1 else 1
        live_slots = math.floor(cluster.live_gpus / gpu + 1e-9) if gpu <= 1 else int(cluster.live_gpus // gpu)
        max_slots = math.floor(cluster.max_gpus / gpu + 1e-9)
        actors = request.actors if request.actors is not None else max(1, min(live_slots, per_gpu * 64) or 1)
        max_actors = request.actors if request.actors is not None else max(actors, max_slots)
        cpus = request.cpus_per_actor if request.cpus_per_actor is not None else 1.0
        threads = request.torch_threads or max(1, int(cpus))
        calls = request.calls_per_actor or GPU_CALLS
        batch = request.batch_size or GPU_BATCH
        task_cpus = request.task_cpus if request.task_cpus is not None else TASK_CPUS
    else:
        cpu_nodes = [n for n in cluster.nodes if n.cpus >= 1] or [NodeShape(1, 0, 0)]
        # Threads per actor from the node most actors will run on; actors from every node.
        node = max(cpu_nodes, key=lambda n: n.cpus * n.count)
        per_node = _cpu_actors(node)
        sized = max(1, sum(n.count * _cpu_actors(n) for n in cpu_nodes))
        actors = request.actors if request.actors is not None else sized
        max_actors = actors
        if request.cpus_per_actor is not None:
            cpus, threads = request.cpus_per_actor, request.torch_threads or max(1, int(request.cpus_per_actor))
        else:
            threads = request.torch_threads or max(1, math.floor(node.cpus / per_node))
            cpus = max(0.5, min(threads, node.cpus / per_node) - 0.5)
        calls = request.calls_per_actor or 1
        batch = request.batch_size or CPU_BATCH
        task_cpus = request.task_cpus if request.task_cpus is not None else TASK_CPUS
    return Layout(
        actors=actors,
        max_actors=max_actors,
        gpus_per_actor=gpu,
        cpus_per_actor=cpus,
        torch_threads=threads,
        calls_per_actor=calls,
        batch_size=batch,
        task_cpus=task_cpus,
        chosen=chosen,
    )


_FIELDS = ("actors", "gpus_per_actor", "cpus_per_actor", "torch_threads", "calls_per_actor", "batch_size", "task_cpus")


def _cpu_actors(node: NodeShape) -> int:
    """CPU model actors on ``node``: one per :data:`THREADS_PER_ACTOR` CPUs, within its memory."""
    return max(1, min(math.ceil(node.cpus / THREADS_PER_ACTOR), _memory_slots(node)))


def _memory_slots(node: NodeShape) -> int:
    return max(1, math.floor(node.memory / ACTOR_MEMORY)) if node.memory else 1 << 30


def fit_layout(layout: Layout, cluster: ClusterShape) -> Layout:
    """``layout`` checked against ``cluster``: the model actors plus one read and one encode task
    must fit. CPU reservations that do not fit are scaled down with a warning; GPUs the cluster
    cannot provide raise :class:`JobError` naming the numbers and a layout that fits."""
    warnings = list(layout.warnings)
    if layout.gpus_per_actor > 0:
        largest = cluster.largest("gpus")
        if largest <= 0:
            raise JobError(
                f"--gpus-per-actor {layout.gpus_per_actor:g}: the cluster has no GPU ({cluster.describe()}); "
                "leave --gpus-per-actor out (or pass 0) to run the model on the CPUs"
            )
        if layout.gpus_per_actor > largest:
            raise JobError(
                f"--gpus-per-actor {layout.gpus_per_actor:g}: no node has that many GPUs (at most {largest:g} on "
                f"one node: {cluster.describe()}); pass --gpus-per-actor {largest:g} or less"
            )
        slots = math.floor(cluster.max_gpus / layout.gpus_per_actor + 1e-9)
        if layout.actors > slots:
            raise JobError(
                f"{layout.actors} actors × {layout.gpus_per_actor:g} GPU need {layout.actors * layout.gpus_per_actor:g}"
                f" GPUs; the cluster has {cluster.max_gpus:g} ({cluster.describe()}): pass --actors {slots} (or a "
                "smaller --gpus-per-actor to put several actors on one GPU)"
            )
    total = cluster.max_cpus
    tasks = 2 * layout.task_cpus  # one read and one encode task at least
    cpus = layout.cpus_per_actor
    biggest = cluster.largest("cpus")
    if biggest <= 0:
        raise JobError(f"the cluster has no CPU for the read and encode tasks ({cluster.describe()})")
    # An actor must fit on one node beside nothing else; the whole layout in the cluster.
    fits_node = min(cpus, max(MIN_ACTOR_CPUS, biggest - (tasks if cluster.nodes else 0)))
    fits_all = (total - tasks) / layout.actors
    new = min(fits_node, fits_all)
    if new < cpus - 1e-9:
        if new < MIN_ACTOR_CPUS:
            most = max(1, math.floor((total - tasks) / max(layout.cpus_per_actor, MIN_ACTOR_CPUS)))
            raise JobError(
                f"{layout.actors} model actors cannot share {total:g} CPUs with the read and encode tasks "
                f"({cluster.describe()}); pass --actors {most} or fewer"
            )
        new = math.floor(new * 100) / 100
        warnings.append(
            f"{layout.actors} actor(s) × {cpus:g} CPU + one read and one encode task ({tasks:g} CPU) need "
            f"{layout.actors * cpus + tasks:g} CPUs, the cluster has {total:g}: reserving {new:g} CPU per actor so "
            f"that the pipeline can run (torch threads stay at {layout.torch_threads}; the actors share the cores)"
        )
        cpus = new
    return Layout(**{**layout.to_dict(), "cpus_per_actor": cpus, "warnings": tuple(warnings)})


def cluster_shape() -> ClusterShape:
    """Live nodes from Ray, and the node types its autoscaler may add (when it has one)."""
    import ray

    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        nodes.append(NodeShape(float(res.get("CPU", 0)), float(res.get("GPU", 0)), float(res.get("memory", 0))))
    return ClusterShape(tuple(nodes), _autoscaler_types(len(nodes)))


def _autoscaler_types(live: int) -> tuple[NodeShape, ...]:
    """Node types of the autoscaler's config with room to grow (Ray keeps it in the GCS)."""
    try:
        from ray._private.state import state  # Ray Data reads its limits the same way

        config = state.get_cluster_config()
    except Exception:  # no autoscaler, or an older Ray: the live nodes are all there is
        return ()
    if config is None:
        return ()
    types = []
    for group in config.node_group_configs:
        count = group.max_count if group.max_count >= 0 else 16
        res = dict(group.resources)
        if count > 0 and (res.get("CPU") or res.get("GPU")):
            types.append(NodeShape(float(res.get("CPU", 0)), float(res.get("GPU", 0)), float(res.get("memory", 0)),
                                   count))  # fmt: skip
    return tuple(types)
