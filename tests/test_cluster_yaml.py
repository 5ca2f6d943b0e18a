"""cluster.yaml validates against the schema that ships inside the ray package."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

from segbatch.pipeline import IDLE_WORKER_KEEP_MS

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_rays_schema():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


def test_cluster_has_a_cpu_head_gpu_workers_and_installs_segbatch():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any(t["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5")) for t in workers)
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "~/segbatch" in setup
    assert "~/segbatch" in config["file_mounts"]


def test_nodes_keep_idle_workers_as_segbatchs_local_clusters_do():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert f"RAY_idle_worker_killing_time_threshold_ms={IDLE_WORKER_KEEP_MS} ray start" in start, start
