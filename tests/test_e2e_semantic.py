"""End to end on the shared Ray cluster: a semantic model, mask-PNG labels, bad inputs mixed in."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segbatch import JobConfig, JobError
from segbatch.masks import decode_rle
from segbatch.models.unet import bundled_checkpoint
from segbatch.pipeline import run
from segbatch.sample import save_label_png
from tests.helpers import read_outputs, semantic_maps

pytestmark = pytest.mark.ray

DECODE_ERRORS = {
    "corrupt.jpg": "decode: corrupt or truncated JPEG",
    "notes.jpg": "decode: not an image",
    "empty.jpg": "decode: empty file",
}
LABEL_ERRORS = {
    "nolabel.jpg": "label: missing label: no mask PNG matches 'nolabel.jpg'",
    "wrongsize.jpg": "label: label size 50x40 does not match image size 160x120",
}
CONVERTED = ["cmyk.jpg", "gray16.png", "rgba.png", "palette.png", "rotated.jpg"]


@pytest.fixture(scope="module")
def dataset(sample_dir: Path, tmp_path_factory) -> Path:
    """8 good images with masks, 5 of them also saved in unusual modes, and 5 bad inputs."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    stems = sorted(p.stem for p in (sample_dir / "images").glob("*.jpg"))[:8]
    for s in stems:
        shutil.copy(sample_dir / "images" / f"{s}.jpg", root / "images" / f"{s}.jpg")
        shutil.copy(sample_dir / "masks" / f"{s}.png", root / "masks" / f"{s}.png")
    img = Image.open(sample_dir / "images" / f"{stems[1]}.jpg")  # 120x160
    label = np.asarray(Image.open(sample_dir / "masks" / f"{stems[1]}.png"))
    img.convert("CMYK").save(root / "images" / "cmyk.jpg", quality=95)
    gray16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(root / "images" / "gray16.png")
    img.convert("RGBA").save(root / "images" / "rgba.png")
    img.convert("P").save(root / "images" / "palette.png")
    for name in ("cmyk", "gray16", "rgba", "palette"):
        save_label_png(label, str(root / "masks" / f"{name}.png"))
    # Stored upright-rotated with an EXIF tag saying "rotate 90° clockwise to display";
    # its label is drawn on the displayed image, as annotation tools do.
    exif = Image.Exif()
    exif[0x0112] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(root / "images" / "rotated.jpg", quality=95, exif=exif)
    save_label_png(label, str(root / "masks" / "rotated.png"))
    img.save(root / "images" / "nolabel.jpg")
    img.save(root / "images" / "wrongsize.jpg")
    save_label_png(np.zeros((40, 50), np.uint8), str(root / "masks" / "wrongsize.png"))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    (root / "images" / "corrupt.jpg").write_bytes(buf.getvalue()[:300])
    (root / "images" / "notes.jpg").write_text("not a picture")
    (root / "images" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def result(dataset: Path, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("run") / "out"
    config = JobConfig(
        input=str(dataset / "images"),
        labels=str(dataset / "masks"),
        output=str(out),
        model="unet",
        batch_size=4,
        storage_options={"secret_token": "hunter2"},
    )
    summary = run(config)
    return config, summary, out, read_outputs(out)


def test_every_input_appears_exactly_once_with_its_status(dataset, result):
    _, summary, _, o = result
    names = sorted(p.name for p in (dataset / "images").iterdir())
    assert sorted(r["file_name"] for r in o["images"]) == names
    assert len({r["image_id"] for r in o["images"]}) == len(names)
    by_name = {r["file_name"]: r for r in o["images"]}
    for name, message in {**DECODE_ERRORS, **LABEL_ERRORS}.items():
        assert by_name[name]["status"] == "error"
        assert by_name[name]["error"].startswith(message), by_name[name]["error"]
    ok = [n for n in names if n not in DECODE_ERRORS and n not in LABEL_ERRORS]
    assert all(by_name[n]["status"] == "ok" and by_name[n]["error"] is None for n in ok)
    assert summary.num_images == len(names) and summary.num_errors == 5
    assert o["metrics"]["errors_by_stage"] == {"decode": 3, "label": 2}


def test_unusual_modes_and_exif_are_handled(result):
    o = result[3]
    by_name = {r["file_name"]: r for r in o["images"]}
    for name in CONVERTED:
        assert by_name[name]["status"] == "ok" and by_name[name]["labeled"], name
        assert (by_name[name]["width"], by_name[name]["height"]) == (160, 120), name
        # Palette conversion dithers the picture (a harder input), so only its decoding is checked.
        if name != "palette.png":
            assert by_name[name]["dice"] > 0.8, (name, by_name[name]["dice"])
    # A label problem keeps the prediction: nothing is lost for pre-labeling.
    assert by_name["nolabel.jpg"]["num_masks"] > 0 and not by_name["nolabel.jpg"]["labeled"]
    assert by_name["corrupt.jpg"]["width"] is None and by_name["corrupt.jpg"]["num_masks"] == 0
    # Each row records how its file became 8-bit RGB.
    assert by_name["cmyk.jpg"]["conversion"] == "CMYK → RGB" and by_name["rgba.png"]["conversion"] == "RGBA → RGB"
    assert by_name["gray16.png"]["conversion"].startswith("I;16 range ")
    assert by_name[next(n for n in by_name if n.startswith("shapes_"))]["conversion"] is None  # plain RGB JPEG


def test_metrics_equal_an_independent_recount_from_the_outputs(dataset, result):
    """Dice recomputed here from masks.parquet and the label PNGs, with plain numpy."""
    _, summary, out, o = result
    names = o["job"]["model"]["categories"]
    inter = np.zeros(len(names), np.int64)
    pred = np.zeros(len(names), np.int64)
    gt = np.zeros(len(names), np.int64)
    maps = semantic_maps(out)
    labeled = [r for r in o["images"] if r["status"] == "ok" and r["labeled"]]
    for r in labeled:
        label = np.asarray(Image.open(dataset / "masks" / (Path(r["file_name"]).stem + ".png")))
        p = maps[r["file_name"]]
        keep = label != 255
        for c in range(len(names)):
            g_c, p_c = (label == c) & keep, (p == c) & keep
            inter[c] += (g_c & p_c).sum()
            pred[c] += p_c.sum()
            gt[c] += g_c.sum()
    m = o["metrics"]
    assert m["num_labeled"] == len(labeled) == 8 + len(CONVERTED)
    for c, name in enumerate(names):
        got = m["classes"][name]
        assert (got["intersection"], got["pred_pixels"], got["gt_pixels"]) == (inter[c], pred[c], gt[c])
        assert got["dice"] == pytest.approx(2 * inter[c] / (pred[c] + gt[c]))
    fg = [2 * inter[c] / (pred[c] + gt[c]) for c in range(1, len(names))]
    assert m["mean_dice"] == pytest.approx(np.mean(fg)) == pytest.approx(summary.mean_dice)
    assert m["mean_dice"] > 0.85  # the bundled model on unseen images, some degraded (palette, gray)


def test_coco_json_loads_and_evaluates_with_pycocotools(dataset, result):
    _, _, out, o = result
    coco = COCO(str(out / "predictions.coco.json"))
    decoded = [r for r in o["images"] if r["width"] is not None]
    assert len(coco.getImgIds()) == len(decoded) == len(o["images"]) - 3
    assert len(coco.getAnnIds()) == len(o["masks"]) == o["metrics"]["num_masks"]
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"circle", "square", "triangle"}
    for ann in coco.loadAnns(coco.getAnnIds()):
        rle = ann["segmentation"]
        assert isinstance(rle["counts"], str)
        raw = {"size": rle["size"], "counts": rle["counts"].encode()}
        assert ann["area"] == int(mask_utils.area(raw))
        assert ann["bbox"] == pytest.approx(list(mask_utils.toBbox(raw)))
        img = coco.imgs[ann["image_id"]]
        assert rle["size"] == [img["height"], img["width"]]
    # Ground truth in COCO form from the label PNGs, to score the predictions with COCOeval.
    images, annotations = [], []
    for r in o["images"]:
        if r["status"] != "ok" or not r["labeled"]:
            continue
        label = np.asarray(Image.open(dataset / "masks" / (Path(r["file_name"]).stem + ".png")))
        images.append({"id": r["image_id"], "file_name": r["file_name"], "width": r["width"], "height": r["height"]})
        for c in (1, 2, 3):
            m = np.asfortranarray((label == c).astype(np.uint8))
            if m.any():
                rle = mask_utils.encode(m)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": r["image_id"],
                        "category_id": c,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "area": float(mask_utils.area(rle)),
                        "bbox": list(mask_utils.toBbox(rle)),
                        "iscrowd": 0,
                    }
                )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": json.loads((out / "predictions.coco.json").read_text())["categories"],
    }
    gt.createIndex()
    dets = [{**a, "score": 1.0} for a in coco.loadAnns(coco.getAnnIds()) if a["image_id"] in gt.imgs]
    ev = COCOeval(gt, gt.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[1] > 0.8  # AP50 of a good model


def test_job_json_records_provenance_without_secrets(result):
    _, _, out, o = result
    job = o["job"]
    assert job["status"] == "complete" and (out / "_SUCCESS").exists()
    assert job["model"]["weights"]["sha256"] == hashlib.sha256(Path(bundled_checkpoint()).read_bytes()).hexdigest()
    assert {"torch", "torchvision", "ray", "pyarrow", "segbatch"} <= set(job["versions"])
    assert job["config"]["storage_options"] == ["secret_token"]
    for path in out.iterdir():
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path


def test_rerun_of_a_finished_job_does_nothing(result, ray_cluster):
    config, first, out, _o = result
    before = (out / "predictions.coco.json").read_bytes()
    again = run(config)
    assert again.num_processed == 0 and again.num_skipped == first.num_images
    assert (out / "predictions.coco.json").read_bytes() == before


def test_an_output_holding_another_job_is_refused(result):
    config, _, _, _ = result
    other = JobConfig(**{**config.__dict__, "model": "lraspp_mobilenet_v3_large", "weights": "none"})
    with pytest.raises(
        JobError, match=r"already holds a different job .*model: 'unet' there, 'lraspp_mobilenet_v3_large' now"
    ):
        run(other)


def test_masks_decode_to_the_label_maps_shape(result):
    o = result[3]
    sizes = {r["image_id"]: (r["height"], r["width"]) for r in o["images"]}
    for m in o["masks"][:10]:
        assert decode_rle(m["segmentation"]).shape == sizes[m["image_id"]]
        # A semantic mask's score: its class's mean top-class probability over its pixels.
        assert 0.0 < m["score"] <= 1.0


def test_an_actor_taking_several_batches_at_once_gives_the_same_outputs(result, tmp_path):
    config, first, _, o = result
    out = tmp_path / "calls"
    # Three calls in one actor: Ray Data batches inputs and outputs in their threads while
    # one runs the model; nothing may be lost, doubled or mixed up between batches.
    summary = run(JobConfig(**{**config.__dict__, "output": str(out), "calls_per_actor": 3, "batch_size": 2}))
    assert summary.num_images == first.num_images and summary.num_errors == first.num_errors
    again = read_outputs(out)

    def masks(outputs):
        return sorted((m["image_id"], m["category_id"], m["segmentation"]["counts"]) for m in outputs["masks"])

    assert masks(again) == masks(o) and masks(o)
    assert sorted((r["image_id"], r["status"]) for r in again["images"]) == sorted(
        (r["image_id"], r["status"]) for r in o["images"]
    )
