"""CVAT's forms of a run, verified with Datumaro, the dataset library behind CVAT's import/export.

CVAT imports "COCO 1.0" as Datumaro's ``coco_instances`` and "Segmentation mask 1.1" (a zip)
as Datumaro's ``voc``, whose ``ImageSets/Segmentation`` lists go to the ``voc_segmentation``
reader. Datumaro (PyPI ``datumaro``) lives in its own virtualenv, REPO/.venv-datumaro (its pins
clash with segbatch's: pandas, pillow, pyarrow), built by ``make datumaro-venv``; a script run
in it imports the files and prints every mask as JSON, which the tests compare with
masks.parquet decoded by pycocotools. Nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segbatch.errors import JobError
from segbatch.outputs.cvat_masks import (
    MAX_INSTANCES,
    CvatMasksOptions,
    labelmap_text,
    paint,
    png,
    write_cvat_masks,
)
from segbatch.outputs.folder import OutDir
from segbatch.outputs.label_studio import ExportLabel, export_labels
from segbatch.outputs.schema import IMAGES_SCHEMA
from tests.outputs.test_label_studio import (
    BROKEN_ID,
    IMAGE_IDS,
    INSTANCE_CATEGORIES,
    PHOTOS,
    SEMANTIC_CATEGORIES,
    expected_masks,
    make_run,
    tool_python,
    unpack,
)

REPO = Path(__file__).resolve().parents[2]
DM_VENV = REPO / ".venv-datumaro"

IMPORT = r"""
import base64, json, sys
import numpy as np
from datumaro.components.annotation import AnnotationType, Mask
from datumaro.components.dataset import Dataset
from datumaro.components.environment import Environment

def dump(ds):
    cats = ds.categories()
    names = [c.name for c in cats[AnnotationType.label]]
    colours = {}
    if AnnotationType.mask in cats:
        colours = {names[i]: list(map(int, c)) for i, c in cats[AnnotationType.mask].colormap.items()}
    items = []
    for item in ds:
        anns = []
        for a in item.annotations:
            if isinstance(a, Mask):
                img = np.asarray(a.image).astype(bool)
                anns.append({"label": names[a.label], "shape": list(img.shape),
                             "bits": base64.b64encode(np.packbits(img.ravel())).decode(),
                             "score": a.attributes.get("score")})
            else:
                anns.append({"other": a.type.name})
        items.append({"id": item.id, "image_id": item.attributes.get("id"), "annotations": anns})
    return {"labels": names, "colours": colours, "items": sorted(items, key=lambda i: i["id"])}

spec = json.load(open(sys.argv[1]))
out = {"detected": Environment().detect_dataset(spec["voc"])}
for key, (path, fmt) in spec["imports"].items():
    out[key] = dump(Dataset.import_from(path, fmt))
print(json.dumps(out))
"""


def _import(imports: dict[str, tuple[str, str]], voc: Path, tmp: Path) -> dict[str, Any]:
    python = tool_python(DM_VENV, "datumaro-venv")
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"imports": imports, "voc": str(voc)}))
    proc = subprocess.run([python, "-c", IMPORT, str(spec)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stem(file_name: str) -> str:
    return file_name.rsplit(".", 1)[0]


def _visible(masks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a one-label-per-pixel map can show: paint by ascending (score, id), keep what stays visible."""
    if not masks:
        return []
    winner = np.zeros(masks[0]["pixels"].shape, np.int64)
    for m in sorted(masks, key=lambda m: (m["score"] or 0.0, m["id"])):
        winner[m["pixels"]] = m["id"]
    shown = [{**m, "pixels": winner == m["id"]} for m in masks]
    return [m for m in shown if m["pixels"].any()]


def _as_sets(anns: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    return sorted((a["label"], np.packbits(a["pixels"].ravel()).tobytes()) for a in anns)


def _check(dumped: dict[str, Any], want: dict[str, list[dict[str, Any]]], what: str, others: int = 0) -> None:
    """Items and their masks as ``want`` says; besides masks only ``others`` boxes per mask."""
    items = {i["id"]: i for i in dumped["items"]}
    assert sorted(items) == sorted(want), f"{what}: items"
    for item_id, masks in want.items():
        anns = items[item_id]["annotations"]
        got = [{"label": a["label"], "pixels": unpack(a)} for a in anns if "other" not in a]
        assert [a["other"] for a in anns if "other" in a] == ["bbox"] * others * len(got), f"{what}: {anns}"
        assert _as_sets(got) == _as_sets(masks), f"{what}: masks of {item_id} differ"


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_datumaro_reads_segbatchs_masks_from_coco_and_from_cvat_masks(tmp_path, task):
    run = make_run(tmp_path, task)
    counts = write_cvat_masks(OutDir.open(str(run.path)), CvatMasksOptions())
    extracted = tmp_path / "unzipped"
    with zipfile.ZipFile(run.path / "cvat-masks.zip") as z:
        z.extractall(extracted)
        names = sorted(n for n in z.namelist() if not n.endswith("/"))
    on_disk = sorted(str(p.relative_to(run.path / "cvat-masks")) for p in (run.path / "cvat-masks").rglob("*.*"))
    assert names == on_disk, "the zip holds exactly the folder"
    for n in names:
        assert (extracted / n).read_bytes() == (run.path / "cvat-masks" / n).read_bytes()

    # Datumaro 1.x reads a COCO file only inside annotations/ beside an images/ folder (CVAT's fork
    # also takes the bare file): the layout of CVAT's "COCO 1.0" zip.
    coco = tmp_path / "coco" / "annotations" / "instances_default.json"
    coco.parent.mkdir(parents=True)
    (tmp_path / "coco" / "images").mkdir()
    shutil.copyfile(run.path / "predictions.coco.json", coco)
    got = _import(
        {
            "coco": (str(coco), "coco_instances"),
            "voc": (str(run.path / "cvat-masks"), "voc_segmentation"),
            "voc_zip": (str(extracted), "voc_segmentation"),
        },
        run.path / "cvat-masks",
        tmp_path,
    )
    assert "voc_segmentation" in got["detected"]
    masks = expected_masks(run.path)
    stems = {iid: _stem(name) for iid, (name, *_) in zip(IMAGE_IDS, PHOTOS, strict=True)}
    categories = SEMANTIC_CATEGORIES if task == "semantic" else INSTANCE_CATEGORIES
    exported = [c for c in categories[1:] if c != "N/A"]

    # COCO: every mask as segbatch wrote it (overlaps and all), categories by name, scores kept.
    assert sorted(got["coco"]["labels"]) == sorted(exported)
    want_coco = {stems[i]: [{"label": m["category"], "pixels": m["pixels"]} for m in masks.get(i, [])] for i in stems}
    # Datumaro 1.x adds a box beside each segmentation (CVAT's fork only where there is none).
    _check(got["coco"], want_coco, "coco", others=1)
    assert {i["image_id"] for i in got["coco"]["items"]} == set(IMAGE_IDS)
    if task == "instance":
        scores = sorted(round(a["score"], 5) for i in got["coco"]["items"] for a in i["annotations"] if "score" in a)
        assert scores == sorted(round(m["score"], 5) for ms in masks.values() for m in ms)

    # cvat-masks: background first, then the categories, each in its own colour; the visible part
    # of every mask (all of it for semantic masks, which are disjoint); the broken image left out.
    want_voc = {stems[i]: _visible(masks.get(i, [])) for i in stems}
    want_voc = {k: [{"label": m["category"], "pixels": m["pixels"]} for m in v] for k, v in want_voc.items()}
    for key in ("voc", "voc_zip"):
        assert got[key]["labels"] == ["background", *exported]
        colours = [tuple(c) for c in got[key]["colours"].values()]
        assert len(set(colours)) == len(colours) and got[key]["colours"]["background"] == [0, 0, 0]
        _check(got[key], want_voc, key)
    n_masks = sum(len(ms) for ms in masks.values())
    visible = sum(len(v) for v in want_voc.values())
    assert counts["items"] == len(IMAGE_IDS) and counts["pngs"] == sum(1 for i in IMAGE_IDS if masks.get(i))
    assert (counts["instances"], counts["hidden"]) == (visible, n_masks - visible)
    if task == "instance":
        assert counts["hidden"] >= 1, "the test run has an instance covered entirely by a higher score"
    assert BROKEN_ID not in {m["image_id"] for ms in masks.values() for m in ms}


def test_labelmap_lines_and_colours():
    labels = export_labels(INSTANCE_CATEGORIES, background=0)
    assert labelmap_text(labels).splitlines() == [
        "# label:color_rgb:parts:actions",
        "background:0,0,0::",
        "person:128,0,0::",  # VOC colours of indices 1 and 2
        "bicycle:0,128,0::",
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [("a:b", "category 'a:b' cannot go into labelmap.txt"), ("background", "reserves that name")],
)
def test_labelmap_refuses_names_it_cannot_hold(name, message):
    with pytest.raises(JobError, match=message):
        labelmap_text([ExportLabel(name, 1, (128, 0, 0))])


def _rle_mask(mask_id: int, pixels: np.ndarray, category: str, score: float | None) -> dict[str, Any]:
    from segbatch.masks import encode_binary

    return {"id": mask_id, "category": category, "score": score, "segmentation": encode_binary(pixels[:, :, None])[0]}


def test_higher_scores_paint_on_top_and_ties_go_to_the_later_mask():
    a, b, c = (np.zeros((4, 6), np.uint8) for _ in range(3))
    a[:, :4], b[:, 2:], c[1:3, 1:5] = 1, 1, 1
    masks = [_rle_mask(1, a, "x", 0.5), _rle_mask(2, b, "y", 0.9), _rle_mask(3, c, "x", 0.5)]
    classes, instances, dropped = paint(masks, {"x": 1, "y": 2}, 4, 6)
    assert dropped == 0
    # Instances by descending score: mask 2 (0.9) is 1; masks 3 and 1 tie at 0.5: the later id (3) is 2.
    want = np.array(
        [
            [3, 3, 1, 1, 1, 1],
            [3, 2, 1, 1, 1, 1],
            [3, 2, 1, 1, 1, 1],
            [3, 3, 1, 1, 1, 1],
        ]
    )
    assert np.array_equal(instances, want)
    assert np.array_equal(classes, np.where(want == 1, 2, 1))


def test_an_image_keeps_its_254_highest_scoring_masks():
    masks = []
    for k in range(MAX_INSTANCES + 2):
        pixels = np.zeros((16, 17), np.uint8)
        pixels.ravel()[k] = 1
        masks.append(_rle_mask(k + 1, pixels, "x", k / 1000))
    _, instances, dropped = paint(masks, {"x": 1}, 16, 17)
    assert dropped == 2
    flat = instances.ravel()
    assert flat[0] == flat[1] == 0, "the two lowest scores are left out"
    assert flat[MAX_INSTANCES + 1] == 1 and flat[2] == MAX_INSTANCES


def test_more_labels_than_a_palette_holds_make_an_rgb_png():
    colours = np.array([(i % 256, i // 256, 7) for i in range(300)], np.uint8)
    index = np.array([[0, 299], [256, 3]])
    image = Image.open(__import__("io").BytesIO(png(index, colours)))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), colours[index])


def test_classes_and_min_area_filter_the_masks(tmp_path):
    run = make_run(tmp_path, "semantic")
    masks = expected_masks(run.path)
    counts = write_cvat_masks(OutDir.open(str(run.path)), CvatMasksOptions(classes=("dog",), min_area=5))
    dogs = [m for ms in masks.values() for m in ms if m["category"] == "dog"]
    assert counts["other_class"] == sum(len(ms) for ms in masks.values()) - len(dogs)
    assert counts["below_min_area"] == sum(m["area"] < 5 for m in dogs)
    assert counts["instances"] == sum(m["area"] >= 5 for m in dogs)
    lines = (run.path / "cvat-masks" / "labelmap.txt").read_text().splitlines()
    assert lines[1:] == ["background:0,0,0::", "dog:0,128,0::"]  # dog keeps its colour (index 2)


def test_file_names_that_differ_only_in_extension_are_refused(tmp_path):
    run = make_run(tmp_path, "semantic")
    table = pq.read_table(run.path / "images.parquet")
    names = table.column("file_name").to_pylist()
    names[names.index("retina.jpg")] = "rocket.png"  # rocket.jpg is there too
    table = table.set_column(table.schema.get_field_index("file_name"), "file_name", pa.array(names))
    pq.write_table(table.cast(table.schema), run.path / "images.parquet")
    assert "file_name" in IMAGES_SCHEMA.names
    with pytest.raises(JobError, match=r"images \['rocket.jpg', 'rocket.png'\] share a VOC item id"):
        write_cvat_masks(OutDir.open(str(run.path)), CvatMasksOptions())
