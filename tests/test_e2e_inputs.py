"""End to end on the shared cluster: inputs a new user brings — partial labels, stray label ids,
paths typed differently, files added later, export flags on a finished run, options that do not apply."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segbatch import JobConfig
from segbatch.pipeline import run
from segbatch.sample import save_label_png, write_sample_dataset

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    write_sample_dataset(str(root), 20, seed=5)
    return root


def test_a_coco_file_that_lists_some_of_the_images_scores_those_and_labels_the_rest(data, tmp_path, ray_cluster):
    """Batches holding only unlisted images used to fail in encode (NaN label record) and stop the run."""
    names = sorted(p.name for p in (data / "images").iterdir())
    listed = names[:3]
    images, annotations = [], []
    for k, name in enumerate(listed, start=1):
        label = np.asarray(Image.open(data / "masks" / name.replace(".jpg", ".png")))
        h, w = label.shape
        images.append({"id": 100 + k, "file_name": name, "width": w, "height": h})
        ys, xs = np.nonzero(label == 1)
        if len(ys):
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            poly = [box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3]]
            annotations.append({"id": k, "image_id": 100 + k, "category_id": 1, "segmentation": [poly]})
    coco = tmp_path / "three.json"
    coco.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "circle"}]})
    )
    summary = run(
        JobConfig(
            input=str(data / "images"),
            labels=str(coco),
            output=str(tmp_path / "out"),
            model="unet",
            batch_size=4,
            missing_labels="ignore",
        )
    )
    rows = pq.read_table(tmp_path / "out" / "images.parquet").to_pylist()
    assert summary.num_images == 20 and summary.num_errors == 0
    assert sorted(r["file_name"] for r in rows if r["labeled"]) == listed
    assert all(r["status"] == "ok" and r["num_masks"] >= 0 for r in rows)
    # with the default policy, the unlisted images are error rows naming the cause, the job still completes
    strict = run(
        JobConfig(
            input=str(data / "images"), labels=str(coco), output=str(tmp_path / "strict"), model="unet", batch_size=4
        )
    )
    errors = [r for r in pq.read_table(tmp_path / "strict" / "images.parquet").to_pylist() if r["status"] == "error"]
    assert strict.num_errors == 17 == len(errors)
    assert all("the COCO labels list no image with file_name" in r["error"] for r in errors)


def test_label_ids_the_model_does_not_know_are_reported_and_left_out_of_the_mean(data, tmp_path, ray_cluster):
    masks = tmp_path / "masks"
    shutil.copytree(data / "masks", masks)
    first = sorted(masks.iterdir())[0]
    label = np.asarray(Image.open(first)).copy()
    label[:5, :5] = 7  # 25 stray pixels of an id the 4-class model has no class for
    save_label_png(label, str(first))
    summary = run(
        JobConfig(
            input=str(data / "images"), labels=str(masks), output=str(tmp_path / "out"), model="unet", batch_size=4
        )
    )
    m = summary.metrics
    assert m["unmatched"]["label_only"] == ["label_7"]
    assert m["unmatched"]["pixels"]["label_7"]["label_pixels"] == 25
    assert m["mean_over"] == ["circle", "square", "triangle"]
    fg = [m["classes"][c]["dice"] for c in ("circle", "square", "triangle")]
    assert m["mean_dice"] == pytest.approx(np.mean(fg))
    lines = "\n".join(summary.lines())
    assert "over 3 classes (circle, square, triangle) on 20 labeled images; background excluded" in lines
    assert "only the labels know (not in the means; map them with --label-map): label_7 (25 label px)" in lines


def test_paths_typed_differently_are_one_job_and_new_files_are_reported(data, tmp_path, ray_cluster, monkeypatch):
    inp = tmp_path / "in"
    shutil.copytree(data / "images", inp)
    monkeypatch.chdir(tmp_path)
    first = run(JobConfig(input="./in", output="out", model="unet", batch_size=4))
    assert first.num_processed == 20
    for spelling in ("in", "in/", str(inp)):
        again = run(JobConfig(input=spelling, output=str(tmp_path / "out"), model="unet", batch_size=4))
        assert (again.num_processed, again.num_skipped) == (0, 20), spelling
    shutil.copy(inp / sorted(p.name for p in inp.iterdir())[0], inp / "late.jpg")
    (inp / ".DS_Store").write_bytes(b"\0")
    later = run(JobConfig(input="in", output="out", model="unet", batch_size=4))
    assert later.num_processed == 0
    note = "\n".join(later.lines())
    assert "1 file(s) in the input are new since this run's manifest was frozen (e.g. late.jpg)" in note
    assert "new --output" in note


def test_export_flags_on_a_finished_job_are_applied_and_recorded(data, tmp_path, ray_cluster):
    config = JobConfig(input=str(data / "images"), output=str(tmp_path / "out"), model="unet", batch_size=4)
    run(config)
    before = json.loads((tmp_path / "out" / "predictions.coco.json").read_text())
    assert all(isinstance(a["segmentation"], dict) for a in before["annotations"])
    again = run(JobConfig(**{**config.__dict__, "coco_segmentation": "polygon", "export_classes": ("circle",)}))
    assert again.num_processed == 0 and any("rewrote the COCO files" in n for n in again.notes)
    after = json.loads((tmp_path / "out" / "predictions.coco.json").read_text())
    assert after["annotations"] and all(isinstance(a["segmentation"], list) for a in after["annotations"])
    assert {c["name"] for c in after["categories"]} == {"circle"}
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    assert job["coco_export"]["segmentation"] == "polygon" and job["coco_export"]["classes"] == ["circle"]
    assert job["config"]["coco_segmentation"] == "polygon"


def test_options_that_do_not_apply_are_warned_about_and_recorded_as_what_ran(data, tmp_path, ray_cluster, caplog):
    config = JobConfig(
        input=str(data / "images"),
        output=str(tmp_path / "out"),
        model="unet",
        batch_size=4,
        precision="fp16",
        score_threshold=0.7,
        min_size=300,
    )
    with caplog.at_level("WARNING", logger="segbatch"):
        run(config)
    text = caplog.text
    assert "--score-threshold 0.7 applies to instance models; 'unet' is semantic: ignored" in text
    assert "--min-size 300 applies to instance models" in text
    assert "--precision fp16 applies on a GPU; the model actors run on the CPU: fp32" in text
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    assert job["applied"]["precision"] == "fp32" and job["applied"]["score_threshold"] is None
    assert job["config"]["precision"] == "fp16"  # what was asked stays visible beside what ran
    # an option that does not apply does not make another job: the default rerun resumes it
    assert (
        run(
            JobConfig(
                input=str(data / "images"), output=str(tmp_path / "out"), model="unet", batch_size=4, precision="fp16"
            )
        ).num_processed
        == 0
    )
