"""Audit and exports of a finished run: report.html (opened in headless Chromium), metrics, COCO forms."""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segbatch import JobConfig
from segbatch.cli import main
from segbatch.pipeline import run

pytestmark = pytest.mark.ray

CHROMIUM = "/usr/bin/chromium"
# As the machine's notes advise: no background networking on a closed network, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def finished(sample_dir: Path, tmp_path_factory, ray_cluster) -> Path:
    out = tmp_path_factory.mktemp("audit") / "run"
    run(
        JobConfig(
            input=str(sample_dir / "images"),
            labels=str(sample_dir / "masks"),
            output=str(out),
            model="unet",
            batch_size=4,
        )
    )
    return out


def _kpi(html: str, name: str) -> float:
    m = re.search(rf'<b id="{name}">([0-9.]+)</b>', html)
    assert m, name
    return float(m.group(1))


def test_a_run_with_labels_writes_its_report_with_the_runs_figures(finished):
    html = (finished / "report.html").read_text()
    metrics = json.loads((finished / "metrics.json").read_text())
    assert _kpi(html, "mean-dice") == pytest.approx(metrics["mean_dice"], abs=1e-4)
    assert _kpi(html, "mean-iou") == pytest.approx(metrics["mean_iou"], abs=1e-4)
    assert _kpi(html, "pixel-accuracy") == pytest.approx(metrics["pixel_accuracy"], abs=1e-4)
    pictures = re.findall(r'<img src="([^"]+)"', html)
    assert {"report/dice_iou.svg", "report/confusion.svg", "report/dice_hist.svg"} <= set(pictures)
    worst = [p for p in pictures if p.startswith("report/worst/")]
    assert len(worst) == 12
    for p in pictures:
        assert (finished / p).stat().st_size > 0, p
    # The ranked images come in ascending label quality (the default ranking of a run that has it).
    rows = [r for r in pq.read_table(finished / "images.parquet").to_pylist() if r["label_quality"] is not None]
    lowest = sorted(rows, key=lambda r: (r["label_quality"], r["image_id"]))[:12]
    assert [int(p.split("-")[1].split(".")[0]) for p in worst] == [r["image_id"] for r in lowest]


def test_overlay_panels_show_label_and_prediction_in_class_colours(finished, sample_dir):
    html = (finished / "report.html").read_text()
    first = re.findall(r'<img src="(report/worst/[^"]+)"', html)[0]
    image_id = int(first.split("-")[1].split(".")[0])
    row = next(r for r in pq.read_table(finished / "images.parquet").to_pylist() if r["image_id"] == image_id)
    panels = np.asarray(Image.open(finished / first).convert("RGB"))
    label = np.asarray(Image.open(sample_dir / "masks" / (Path(row["file_name"]).stem + ".png")))
    # The label panel (second of four) is tinted where the label has a foreground class.
    w = (panels.shape[1] - 3 * 6) // 4
    panel = panels[18:, w + 6 : 2 * w + 6].astype(int)
    small = np.asarray(Image.fromarray(label).resize((panel.shape[1], panel.shape[0]), Image.Resampling.NEAREST))
    fg, bg = small > 0, small == 0
    assert fg.any() and bg.any()
    assert panel[fg].std(axis=0).sum() > 0
    # VOC colours: class 1 red, 2 green, 3 olive: the tint is strongest in the class's own channel.
    for c, channel in ((1, 0), (2, 1)):
        sel = small == c
        if sel.sum() > 50:
            px = panel[sel].mean(axis=0)
            assert px[channel] == max(px), (c, px)


def test_metrics_command_recomputes_metrics_json_exactly(finished, capsys):
    assert main(["metrics", str(finished)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((finished / "metrics.json").read_text())
    assert printed["confusion"]["classes"] == ["background", "circle", "square", "triangle"]
    conf = np.array(printed["confusion"]["matrix"])
    assert conf.trace() / conf.sum() == pytest.approx(printed["pixel_accuracy"])


def test_audit_filters_classes_threshold_and_sample(finished, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    images = [r for r in pq.read_table(run_dir / "images.parquet").to_pylist() if r["dice"] is not None]
    threshold = float(np.median([r["dice"] for r in images]))
    assert main(["audit", str(run_dir), "--max-dice", str(threshold), "--worst", "3"]) == 0
    html = (run_dir / "report.html").read_text()
    below = [r for r in images if r["dice"] <= threshold]
    assert f"{len(below)} images audited" in html
    assert len(list((run_dir / "report" / "worst").iterdir())) == 3  # the earlier 12 are gone

    # One name normalisation everywhere: "Circle" is "circle", as run-time matching has it.
    assert main(["audit", str(run_dir), "--classes", "Circle", "--worst", "2"]) == 0
    html = (run_dir / "report.html").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert _kpi(html, "mean-dice") == pytest.approx(metrics["classes"]["circle"]["dice"], abs=1e-4)
    with_circle = [r for r in images if any(s["category"] == "circle" for s in r["class_stats"])]
    assert f"{len(with_circle)} images audited" in html

    assert main(["audit", str(run_dir), "--sample", "5", "--seed", "3"]) == 0
    assert "5 images audited" in (run_dir / "report.html").read_text()
    assert main(["audit", str(run_dir), "--classes", "horse"]) == 2
    assert "audit classes ['horse'] are unknown; valid: background, circle, square, triangle" in capsys.readouterr().err


def test_report_opens_in_headless_chromium_from_disk_and_over_http(finished, tmp_path):
    """Every picture loads (naturalWidth > 0) from file:// and from a static HTTP server, as a bucket serves it."""
    from playwright.sync_api import sync_playwright

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(finished))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = [(finished / "report.html").as_uri(), f"http://127.0.0.1:{server.server_address[1]}/report.html"]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for k, url in enumerate(urls):
                page.goto(url, wait_until="load")
                sizes = page.eval_on_selector_all(
                    "img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
                )
                assert len(sizes) == 29  # 5 charts, 12 least confident, 12 ranked by label quality
                broken = [s for s in sizes if not (s[1] and s[2] > 0)]
                assert not broken, broken
                shot = tmp_path / f"report-{k}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert Image.open(shot).size[1] > 1000
            browser.close()
    finally:
        server.shutdown()


def test_exports_rle_polygon_and_results_forms(finished, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    coco = json.loads((run_dir / "predictions.coco.json").read_text())
    assert coco["annotations"] and all(a["iscrowd"] == 1 for a in coco["annotations"])  # CVAT: RLE = crowd mask
    results = json.loads((run_dir / "predictions.results.json").read_text())
    assert len(results) == len(coco["annotations"])
    assert set(results[0]) == {"image_id", "category_id", "segmentation", "score"}
    gt = COCO(str(run_dir / "predictions.coco.json"))
    dt = gt.loadRes(str(run_dir / "predictions.results.json"))
    assert len(dt.getAnnIds()) == len(results)

    labels = tmp_path / "labels.json"
    labels.write_text(
        json.dumps(
            {
                "images": [],
                "annotations": [],
                "categories": [{"id": 30, "name": "Square"}, {"id": 10, "name": "circle"}],
            }
        )
    )
    areas = sorted(a["area"] for a in coco["annotations"])
    min_area = areas[len(areas) // 2]
    assert (
        main(
            [
                "export",
                str(run_dir),
                "--coco-segmentation",
                "polygon",
                "--polygon-tolerance",
                "1.5",
                "--min-mask-area",
                str(min_area),
                "--export-classes",
                "circle,square",
                "--coco-category-ids",
                str(labels),
            ]
        )
        == 0
    )
    assert "annotations" in capsys.readouterr().out
    poly = json.loads((run_dir / "predictions.coco.json").read_text())
    assert [c["id"] for c in poly["categories"]] == [30, 10]
    kept = [a for a in coco["annotations"] if a["area"] >= min_area and a["category_id"] in (1, 2)]
    assert len(poly["annotations"]) == len(kept) > 0
    names = {1: 10, 2: 30}
    for a, b in zip(kept, poly["annotations"], strict=True):
        assert (b["id"], b["category_id"], b["iscrowd"]) == (a["id"], names[a["category_id"]], 0)
        assert isinstance(b["segmentation"], list) and all(len(p) >= 6 for p in b["segmentation"])
    # The polygon file loads with pycocotools, and its polygons, rasterised, match the RLE masks.
    api = COCO(str(run_dir / "predictions.coco.json"))
    assert len(api.getAnnIds()) == len(kept)
    rle_by_id = {a["id"]: a for a in coco["annotations"]}
    for b in poly["annotations"][:10]:
        a = rle_by_id[b["id"]]
        h, w = a["segmentation"]["size"]
        m_poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(b["segmentation"], h, w)))
        m_rle = mask_utils.decode({"size": [h, w], "counts": a["segmentation"]["counts"].encode()})
        iou = (m_poly & m_rle).sum() / (m_poly | m_rle).sum()
        assert iou > 0.9, (b["id"], iou)
        # area and bbox are the polygons' own (what a tool recounts from the file), not the mask's
        assert b["area"] == float(m_poly.sum())
        assert b["bbox"] == pytest.approx(list(mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m_poly)))))
    assert any(b["area"] != rle_by_id[b["id"]]["area"] for b in poly["annotations"])
    # job.json says what the files hold now
    job = json.loads((run_dir / "job.json").read_text())
    assert job["coco_export"]["segmentation"] == "polygon" and job["coco_export"]["min_area"] == min_area
    assert job["config"]["coco_segmentation"] == "polygon" and job["config"]["export_classes"] == ["circle", "square"]
