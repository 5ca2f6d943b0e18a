"""Label quality through the whole pipeline, against cleanlab itself as the oracle.

The bundled U-Net labels generated scenes whose label PNGs were corrupted on purpose in some
images (classes swapped, a region erased, a mask shifted, an object relabeled). segbatch scores
every label during the run and flags pixels in finalize. The oracle recomputes the model's class
probabilities on the same grid in this process (the predictor alone, no Ray), gives cleanlab the
whole dataset at once, and the two must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cleanlab.segmentation.filter import find_label_issues
from cleanlab.segmentation.rank import get_label_quality_scores
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr

from segbatch import JobConfig
from segbatch.masks import decode_rle
from segbatch.models.bundle import ModelOptions
from segbatch.models.resolve import resolve_model
from segbatch.pipeline import run
from segbatch.sample import IGNORE, save_label_png, write_sample_dataset
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch

pytestmark = pytest.mark.ray

STRIDE = 2
N = 16
CORRUPT = {1: "swap", 4: "erase", 7: "shift", 10: "relabel"}  # image index → what was done to its label


def _corrupt(label: np.ndarray, kind: str) -> np.ndarray:
    out = label.copy()
    objects = [int(c) for c in np.unique(label) if c not in (0, IGNORE)]
    if kind == "swap":  # one class annotated as another everywhere
        out[label == objects[0]] = {1: 2, 2: 3, 3: 1}[objects[0]]
    elif kind == "erase":  # an object left out
        out[label == objects[0]] = 0
    elif kind == "shift":  # the mask drawn 10 px to the right
        out = np.roll(label, 10, axis=1)
    elif kind == "relabel":  # one object given the next class
        ys = np.nonzero(label == objects[-1])[0]
        half = label == objects[-1]
        half[: int(np.median(ys))] = False
        out[half] = {1: 2, 2: 3, 3: 1}[objects[-1]]
    return out


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lq")
    write_sample_dataset(str(root), N, seed=21, sizes=((120, 160),))
    for i, path in enumerate(sorted((root / "masks").iterdir())):
        # cleanlab knows no ignore label: the VOC boundary band becomes its nearest class, so that
        # both sides score exactly the same pixels.
        label = np.asarray(Image.open(path))
        _, (iy, ix) = ndimage.distance_transform_edt(label == IGNORE, return_indices=True)
        label = label[iy, ix]
        save_label_png(_corrupt(label, CORRUPT[i]) if i in CORRUPT else label, str(path))
    return root


@pytest.fixture(scope="module")
def result(corrupted: Path, tmp_path_factory, ray_cluster) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lq-run") / "out"
    run(JobConfig(input=str(corrupted / "images"), labels=str(corrupted / "masks"), output=str(out), model="unet",
                  quality_stride=STRIDE))  # fmt: skip
    return out, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def oracle(corrupted: Path) -> dict:
    """cleanlab on the model's probabilities at the same grid, all images at once."""
    model = resolve_model("unet", "DEFAULT", task=None, model_card=None, revision=None, storage_options={})
    predictor = Predictor(model=model, options=ModelOptions(), quality_stride=STRIDE)
    names = sorted(p.name for p in (corrupted / "images").iterdir())
    batch = read_batch({"uri": np.array([str(corrupted / "images" / n) for n in names], dtype=object),
                        "file_name": np.array(names, dtype=object)}, predictor.preprocess)  # fmt: skip
    probs = np.stack([p.astype(np.float32) for p in predictor(batch)["quality_probs"]])  # (N, K, h, w)
    labels = np.stack([np.asarray(Image.open(corrupted / "masks" / n.replace(".jpg", ".png")))[::STRIDE, ::STRIDE]
                       for n in names]).astype(np.int64)  # fmt: skip
    scores, _ = get_label_quality_scores(labels, probs, verbose=False)
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork of this process (Ray's
    # and torch's threads running) can deadlock in the child; one process computes the same.
    issues = find_label_issues(labels, probs, verbose=False, n_jobs=1)
    return {"names": names, "scores": scores, "issues": issues}


def test_image_scores_rank_as_cleanlabs(result, oracle):
    out, _ = result
    rows = {r["file_name"]: r for r in pq.read_table(out / "images.parquet").to_pylist()}
    ours = [rows[n]["label_quality"] for n in oracle["names"]]
    rho = spearmanr(ours, oracle["scores"]).statistic
    assert rho >= 0.99, rho


def test_flagged_pixels_are_cleanlabs(result, oracle):
    out, metrics = result
    rows = {r["file_name"]: r for r in pq.read_table(out / "images.parquet").to_pylist()}
    inter = union = 0
    for i, name in enumerate(oracle["names"]):
        ours = decode_rle(rows[name]["label_issue_mask"])[::STRIDE, ::STRIDE].astype(bool)
        theirs = oracle["issues"][i]
        inter += int((ours & theirs).sum())
        union += int((ours | theirs).sum())
        assert rows[name]["label_issue_pixels"] == int(ours.sum())
    assert union > 0 and inter / union >= 0.95, (inter, union)
    assert metrics["label_quality"]["flagged_pixels"] == sum(r["label_issue_pixels"] for r in rows.values())


def test_the_corrupted_labels_rank_worst_and_their_swaps_are_reported(result):
    out, metrics = result
    rows = pq.read_table(out / "images.parquet").to_pylist()
    ranked = [r["file_name"] for r in sorted(rows, key=lambda r: r["label_quality"])]
    corrupted = {f"shapes_{i:04d}.jpg" for i in CORRUPT}
    assert set(ranked[: len(corrupted)]) == corrupted, ranked
    worst = min(rows, key=lambda r: r["label_quality"])
    assert worst["label_issue_swaps"] and worst["label_issue_share"] > 0
    lq = metrics["label_quality"]
    assert lq["images_with_issues"] >= len(corrupted) and lq["common_label_issues"]
    assert set(lq["classes"]) >= {"circle", "square", "triangle"}
