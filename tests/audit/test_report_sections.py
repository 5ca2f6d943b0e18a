"""report.html for a run without labels and for a run whose labels were corrupted on purpose,
both written by real runs of the bundled U-Net and opened in headless Chromium."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.stats import spearmanr

from segbatch import JobConfig
from segbatch.cli import main
from segbatch.pipeline import run
from segbatch.sample import save_label_png, write_sample_dataset
from tests.audit.test_audit import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.ray

N = 10
CORRUPT = {2: "swap", 6: "erase"}  # image index → what was done to its label
SIZES = ((96, 128),)


def _corrupt(label: np.ndarray, kind: str) -> np.ndarray:
    out = label.copy()
    objects = [int(c) for c in np.unique(label) if c not in (0, 255)]
    if kind == "swap":  # every pixel of one class annotated as the next class
        for c in objects:
            out[label == c] = {1: 2, 2: 3, 3: 1}[c]
    else:  # every object left out
        out[np.isin(label, objects)] = 0
    return out


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory, ray_cluster) -> Path:
    root = tmp_path_factory.mktemp("nolabels")
    write_sample_dataset(str(root), 8, seed=31, sizes=SIZES)
    out = root / "run"
    run(JobConfig(input=str(root / "images"), output=str(out), model="unet", batch_size=4))
    return out


@pytest.fixture(scope="module")
def mislabeled(tmp_path_factory, ray_cluster) -> Path:
    root = tmp_path_factory.mktemp("mislabeled")
    write_sample_dataset(str(root), N, seed=41, sizes=SIZES)
    for i, path in enumerate(sorted((root / "masks").iterdir())):
        if i in CORRUPT:
            save_label_png(_corrupt(np.asarray(Image.open(path)), CORRUPT[i]), str(path))
    out = root / "run"
    run(JobConfig(input=str(root / "images"), labels=str(root / "masks"), output=str(out), model="unet",
                  batch_size=4, quality_stride=2))  # fmt: skip
    return out


def _open(report: Path) -> dict[str, Any]:
    """What Chromium shows: every picture's load state, the cards of each section, the tables."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report.as_uri(), wait_until="load")
        seen = {
            "images": page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
            ),
            "sections": page.eval_on_selector_all("section", "ss => ss.map(s => s.id)"),
            "kpis": page.eval_on_selector_all("b[id]", "bs => Object.fromEntries(bs.map(b => [b.id, b.textContent]))"),
        }
        for name in ("least-confident", "ranked"):
            seen[name] = page.eval_on_selector_all(
                f"#{name} .card", "cs => cs.map(c => [Number(c.dataset.imageId), Number(c.dataset.score)])"
            )
        seen["frequency"] = page.eval_on_selector_all(
            "#class-frequency tr[data-class]",
            "rs => rs.map(r => [r.dataset.class, ...Array.from(r.cells).slice(1).map(c => c.textContent)])",
        )
        seen["swaps"] = page.eval_on_selector_all(
            "#swaps tr[data-given]", "rs => rs.map(r => [r.dataset.given, r.dataset.predicted, r.cells[2].textContent])"
        )
        browser.close()
    broken = [s for s in seen["images"] if not (s[1] and s[2] > 0)]
    assert not broken, broken
    return seen


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in pq.read_table(run_dir / "images.parquet").to_pylist() if r["status"] == "ok"]


def _lowest(rows: list[dict[str, Any]], column: str, n: int = 12) -> list[int]:
    scored = [r for r in rows if r[column] is not None]
    return [r["image_id"] for r in sorted(scored, key=lambda r: (r[column], r["image_id"]))[:n]]


def test_a_run_without_labels_gets_frequencies_confidence_and_its_least_confident_images(unlabeled):
    seen = _open(unlabeled / "report.html")
    assert seen["sections"] == ["class-frequency", "confidence"]
    assert "mean-dice" not in seen["kpis"] and "label-errors" not in seen["sections"]
    rows = _rows(unlabeled)
    # The least confident first, every image of this small run shown, each as three panels.
    assert [i for i, _ in seen["least-confident"]] == _lowest(rows, "confidence")
    assert [s for _, s in seen["least-confident"]] == pytest.approx(sorted(r["confidence"] for r in rows))
    pictures = [src for src, _, _ in seen["images"]]
    assert {"report/class_freq.svg", "report/confidence_hist.svg"} <= set(pictures)
    panels = [p for p in pictures if p.startswith("report/least_confident/")]
    assert len(panels) == len(rows) == 8
    first = Image.open(unlabeled / panels[0])
    panel_w = round(128 * (first.size[1] - 18) / 96)  # three captioned panels of a 96 × 128 image side by side
    assert first.size[0] == 3 * panel_w + 2 * 6
    # Class frequencies: images whose prediction holds the class, and the class's share of predicted pixels.
    images = Counter(s["category"] for r in rows for s in r["class_stats"] if s["pred_pixels"])
    pixels = Counter()
    for r in rows:
        for s in r["class_stats"]:
            pixels[s["category"]] += s["pred_pixels"]
    total = sum(pixels.values())
    assert total == sum(r["width"] * r["height"] for r in rows)
    table = {name: (int(n.split(" ")[0]), float(share.rstrip("%"))) for name, n, share in seen["frequency"]}
    assert table == {c: (images[c], pytest.approx(100 * pixels[c] / total, abs=0.006)) for c in images}
    assert float(seen["kpis"]["mean-confidence"]) == pytest.approx(np.mean([r["confidence"] for r in rows]), abs=1e-4)


def test_label_rankings_and_filters_are_refused_without_labels(unlabeled, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(unlabeled, run_dir)
    assert main(["audit", str(run_dir), "--rank", "dice"]) == 2
    assert "rank 'dice' needs labels, which this run does not have; valid for this run: confidence" in (
        capsys.readouterr().err
    )
    assert main(["audit", str(run_dir), "--max-dice", "0.5"]) == 2
    assert "a run without labels" in capsys.readouterr().err
    assert main(["audit", str(run_dir), "--sample", "3", "--worst", "2"]) == 0
    html = (run_dir / "report.html").read_text()
    assert "3 images audited" in html
    assert len(list((run_dir / "report" / "least_confident").iterdir())) == 2


def test_likely_label_errors_rank_the_corrupted_labels_first(mislabeled):
    seen = _open(mislabeled / "report.html")
    assert seen["sections"] == ["class-frequency", "confidence", "label-errors"]
    rows = _rows(mislabeled)
    ranked = [i for i, _ in seen["ranked"]]
    assert ranked == _lowest(rows, "label_quality")
    by_name = {r["image_id"]: r["file_name"] for r in rows}
    assert {by_name[i] for i in ranked[: len(CORRUPT)]} == {f"shapes_{i:04d}.jpg" for i in CORRUPT}
    pictures = [src for src, _, _ in seen["images"]]
    worst = [p for p in pictures if p.startswith("report/worst/")]
    assert [int(p.split("-")[1].split(".")[0]) for p in worst] == ranked
    # The flagged-pixels panel (fourth) of the worst image is red where label_issue_mask is set.
    panels = np.asarray(Image.open(mislabeled / worst[0]).convert("RGB")).astype(int)
    w = (panels.shape[1] - 3 * 6) // 4
    flagged = panels[18:, 3 * (w + 6) :]
    red = (flagged[..., 0] == 255) & (flagged[..., 1] == 40) & (flagged[..., 2] == 40)
    share = next(r["label_issue_share"] for r in rows if r["image_id"] == ranked[0])
    assert share > 0.05 and red.mean() == pytest.approx(share, abs=0.1)
    # The swap table sums the images' swaps (here: no filter, so metrics.json's common_label_issues).
    metrics = json.loads((mislabeled / "metrics.json").read_text())
    expected = [
        [s["given_label"], s["predicted_label"], f"{s['num_pixel_issues']:,}"]
        for s in metrics["label_quality"]["common_label_issues"]
    ]
    assert seen["swaps"] == expected and expected
    assert int(seen["kpis"]["flagged-pixels"].replace(",", "")) == metrics["label_quality"]["flagged_pixels"]
    # Does low confidence predict low Dice? Spearman over the images that have both, against scipy.
    pairs = [(r["confidence"], r["dice"]) for r in rows if r["dice"] is not None and r["confidence"] is not None]
    rho = spearmanr([c for c, _ in pairs], [d for _, d in pairs]).statistic
    assert float(seen["kpis"]["confidence-dice-spearman"]) == pytest.approx(rho, abs=1e-3)
    assert f'<span id="confidence-dice-n">{len(pairs)}</span>' in (mislabeled / "report.html").read_text()


def test_rank_dice_shows_disagreement_and_a_bad_rank_is_named(mislabeled, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(mislabeled, run_dir)
    assert main(["audit", str(run_dir), "--rank", "dice", "--worst", "4"]) == 0
    seen = _open(run_dir / "report.html")
    assert seen["sections"] == ["class-frequency", "confidence", "label-errors", "disagreement"]
    rows = _rows(run_dir)
    assert [i for i, _ in seen["ranked"]] == _lowest(rows, "dice", 4)
    assert seen["swaps"]  # the swap table stays, the label-quality panels go
    assert len(list((run_dir / "report" / "worst").iterdir())) == 4
    assert main(["audit", str(run_dir), "--rank", "loss"]) == 2
    assert "rank 'loss' is unknown; valid: label-quality, dice, confidence" in capsys.readouterr().err
