"""End to end on the shared Ray cluster: Mask R-CNN with COCO instance labels.

The model has seeded random weights (real weights cannot be downloaded here) and a zero
score threshold, so it emits many low-score instances: enough to exercise instance
masks, scores, per-class merging for Dice, category matching by name and COCOeval.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segbatch import JobConfig
from segbatch.masks import decode_rle
from segbatch.pipeline import run
from tests.helpers import read_outputs

pytestmark = pytest.mark.ray

SHAPE_TO_LABEL = {1: 11, 2: 12, 3: 13}  # label category ids of the user's own choosing
OPTIONS = {"score_threshold": 0.0, "min_size": 96}


def predicted_names(images: Path) -> list[str]:
    """The 3 categories the seeded model predicts most on these images, found in-process.

    Naming the label categories after them makes COCOeval see matching categories
    whatever random init this torch build gives.
    """
    from segbatch.models import ModelOptions
    from segbatch.models.weights import ResolvedWeights
    from segbatch.stages.predict import Predictor
    from segbatch.stages.read import read_batch

    predictor = Predictor("maskrcnn_resnet50_fpn", ResolvedWeights("none", None, None), ModelOptions(**OPTIONS))
    uris = [str(p) for p in sorted(images.iterdir())]
    out = predictor(read_batch({"uri": np.array(uris, dtype=object)}, predictor.preprocess))
    labels = np.concatenate(list(out["inst_labels"]))
    cats = predictor.loaded.categories
    counts = {}
    for c in labels:
        if cats[c] != "N/A":
            counts[cats[c]] = counts.get(cats[c], 0) + 1
    assert len(counts) >= 3, counts
    return sorted(counts, key=lambda n: -counts[n])[:3]


def write_coco_labels(sample_dir: Path, stems: list[str], path: Path, names: list[str]) -> dict:
    images, annotations = [], []
    for i, stem in enumerate(stems):
        label = np.asarray(Image.open(sample_dir / "masks" / f"{stem}.png"))
        h, w = label.shape
        images.append({"id": 100 + i, "file_name": f"{stem}.jpg", "width": w, "height": h})
        for shape, cat in SHAPE_TO_LABEL.items():
            m = (label == shape).astype(np.uint8)
            if not m.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(m))
            seg = {"size": [h, w], "counts": rle["counts"].decode()}
            if len(annotations) % 2:  # half as polygons, half as RLE: both forms must pair
                ys, xs = np.nonzero(m)
                seg = [
                    [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max()),
                        float(ys.min()),
                        float(xs.max()),
                        float(ys.max()),
                        float(xs.min()),
                        float(ys.max()),
                    ]
                ]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + i,
                    "category_id": cat,
                    "segmentation": seg,
                    "area": float(m.sum()),
                    "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": 0,
                }
            )
    # The first name in capitals: categories match by name whatever the case.
    categories = [{"id": 11 + i, "name": n.upper() if i == 0 else n} for i, n in enumerate(names)]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(doc))
    return doc


@pytest.fixture(scope="module")
def result(sample_dir: Path, tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("inst")
    stems = sorted(p.stem for p in (sample_dir / "images").glob("*.jpg"))[:4]
    (root / "images").mkdir()
    for s in stems:
        shutil.copy(sample_dir / "images" / f"{s}.jpg", root / "images")
    names = predicted_names(root / "images")
    doc = write_coco_labels(sample_dir, stems, root / "labels.json", names)
    out = root / "out"
    summary = run(
        JobConfig(
            input=str(root / "images"),
            labels=str(root / "labels.json"),
            output=str(out),
            model="maskrcnn_resnet50_fpn",
            weights="none",
            batch_size=2,
            **OPTIONS,
        )
    )
    return summary, out, read_outputs(out), doc


def test_ids_come_from_the_coco_labels_and_every_image_is_scored(result):
    summary, _, o, doc = result
    assert sorted(r["image_id"] for r in o["images"]) == [im["id"] for im in doc["images"]]
    assert all(r["status"] == "ok" and r["labeled"] for r in o["images"])
    assert summary.num_masks > 0


def test_instances_have_scores_and_pycocotools_geometry(result):
    _, out, o, _ = result
    coco = COCO(str(out / "predictions.coco.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(o["masks"]) > 0
    assert all(0.0 <= a["score"] <= 1.0 for a in anns)
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    assert names[1] == "person" and "N/A" not in names.values() and 0 not in names
    for a in anns[:50]:
        raw = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        assert a["area"] == int(mask_utils.area(raw)) and a["category_id"] in names
    # The results form loads too (COCO.loadRes), as COCOeval pipelines need.
    res = coco.loadRes([{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in anns])
    assert len(res.getAnnIds()) == len(anns)


def test_dice_merges_instances_per_class_and_matches_categories_by_name(result):
    _, out, o, doc = result
    m = o["metrics"]
    label_names = {c["id"]: c["name"] for c in doc["categories"]}
    label_to_name = {i: n.lower() for i, n in label_names.items()}  # model names are lower case
    matched = dict(map(tuple, o["job"]["eval_classes"]["matched"]))
    assert matched == {label_to_name[i]: label_names[i] for i in label_names}
    # Recount here: paint each image's instances by ascending score, compare per class.
    gt_coco = COCO(str(out.parent / "labels.json"))
    sums = {n: [0, 0, 0] for n in label_to_name.values()}
    by_image: dict[int, list] = {}
    for mk in o["masks"]:
        by_image.setdefault(mk["image_id"], []).append(mk)
    for im in doc["images"]:
        pred = np.full((im["height"], im["width"]), "", dtype=object)
        for mk in sorted(by_image.get(im["id"], []), key=lambda x: x["score"]):
            pred[decode_rle(mk["segmentation"]).astype(bool)] = mk["category"]
        gt = np.full((im["height"], im["width"]), "", dtype=object)
        anns = gt_coco.loadAnns(gt_coco.getAnnIds(imgIds=[im["id"]]))
        for a in sorted(anns, key=lambda a: (-int(gt_coco.annToMask(a).sum()), a["id"])):
            gt[gt_coco.annToMask(a).astype(bool)] = label_to_name[a["category_id"]]
        for name, s in sums.items():
            s[0] += int(((pred == name) & (gt == name)).sum())
            s[1] += int((pred == name).sum())
            s[2] += int((gt == name).sum())
    for name, (i, p, g) in sums.items():
        got = m["classes"][name]
        assert (got["intersection"], got["pred_pixels"], got["gt_pixels"]) == (i, p, g), name


def test_coco_mask_ap_equals_cocoeval_run_here(result):
    from pycocotools.cocoeval import COCOeval

    _, out, o, doc = result
    ap = o["metrics"]["coco_segm"]
    assert set(ap) >= {"AP", "AP50", "AR100"} and ap["AP"] is not None
    gt = COCO(str(out.parent / "labels.json"))
    to_label = {c["name"].lower(): c["id"] for c in doc["categories"]}
    dets = [
        {
            "image_id": m["image_id"],
            "category_id": to_label[m["category"]],
            "segmentation": m["segmentation"],
            "score": m["score"],
        }
        for m in o["masks"]
        if m["category"] in to_label
    ]
    assert dets, "the labels' categories were chosen among the predicted ones"
    ev = COCOeval(gt, gt.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ap["AP"] == pytest.approx(max(ev.stats[0], 0.0))
    assert ap["AR100"] == pytest.approx(max(ev.stats[8], 0.0))
