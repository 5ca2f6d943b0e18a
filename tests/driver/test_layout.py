"""Sizing the layout from the cluster, and refusing (or fitting) what the cluster cannot run."""

from __future__ import annotations

import pytest

from segbatch.driver.layout import ClusterShape, LayoutRequest, NodeShape, fit_layout, size_layout
from segbatch.errors import JobError

GIB = float(1 << 30)
LAPTOP = ClusterShape((NodeShape(2, 0, 16 * GIB),))
GPU_BOX = ClusterShape((NodeShape(16, 2, 64 * GIB),))
AUTOSCALING = ClusterShape((NodeShape(0, 0, 32 * GIB),), (NodeShape(8, 1, 32 * GIB, count=8),))  # cluster.yaml


def layout(request: LayoutRequest, cluster: ClusterShape):
    return fit_layout(size_layout(request, cluster), cluster)


def test_no_flags_on_cpus_one_actor_per_four_cpus_with_room_for_read_and_encode():
    got = layout(LayoutRequest(), LAPTOP)
    assert (got.actors, got.gpus_per_actor, got.cpus_per_actor, got.torch_threads) == (1, 0.0, 1.5, 2)
    assert (got.batch_size, got.calls_per_actor, got.task_cpus) == (8, 1, 0.25)
    assert got.actors * got.cpus_per_actor + 2 * got.task_cpus <= 2  # schedulable: nothing waits forever
    assert not got.warnings and set(got.chosen.values()) == {"sized"}
    big = layout(LayoutRequest(), ClusterShape((NodeShape(16, 0, 64 * GIB), NodeShape(16, 0, 64 * GIB))))
    assert (big.actors, big.torch_threads, big.cpus_per_actor) == (8, 4, 3.5)


def test_no_flags_on_gpus_one_actor_per_gpu_and_an_autoscaling_pool_up_to_every_gpu():
    got = layout(LayoutRequest(), GPU_BOX)
    assert (got.actors, got.max_actors, got.gpus_per_actor, got.calls_per_actor, got.batch_size) == (2, 2, 1.0, 2, 32)
    scaled = layout(LayoutRequest(), AUTOSCALING)  # a CPU-only head, GPU workers not yet launched
    assert (scaled.actors, scaled.max_actors, scaled.gpus_per_actor) == (1, 8, 1.0)


def test_memory_caps_cpu_actors_per_node():
    small = ClusterShape((NodeShape(16, 0, 3 * GIB),))
    got = layout(LayoutRequest(), small)
    assert (got.actors, got.torch_threads) == (3, 5)


def test_every_flag_wins():
    req = LayoutRequest(actors=1, cpus_per_actor=1.0, torch_threads=2, batch_size=4, calls_per_actor=3, task_cpus=0.5)
    got = layout(req, LAPTOP)
    assert (got.actors, got.cpus_per_actor, got.torch_threads, got.batch_size, got.calls_per_actor) == (1, 1.0, 2, 4, 3)
    assert got.task_cpus == 0.5 and got.chosen["actors"] == "flag" and got.chosen["gpus_per_actor"] == "sized"


@pytest.mark.parametrize(("actors", "cpus"), [(1, 2.0), (2, 1.0), (2, 2.0), (3, 1.0), (4, 0.5), (4, 2.0)])
def test_cpu_layouts_that_do_not_fit_get_smaller_reservations_with_a_warning(actors, cpus):
    """Today's deadlocks on a 2-CPU cluster (e.g. --actors 2: both CPUs held, the read task waits forever)."""
    got = layout(LayoutRequest(actors=actors, cpus_per_actor=cpus), LAPTOP)
    assert got.actors == actors and got.torch_threads == max(1, int(cpus))
    assert got.actors * got.cpus_per_actor + 2 * got.task_cpus <= 2 + 1e-9
    assert got.cpus_per_actor <= 2 - 2 * got.task_cpus  # one actor fits on the node beside the tasks
    assert len(got.warnings) == 1 and "reserving" in got.warnings[0] and "the cluster has 2" in got.warnings[0]


def test_a_layout_that_fits_is_left_alone():
    got = layout(LayoutRequest(actors=1, cpus_per_actor=1.0), LAPTOP)
    assert got.cpus_per_actor == 1.0 and not got.warnings


def test_far_too_many_actors_exit_naming_a_layout_that_fits():
    with pytest.raises(JobError, match=r"100 model actors cannot share 2 CPUs .*pass --actors 3 or fewer"):
        layout(LayoutRequest(actors=100, cpus_per_actor=0.5), LAPTOP)


def test_gpu_requests_the_cluster_cannot_meet_exit_2_naming_the_numbers():
    with pytest.raises(JobError, match=r"--gpus-per-actor 1: the cluster has no GPU .*leave --gpus-per-actor out"):
        layout(LayoutRequest(gpus_per_actor=1.0), LAPTOP)
    with pytest.raises(JobError, match=r"4 actors × 1 GPU need 4 GPUs; the cluster has 2 .*pass --actors 2"):
        layout(LayoutRequest(actors=4, gpus_per_actor=1.0), GPU_BOX)
    with pytest.raises(JobError, match=r"--gpus-per-actor 4: no node has that many GPUs \(at most 2"):
        layout(LayoutRequest(gpus_per_actor=4.0), GPU_BOX)
    assert layout(LayoutRequest(actors=4, gpus_per_actor=0.5), GPU_BOX).actors == 4  # packed two per GPU
    assert layout(LayoutRequest(actors=8), AUTOSCALING).actors == 8  # the autoscaler may add 8 GPUs


def test_the_cluster_is_described_for_the_first_log_line():
    assert AUTOSCALING.describe() == ("1×(0 CPU, 0 GPU, 32 GiB); autoscaler may add up to 8×(8 CPU, 1 GPU, 32 GiB)")
    assert "1 model actor(s) × (1.5 CPU, 2 torch thread(s)" in layout(LayoutRequest(), LAPTOP).describe()
