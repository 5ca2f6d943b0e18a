"""The README's demo: bundled images and masks, bundled U-Net, on the shared Ray cluster."""

from __future__ import annotations

import json

import pytest

from segbatch.cli import main

pytestmark = pytest.mark.ray


def test_demo_labels_the_bundled_data_and_prints_its_dice(tmp_path, capsys, ray_cluster):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 32 and metrics["num_errors"] == 0 and metrics["num_labeled"] == 32
    assert metrics["mean_dice"] > 0.95
    assert (
        f"mean Dice {metrics['mean_dice']:.4f} over 3 classes (circle, square, triangle) on 32 labeled images; "
        "background excluded" in printed
    )
    assert f"outputs in {out}" in printed
