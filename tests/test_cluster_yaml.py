"""cluster.yaml validates against the schema that ships inside the ray package."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

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
