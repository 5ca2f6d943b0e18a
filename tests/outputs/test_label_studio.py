"""Label Studio export, verified with the real Label Studio server and label-studio-sdk.

Label Studio (PyPI ``label-studio``, with ``label-studio-sdk``) lives in its own virtualenv,
REPO/.venv-label-studio (its pins clash with segbatch's: numpy, pyarrow, pillow), built by
``make label-studio-venv`` together with an empty, migrated SQLite database (template/). The
test starts the server from it on a free loopback port with a copy of that database in a temp
folder and local-files serving on, then drives it through the SDK in a subprocess of that
venv, which prints JSON that the tests compare. Nothing is mocked.

The run folders are built here without Ray: real JPEGs, images.parquet / masks.parquet in the
run's schemas, job.json, and the COCO exports (:func:`make_run`; test_cvat.py uses it too).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segbatch.errors import JobError
from segbatch.masks import instances_to_masks, label_map_to_masks
from segbatch.outputs.coco import ExportOptions, write_coco_exports
from segbatch.outputs.folder import OutDir
from segbatch.outputs.label_studio import (
    LabelStudioOptions,
    brush_rle,
    export_labels,
    image_url,
    labeling_config,
    select_images,
    write_label_studio,
)
from segbatch.outputs.schema import IMAGES_SCHEMA, MASKS_SCHEMA
from tests.conftest import free_port
from tests.helpers import skimage_photo

REPO = Path(__file__).resolve().parents[2]
LS_VENV = REPO / ".venv-label-studio"
SEMANTIC_CATEGORIES = ["__background__", "cat", "dog", "car"]
INSTANCE_CATEGORIES = ["__background__", "person", "N/A", "bicycle"]
WEIGHTS_SHA = "ab" * 32


def tool_python(venv: Path, target: str) -> str:
    """The venv's python; a missing venv fails the test (never skips) and says how to build it."""
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{venv} is missing: build it with `make {target}` (CI runs it before the tests)")
    return str(python)


# ---------------------------------------------------------------- a run folder, built by hand


@dataclass(frozen=True)
class Run:
    path: Path  # the run folder
    photos: Path  # the input folder (its parent is Label Studio's document root)
    task: str


# (file_name, source photo, (width, height), confidence); odd sizes, a subfolder, a space.
PHOTOS = [
    ("rocket.jpg", "rocket.jpg", (61, 47), 0.71),
    ("sub dir/chelsea cat.jpg", "chelsea.png", (50, 37), 0.42),
    ("sub dir/coffee.jpg", "coffee.png", (33, 29), 0.93),
    ("retina.jpg", "retina.jpg", (40, 40), 0.42),  # ties with chelsea: image_id breaks it
]
IMAGE_IDS = [3, 5, 8, 11]
BROKEN_ID = 6  # an undecodable image: an error row without a size


def _semantic_masks(k: int, h: int, w: int) -> list[Any]:
    rng = np.random.default_rng(k)
    label = np.zeros((h, w), np.uint8)
    if k == 2:
        return []  # an image where the model found nothing
    for cls in (1, 2, 3):
        y0, x0 = rng.integers(0, h - 5), rng.integers(0, w - 5)
        label[y0 : y0 + int(rng.integers(3, h)), x0 : x0 + int(rng.integers(3, w))] = cls
    label[rng.random((h, w)) < 0.05] = 1  # speckle: many short runs
    return label_map_to_masks(label, skip={0})


def _instance_masks(k: int, h: int, w: int) -> list[Any]:
    masks = np.zeros((4, h, w), bool)
    if k == 0:
        masks[0, 5:30, 5:40] = True  # person 0.9
        masks[1, 20:45, 30:60] = True  # bicycle 0.8, under the person where they meet
        masks[2, 10:20, 10:20] = True  # person 0.5, inside the first: hidden in a VOC map
        masks[3, 25:40, 35:55] = True  # bicycle 0.8, ties with the other bicycle (later id wins)
        labels, scores = np.array([1, 3, 1, 3]), np.array([0.9, 0.8, 0.5, 0.8], np.float32)
    elif k == 2:
        return []
    else:
        rng = np.random.default_rng(k)
        for i in range(3):
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            masks[i, y0 : y0 + 12, x0 : x0 + 15] = rng.random((len(range(y0, min(h, y0 + 12))), 1)) > 0.1
        masks = masks[:3]
        labels, scores = np.array([1, 3, 1]), np.array([0.7, 0.6, 0.95], np.float32)
    return instances_to_masks(masks, labels, scores)


def make_run(root: Path, task: str, *, confidence: bool = True, folder: str = "photos") -> Run:
    """A finished run of ``task`` ("semantic" | "instance") over real JPEGs in ``root/docroot/<folder>``."""
    photos = root / "docroot" / folder
    run = root / f"run-{task}"
    run.mkdir(parents=True)
    image_rows, mask_rows = [], []
    for k, (name, source, (w, h), conf) in enumerate(PHOTOS):
        path = photos / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(skimage_photo(source)).convert("RGB").resize((w, h)).save(path, quality=90)
        masks = _semantic_masks(k, h, w) if task == "semantic" else _instance_masks(k, h, w)
        cats = SEMANTIC_CATEGORIES if task == "semantic" else INSTANCE_CATEGORIES
        for m in masks:
            mask_rows.append(
                {
                    "id": len(mask_rows) + 1,
                    "image_id": IMAGE_IDS[k],
                    "category_id": m.category_id,
                    "category": cats[m.category_id],
                    "score": m.score,
                    "area": m.area,
                    "bbox": list(m.bbox),
                    "segmentation": dict(m.rle),
                }
            )
        image_rows.append(_image_row(IMAGE_IDS[k], name, str(path), w, h, len(masks), conf))
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    image_rows.append(_image_row(BROKEN_ID, "broken.jpg", str(photos / "broken.jpg"), None, None, 0, None))
    image_rows.sort(key=lambda r: r["image_id"])
    schema = IMAGES_SCHEMA
    if confidence and "confidence" not in schema.names:
        schema = schema.append(pa.field("confidence", pa.float32()))
    if not confidence:
        for r in image_rows:
            r.pop("confidence")
        if "confidence" in schema.names:
            schema = schema.remove(schema.get_field_index("confidence"))
    pq.write_table(pa.Table.from_pylist(image_rows, schema=schema), run / "images.parquet")
    pq.write_table(pa.Table.from_pylist(mask_rows, schema=MASKS_SCHEMA), run / "masks.parquet")
    cats = SEMANTIC_CATEGORIES if task == "semantic" else INSTANCE_CATEGORIES
    model = {
        "name": "segnet" if task == "semantic" else "maskrcnn_test",
        "task": task,
        "categories": cats,
        "background": 0,
        "weights": {"source": "/weights.pt", "sha256": WEIGHTS_SHA},
    }
    (run / "job.json").write_text(json.dumps({"model": model, "config": {"input": str(photos)}}))
    write_coco_exports(
        OutDir.open(str(run)),
        task=task,
        model_categories=tuple(cats),
        background=0,
        info={"description": "test run"},
        options=ExportOptions(),
    )
    return Run(run, photos, task)


def _image_row(image_id: int, name: str, uri: str, w: Any, h: Any, n: int, conf: Any) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "file_name": name,
        "uri": uri,
        "width": w,
        "height": h,
        "status": "ok" if w is not None else "error",
        "error": None if w is not None else "read: cannot identify image file",
        "labeled": False,
        "num_masks": n,
        "confidence": conf,
    }


def expected_masks(run: Path) -> dict[int, list[dict[str, Any]]]:
    """image_id → its masks.parquet rows, each with ``pixels``: ``(H, W) bool`` decoded by pycocotools."""
    out: dict[int, list[dict[str, Any]]] = {}
    for m in pq.read_table(run / "masks.parquet").to_pylist():
        seg = m["segmentation"]
        m["pixels"] = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
        out.setdefault(m["image_id"], []).append(m)
    return out


def expected_order(run: Path, order: str) -> list[int]:
    """image_ids with a size in ``order``, computed here from images.parquet (ties by image_id)."""
    rows = [r for r in pq.read_table(run / "images.parquet").to_pylist() if r["width"] is not None]
    if order == "image-id":
        return sorted(r["image_id"] for r in rows)
    sign = 1 if order == "least-confident" else -1
    rows.sort(key=lambda r: (r["confidence"] is None, sign * (r["confidence"] or 0), r["image_id"]))
    return [r["image_id"] for r in rows]


def unpack(entry: dict[str, Any]) -> np.ndarray:
    h, w = entry["shape"]
    bits = np.unpackbits(np.frombuffer(base64.b64decode(entry["bits"]), np.uint8))[: h * w]
    return bits.reshape(h, w).astype(bool)


# ---------------------------------------------------------------- brush RLE against the SDK

SDK_ROUND_TRIP = r"""
import base64, json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
out = []
for case in json.load(open(sys.argv[1])):
    h, w = case["shape"]
    decoded = decode_rle(case["rle"]).reshape(h, w, 4)
    mask = np.unpackbits(np.frombuffer(base64.b64decode(case["bits"]), np.uint8))[: h * w].reshape(h, w)
    out.append({"channels_equal": bool((decoded == decoded[:, :, :1]).all()),
                "alpha": base64.b64encode(np.packbits(decoded[:, :, 3].ravel() == 255)).decode(),
                "values": sorted(set(np.unique(decoded).tolist())),
                "sdk_rle": mask2rle(mask.astype(np.uint8) * 255)})
print(json.dumps(out))
"""


def _brush_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    cases = [np.zeros((1, 1), bool), np.ones((1, 1), bool), np.zeros((13, 7), bool), np.ones((9, 31), bool)]
    cases += [rng.random(shape) < p for shape, p in [((1, 17), 0.5), ((17, 1), 0.5), ((23, 41), 0.5), ((64, 65), 0.1)]]
    speckle = np.ones((300, 400), bool)  # runs far beyond 2^16 values, split in pieces
    speckle[150, 200] = False
    cases.append(speckle)
    lengths = np.zeros((1, 200), bool)  # every run length class: 1..70 pixels (4..280 values)
    pos = 0
    for n in range(1, 20):
        lengths[0, pos : pos + n] = n % 2 == 1
        pos += n
    cases.append(lengths)
    return cases


def test_brush_rle_decodes_with_the_sdk_to_the_mask_and_equals_the_sdks_encoder(tmp_path):
    python = tool_python(LS_VENV, "label-studio-venv")
    cases = _brush_cases()
    spec = [
        {"shape": list(m.shape), "rle": brush_rle(m), "bits": base64.b64encode(np.packbits(m.ravel())).decode()}
        for m in cases
    ]
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [python, "-c", SDK_ROUND_TRIP, str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for mask, case, got in zip(cases, spec, results, strict=True):
        h, w = mask.shape
        alpha = np.unpackbits(np.frombuffer(base64.b64decode(got["alpha"]), np.uint8))[: h * w].reshape(h, w)
        assert np.array_equal(alpha.astype(bool), mask), f"{h}×{w}: alpha channel differs from the mask"
        assert got["channels_equal"], "all four RGBA channels carry the mask"
        assert set(got["values"]) <= {0, 255}
        assert case["rle"] == got["sdk_rle"], f"{h}×{w}: bytes differ from label-studio-sdk's mask2rle"


def test_brush_rle_header_counts_four_values_per_pixel():
    rle = brush_rle(np.zeros((3, 5), bool))
    assert int.from_bytes(bytes(rle[:4]), "big") == 3 * 5 * 4
    with pytest.raises(ValueError, match="expected an"):
        brush_rle(np.zeros((2, 2, 2), bool))


# ---------------------------------------------------------------- order, limit, URLs, config


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory) -> Run:
    return make_run(tmp_path_factory.mktemp("ls-semantic"), "semantic")


@pytest.fixture(scope="module")
def instance_run(tmp_path_factory) -> Run:
    return make_run(tmp_path_factory.mktemp("ls-instance"), "instance")


@pytest.mark.parametrize("order", ["image-id", "least-confident", "most-confident"])
@pytest.mark.parametrize("limit", [None, 1, 3])
def test_images_are_ordered_and_cut(semantic_run, order, limit):
    want = expected_order(semantic_run.path, order)
    got = select_images(OutDir.open(str(semantic_run.path)), order, limit).tolist()
    assert got == (want if limit is None else want[:limit])
    assert BROKEN_ID not in got


def test_the_confidence_order_is_the_hand_computed_one(semantic_run):
    # PHOTOS' confidences: rocket .71 (id 3), chelsea .42 (id 5), coffee .93 (id 8), retina .42 (id 11).
    out = OutDir.open(str(semantic_run.path))
    assert select_images(out, "least-confident", None).tolist() == [5, 11, 3, 8]
    assert select_images(out, "most-confident", 2).tolist() == [8, 3]


def test_ordering_by_confidence_needs_the_column(tmp_path):
    run = make_run(tmp_path, "semantic", confidence=False)
    out = OutDir.open(str(run.path))
    with pytest.raises(JobError, match=r"order 'least-confident' needs the confidence column.*\['image-id'\]"):
        select_images(out, "least-confident", None)
    assert select_images(out, "image-id", 2).tolist() == [3, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"order": "random"},
            "order 'random' is not one of ['image-id', 'least-confident', 'most-confident', 'label-quality']",
        ),
        ({"limit": 0}, "limit 0 must be >= 1"),
        ({"image_root": "ftp://host/x"}, "image root 'ftp://host/x' is not a URL Label Studio can resolve"),
        ({"min_area": -1}, "minimum mask area -1"),
    ],
)
def test_bad_options_name_the_value_and_the_choices(kwargs, message):
    with pytest.raises(JobError) as err:
        LabelStudioOptions(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("uri", "file_name", "root", "url"),
    [
        ("s3://bkt/in/a b/x.jpg", "a b/x.jpg", None, "s3://bkt/in/a b/x.jpg"),  # cloud storage resolves it
        ("gs://bkt/in/x.jpg", "x.jpg", None, "gs://bkt/in/x.jpg"),
        ("/data/photos/a b/x#1.jpg", "a b/x#1.jpg", None, "/data/local-files/?d=photos/a%20b/x%231.jpg"),
        ("/data/photos/x.jpg", "x.jpg", "s3://other/pics/", "s3://other/pics/x.jpg"),
        ("/data/photos/a b/x.jpg", "a b/x.jpg", "https://cdn.example.com/p", "https://cdn.example.com/p/a%20b/x.jpg"),
        ("/data/photos/x.jpg", "x.jpg", "/data/local-files/?d=data/photos", "/data/local-files/?d=data/photos/x.jpg"),
    ],
)
def test_image_urls(uri, file_name, root, url):
    assert image_url(uri, file_name, root) == url


def test_an_input_label_studio_cannot_load_needs_an_image_root():
    with pytest.raises(JobError, match=re.escape("Label Studio cannot load image 'hf://x/y.jpg'")):
        image_url("hf://x/y.jpg", "y.jpg", None)


def test_the_config_lists_the_categories_with_their_colours_escaped():
    labels = export_labels(["__background__", "cat", "N/A", 'a "b" & <c>'], background=0)
    root = ET.fromstring(labeling_config(labels))
    brush = root.find("BrushLabels")
    assert brush is not None and brush.get("name") == "label" and brush.get("toName") == "image"
    assert root.find("Image").get("value") == "$image"  # type: ignore[union-attr]
    got = [(lab.get("value"), lab.get("background")) for lab in brush.findall("Label")]
    assert got == [("cat", "#800000"), ('a "b" & <c>', "#008000")]  # VOC colours 1 and 2
    chosen = export_labels(["bg", "cat", "dog"], background=0, classes=["Dog"])
    assert [(c.name, c.index) for c in chosen] == [("dog", 2)]  # the colour stays the class's own
    with pytest.raises(JobError, match=r"export classes \['cow'\] are unknown; valid: cat, dog"):
        export_labels(["bg", "cat", "dog"], background=0, classes=["cow"])


def test_tasks_without_a_server(semantic_run):
    out = OutDir.open(str(semantic_run.path))
    counts = write_label_studio(out, LabelStudioOptions(min_area=4))
    tasks = json.loads((semantic_run.path / "label-studio" / "tasks.json").read_text())
    masks = expected_masks(semantic_run.path)
    assert [t["data"]["image_id"] for t in tasks] == IMAGE_IDS  # the broken image has no task
    small = sum(m["area"] < 4 for ms in masks.values() for m in ms)
    assert counts["below_min_area"] == small and counts["no_size"] == 1
    assert counts["results"] == sum(len(ms) for ms in masks.values()) - small
    assert tasks[2]["predictions"][0]["result"] == []  # coffee: no masks, still a prediction
    assert all(t["predictions"][0]["model_version"] == "segnet@" + WEIGHTS_SHA[:12] for t in tasks)


# ---------------------------------------------------------------- the real Label Studio server

CLIENT = r"""
import base64, hashlib, json, sys, urllib.request
import numpy as np
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.converter.brush import decode_rle

spec = json.load(open(sys.argv[1]))
ls = LabelStudio(base_url=spec["url"], api_key=spec["token"])
project = ls.projects.create(title=spec["title"], label_config=open(spec["config"]).read())
ls.import_storage.local.create(project=project.id, path=spec["storage_path"], title="photos")
imported = ls.projects.import_tasks(id=project.id, request=json.load(open(spec["tasks"])))
parsed = ls.projects.get(id=project.id).parsed_label_config
tasks = sorted(ls.tasks.list(project=project.id, fields="all"), key=lambda t: t.id)
out = {"task_count": imported.task_count, "prediction_count": imported.prediction_count,
       "parsed": parsed, "tasks": []}
for t in tasks:
    url = t.data["image"]
    request = urllib.request.Request(spec["url"] + url, headers={"Authorization": "Token " + spec["token"]})
    with urllib.request.urlopen(request, timeout=30) as r:
        served = hashlib.sha256(r.read()).hexdigest()
    preds = []
    for p in t.predictions:
        results = []
        for r in p.result:
            h, w = r["original_height"], r["original_width"]
            alpha = decode_rle(r["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0
            results.append({"id": r["id"], "type": r["type"], "from_name": r["from_name"], "to_name": r["to_name"],
                            "labels": r["value"]["brushlabels"], "score": r.get("score"), "shape": [h, w],
                            "bits": base64.b64encode(np.packbits(alpha.ravel())).decode()})
        preds.append({"model_version": p.model_version, "score": p.score, "result": results})
    out["tasks"].append({"id": t.id, "data": t.data, "served_sha256": served, "predictions": preds})
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    python: str


@pytest.fixture(scope="module")
def ls_docroot(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ls-server")


@pytest.fixture(scope="module")
def server(ls_docroot) -> Iterator[Server]:
    """Label Studio on a free loopback port, SQLite under a temp folder, local files served."""
    python = tool_python(LS_VENV, "label-studio-venv")
    template = LS_VENV / "template" / "label_studio.sqlite3"
    if not template.exists():
        pytest.fail(f"{template} is missing: build it with `make label-studio-venv`")
    port, token = free_port(), "segbatch-test-token-0123456789"
    docroot = ls_docroot / "docroot"
    docroot.mkdir(exist_ok=True)
    # A copy of the database `make` migrated once: a fresh one migrates at start, ~60 s on 2 cores.
    (ls_docroot / "ls-data").mkdir()
    shutil.copyfile(template, ls_docroot / "ls-data" / "label_studio.sqlite3")
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(ls_docroot / "ls-data"),
        "LABEL_STUDIO_USERNAME": "segbatch@example.com",
        "LABEL_STUDIO_PASSWORD": "segbatch-test-password",
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docroot),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # no call to PyPI at start
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    binary = str(Path(python).parent / "label-studio")
    args = ["start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port), "--enable-legacy-api-token"]
    log_path = ls_docroot / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"Label Studio did not come up on {url} (exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield Server(url, token, python)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its autoreloader child: the group we started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _import_and_read_back(server: Server, run: Run, title: str, tmp: Path) -> dict[str, Any]:
    spec = {
        "url": server.url,
        "token": server.token,
        "title": title,
        "config": str(run.path / "label-studio" / "config.xml"),
        "tasks": str(run.path / "label-studio" / "tasks.json"),
        "storage_path": str(run.photos),
    }
    (tmp / f"{title}.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [server.python, "-c", CLIENT, str(tmp / f"{title}.json")], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_read_back(got: dict[str, Any], run: Run, order: str, limit: int | None, categories: list[str]) -> None:
    want = expected_order(run.path, order)[:limit]
    assert got["task_count"] == len(want) and got["prediction_count"] == len(want)
    assert got["parsed"]["label"]["type"] == "BrushLabels"
    assert got["parsed"]["label"]["labels"] == [c for c in categories[1:] if c != "N/A"]
    assert [t["data"]["image_id"] for t in got["tasks"]] == want, "Label Studio holds the tasks in the order asked"
    images = {r["image_id"]: r for r in pq.read_table(run.path / "images.parquet").to_pylist()}
    masks = expected_masks(run.path)
    for t in got["tasks"]:
        im = images[t["data"]["image_id"]]
        assert t["data"]["image"] == f"/data/local-files/?d={run.photos.name}/" + quote(im["file_name"])
        assert t["served_sha256"] == hashlib.sha256((run.photos / im["file_name"]).read_bytes()).hexdigest()
        (pred,) = t["predictions"]
        assert pred["model_version"].endswith("@" + WEIGHTS_SHA[:12])
        assert pred["score"] == pytest.approx(im["confidence"], abs=1e-6)
        own = {f"m{m['id']}": m for m in masks.get(im["image_id"], [])}
        assert sorted(r["id"] for r in pred["result"]) == sorted(own), "one result per mask"
        for r in pred["result"]:
            m = own[r["id"]]
            assert (r["type"], r["from_name"], r["to_name"]) == ("brushlabels", "label", "image")
            assert r["labels"] == [m["category"]]
            assert r["shape"] == [im["height"], im["width"]]
            assert np.array_equal(unpack(r), m["pixels"]), f"mask {m['id']} differs pixel for pixel"
            if run.task == "instance":
                assert r["score"] == pytest.approx(m["score"], abs=1e-6)


def test_label_studio_imports_the_semantic_tasks_least_confident_first(server, ls_docroot, tmp_path):
    run = make_run(ls_docroot, "semantic")  # photos under the server's document root
    write_label_studio(OutDir.open(str(run.path)), LabelStudioOptions(order="least-confident", limit=3))
    got = _import_and_read_back(server, run, "semantic", tmp_path)
    _check_read_back(got, run, "least-confident", 3, SEMANTIC_CATEGORIES)


def test_label_studio_keeps_every_overlapping_instance(server, ls_docroot, tmp_path):
    run = make_run(ls_docroot, "instance", folder="photos2")
    options = LabelStudioOptions(order="most-confident", image_root="/data/local-files/?d=photos2/")
    write_label_studio(OutDir.open(str(run.path)), options)
    got = _import_and_read_back(server, run, "instance", tmp_path)
    _check_read_back(got, run, "most-confident", None, INSTANCE_CATEGORIES)
