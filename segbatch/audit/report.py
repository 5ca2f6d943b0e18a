"""The offline quality audit: a finished run's Parquet → ``report.html`` and its pictures.

No model runs. The report shows per-class Dice and IoU (bars), the confusion matrix
(heatmap), the distribution of per-image Dice (histogram) and the images where model and
labels disagree most (image / label / prediction / disagreement). Filters pick what is
audited: classes, a Dice threshold and a random sample of images. Without filters every
figure equals metrics.json.

Layout under the run's output::

    report.html
    report/dice_iou.svg  report/confusion.svg  report/dice_hist.svg  report/worst/NN-<image_id>.png
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from segbatch.audit import charts
from segbatch.audit.overlays import class_colours, panels_png
from segbatch.categories import EvalSpace, resolve_names
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.io.images import decode_image
from segbatch.masks import decode_rle, instances_to_label_map
from segbatch.metrics import ClassSums, mean_over_present
from segbatch.outputs.folder import JOB, MANIFEST, MASKS, METRICS, REPORT, REPORT_DIR, OutDir
from segbatch.outputs.run_metrics import confusion_matrix, iter_image_rows
from segbatch.stages.encode import EncodeSpec, read_label

log = logging.getLogger(__name__)

_COLUMNS = ["image_id", "file_name", "uri", "width", "height", "status", "labeled", "dice", "confusion"]


@dataclass(frozen=True)
class AuditOptions:
    """What to audit. Defaults: every labeled image, every class, the 12 worst images."""

    worst: int = 12  # images shown with overlays, lowest Dice first
    classes: tuple[str, ...] | None = None  # evaluation class names to audit
    max_dice: float | None = None  # only images whose Dice is at most this
    sample: int | None = None  # audit a random sample of this many labeled images
    seed: int = 0  # of the sample

    def __post_init__(self) -> None:
        if self.worst < 0:
            raise JobError(f"worst {self.worst!r} must be >= 0")
        if self.max_dice is not None and not 0.0 <= self.max_dice <= 1.0:
            raise JobError(f"max_dice {self.max_dice!r} must be in [0, 1]")
        if self.sample is not None and self.sample < 1:
            raise JobError(f"sample {self.sample!r} must be >= 1 image")


@dataclass
class _Selection:
    conf: np.ndarray  # (K, K) int64 summed over the audited images
    dices: list[float]  # per-image Dice of the audited images (where defined)
    worst: list[tuple[float, int, dict[str, Any]]]  # (dice, image_id, row), ascending
    num_images: int


def _image_dice(conf: np.ndarray, keep: np.ndarray, background: int | None) -> float | None:
    sums = ClassSums.from_confusion(conf)
    return mean_over_present(sums.dice(), sums.present() & keep, background)


def _sample_key(seed: int, image_id: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest(), "big")


def _labeled_rows(out: OutDir, options: AuditOptions) -> Iterator[dict[str, Any]]:
    rows = (r for r in iter_image_rows(out, _COLUMNS) if r["status"] == "ok" and r["labeled"])
    if options.sample is None:
        yield from rows
        return
    # A seeded sample in one pass: the rows with the smallest hashes of (seed, image_id).
    heap: list[tuple[int, int, dict[str, Any]]] = []
    for r in rows:
        item = (-_sample_key(options.seed, r["image_id"]), r["image_id"], r)
        if len(heap) < options.sample:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    yield from sorted((r for _, _, r in heap), key=lambda r: r["image_id"])


def select(out: OutDir, names: list[str], background: int | None, options: AuditOptions) -> _Selection:
    k = len(names)
    keep = np.ones(k, dtype=bool)
    if options.classes is not None:
        keep = np.isin(np.array(names, dtype=object), list(options.classes))
    total = np.zeros((k, k), dtype=np.int64)
    dices: list[float] = []
    worst: list[tuple[float, int, dict[str, Any]]] = []  # max-heap by dice via negation
    n = 0
    for row in _labeled_rows(out, options):
        conf = confusion_matrix(row["confusion"], k)
        if options.classes is not None:
            if not (conf[keep, :].any() or conf[:, keep].any()):
                continue
            dice = _image_dice(conf, keep, background)
        else:
            dice = row["dice"]
        if options.max_dice is not None and (dice is None or dice > options.max_dice):
            continue
        n += 1
        total += conf
        if dice is None:
            continue
        dices.append(dice)
        if options.worst:
            item = (-dice, -row["image_id"], row)
            if len(worst) < options.worst:
                heapq.heappush(worst, item)
            elif item > worst[0]:
                heapq.heapreplace(worst, item)
    ranked = sorted(((-d, -i, r) for d, i, r in worst), key=lambda t: (t[0], t[1]))
    return _Selection(conf=total, dices=dices, worst=ranked, num_images=n)


def _predicted_map(masks: list[dict[str, Any]], task: str, background: int | None, h: int, w: int) -> np.ndarray:
    """An image's masks (masks.parquet rows) → ``(H, W)`` model class ids."""
    bg = background if background is not None else 0
    if task == "instance":
        if not masks:
            return np.full((h, w), bg, dtype=np.int32)
        stack = np.stack([decode_rle(m["segmentation"]) for m in masks])
        return instances_to_label_map(
            stack,
            np.array([m["category_id"] for m in masks]),
            np.array([m["score"] for m in masks], dtype=np.float32),
            background=bg,
        )
    out = np.full((h, w), bg, dtype=np.int32)
    for m in masks:
        out[decode_rle(m["segmentation"]) > 0] = m["category_id"]
    return out


def _render_worst(
    out: OutDir, job: dict[str, Any], es: EvalSpace, sel: _Selection, options: AuditOptions
) -> list[dict[str, Any]]:
    """Write one PNG per worst image; returns what the page says about each."""
    ids = [r["image_id"] for _, _, r in sel.worst]
    if not ids:
        return []
    with out.fs.open(out.path(MANIFEST), "rb") as f:
        manifest = {r["image_id"]: r for r in pq.read_table(f, filters=[("image_id", "in", ids)]).to_pylist()}
    masks_by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    with out.fs.open(out.path(MASKS), "rb") as f:
        cols = ["image_id", "category_id", "score", "segmentation"]
        for m in pq.read_table(f, columns=cols, filters=[("image_id", "in", ids)]).to_pylist():
            masks_by_image[m["image_id"]].append(m)
    model = job["model"]
    spec = EncodeSpec(
        task=model["task"],
        categories=tuple(model["categories"]),
        background=model["background"],
        eval_space=es,
        label_kind=job["labels"]["kind"],
        missing_labels="error",
        storage_options=out.storage_options,
    )
    colours = class_colours(es.num_classes)
    worst_dir = fsio.join(out.path(REPORT_DIR), "worst")
    if out.fs.exists(worst_dir):
        out.fs.rm(worst_dir, recursive=True)  # pictures of an earlier audit must not linger
    shown = []
    for rank, (dice, image_id, row) in enumerate(sel.worst, start=1):
        entry = {"rank": rank, "image_id": image_id, "file_name": row["file_name"], "dice": dice}
        try:
            # The run's storage options (OutDir carries them): the images sit where the run read them.
            high_bit_depth = job.get("config", {}).get("high_bit_depth", "range")
            rgb = decode_image(fsio.read_bytes(row["uri"], out.storage_options), high_bit_depth)
            h, w = rgb.shape[:2]
            label = read_label({**manifest[image_id], "file_name": row["file_name"]}, spec, h, w)
            if label is None:  # missing_labels="error" above: a labeled row's label is never missing
                raise JobError(f"the label of image_id {image_id} is missing")
            pred = es.predictions(_predicted_map(masks_by_image[image_id], model["task"], model["background"], h, w))
            name = f"{rank:02d}-{image_id}.png"
            fsio.write_bytes_atomic(
                out.fs, fsio.join(worst_dir, name), panels_png(rgb, label, pred, colours, es.background)
            )
            entry["picture"] = f"{REPORT_DIR}/worst/{name}"
            present = np.union1d(np.unique(label[label >= 0]), np.unique(pred))
            entry["classes"] = [int(c) for c in present if c != es.background]
        except Exception as err:  # one unreadable image must not stop the audit
            entry["problem"] = f"{type(err).__name__}: {err}"
        shown.append(entry)
    return shown


def write_report(out: OutDir, options: AuditOptions, metrics: Mapping[str, Any] | None = None) -> str:
    """Write report.html and its pictures under ``out``; returns the report's URL."""
    job = out.read_json(JOB)
    if job["labels"]["kind"] is None:
        raise JobError(f"{out.url!r} is a run without labels: there is nothing to audit")
    metrics = dict(metrics) if metrics is not None else out.read_json(METRICS)
    es = EvalSpace.from_dict(job["eval_classes"])
    names, bg = list(es.names), es.background
    if options.classes is not None:
        options = dataclasses.replace(options, classes=resolve_names(options.classes, names, "audit classes"))
    sel = select(out, names, bg, options)
    sums = ClassSums.from_confusion(sel.conf)
    dice, iou, present = sums.dice(), sums.iou(), sums.present()
    keep = present.copy()
    if options.classes is not None:
        keep &= np.isin(np.array(names, dtype=object), list(options.classes))
    order = [c for c in np.argsort(np.nan_to_num(dice, nan=2.0), kind="stable") if keep[c]]
    total = int(sel.conf.sum())
    figures = {
        "mean_dice": mean_over_present(dice, keep, bg),
        "mean_iou": mean_over_present(iou, keep, bg),
        "pixel_accuracy": float(np.trace(sel.conf) / total) if total else None,
    }
    report_dir = out.path(REPORT_DIR)
    bar_labels = [names[c] + (" (bg)" if c == bg and names[c] != "background" else "") for c in order]
    _put(
        out,
        fsio.join(report_dir, "dice_iou.svg"),
        charts.grouped_bars(
            bar_labels,
            [("Dice", "#4c78a8", [_num(dice[c]) for c in order]), ("IoU", "#f58518", [_num(iou[c]) for c in order])],
            muted=[c == bg for c in order],
            title="Per-class Dice and IoU (worst first; background grey, not in means)",
        ),
    )
    shown_cls = [c for c in range(len(names)) if present[c] and (options.classes is None or keep[c] or c == bg)]
    _put(
        out,
        fsio.join(report_dir, "confusion.svg"),
        charts.heatmap(
            sel.conf[np.ix_(shown_cls, shown_cls)], [names[c] for c in shown_cls], title="Confusion matrix (pixels)"
        ),
    )
    _put(
        out,
        fsio.join(report_dir, "dice_hist.svg"),
        charts.histogram(
            sel.dices, title=f"Per-image Dice ({len(sel.dices)} images)", xlabel="Dice (background excluded)"
        ),
    )
    worst = _render_worst(out, job, es, sel, options)
    html = _page(job, metrics, options, sel, names, bg, order, dice, iou, sums, figures, worst)
    fsio.write_bytes_atomic(out.fs, out.path(REPORT), html.encode("utf-8"))
    return out.url_of(REPORT)


def _put(out: OutDir, path: str, svg: str) -> None:
    fsio.write_bytes_atomic(out.fs, path, svg.encode("utf-8"))


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _swatch(colour: np.ndarray, name: str) -> str:
    r, g, b = (int(v) for v in colour)
    return f'<span class="sw"><i style="background:rgb({r},{g},{b})"></i>{escape(name)}</span>'


def _page(
    job: Mapping[str, Any],
    metrics: Mapping[str, Any],
    options: AuditOptions,
    sel: _Selection,
    names: list[str],
    bg: int | None,
    order: list[int],
    dice: np.ndarray,
    iou: np.ndarray,
    sums: ClassSums,
    figures: Mapping[str, float | None],
    worst: list[dict[str, Any]],
) -> str:
    colours = class_colours(len(names))
    filters = []
    if options.classes is not None:
        filters.append("classes: " + ", ".join(options.classes))
    if options.max_dice is not None:
        filters.append(f"images with Dice ≤ {options.max_dice:g}")
    if options.sample is not None:
        filters.append(f"random sample of {options.sample} labeled images (seed {options.seed})")
    look = [names[c] for c in order if c != bg and not np.isnan(dice[c])][:3]
    rows = "\n".join(
        f"<tr{' class=bg' if c == bg else ''}><td>{_swatch(colours[c], names[c])}</td><td>{_fmt(_num(dice[c]))}</td>"
        f"<td>{_fmt(_num(iou[c]))}</td><td>{int(sums.gt[c]):,}</td><td>{int(sums.pred[c]):,}</td>"
        f"<td>{int(sums.intersection[c]):,}</td></tr>"
        for c in order
    )
    cards = []
    for e in worst:
        head = f"#{e['rank']} · {escape(e['file_name'])} · image_id {e['image_id']} · Dice {_fmt(e['dice'])}"
        if "problem" in e:
            cards.append(
                f'<div class="card"><h3>{head}</h3><p class="warn">could not draw: {escape(e["problem"])}</p></div>'
            )
            continue
        legend = " ".join(_swatch(colours[c], names[c]) for c in e["classes"])
        cards.append(
            f'<div class="card"><h3>{head}</h3><img src="{e["picture"]}" alt="{escape(e["file_name"])}">'
            f'<div class="legend">{legend}</div></div>'
        )
    coco = metrics.get("coco_segm")
    coco_html = ""
    if coco:
        coco_html = (
            "<h2>COCO mask AP (pycocotools COCOeval, segm)</h2><table><tr>"
            + "".join(f"<th>{escape(k)}</th>" for k in coco)
            + "</tr><tr>"
            + "".join(
                f"<td>{_fmt(v, 3) if isinstance(v, float) or v is None else escape(str(v))}</td>" for v in coco.values()
            )
            + "</tr></table>"
        )
    model = job["model"]
    subtitle = (
        f"run {escape(str(job.get('started', '')))} · {sel.num_images} images audited of "
        f"{metrics.get('num_labeled', 0)} labeled ({metrics.get('num_images', 0)} in the run, "
        f"{metrics.get('num_errors', 0)} errors)" + (" · filters: " + escape("; ".join(filters)) if filters else "")
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>segbatch audit · {escape(model["name"])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}}
h1{{margin-bottom:4px}} .sub{{color:#555;margin-top:0}}
.kpi{{display:flex;gap:16px;flex-wrap:wrap;margin:16px 0}}
.kpi div{{background:#f3f5f8;border-radius:6px;padding:10px 16px}} .kpi b{{display:block;font-size:22px}}
.charts{{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} tr.bg td{{color:#888}}
.sw{{white-space:nowrap;margin-right:10px}} .sw i{{display:inline-block;width:12px;height:12px;margin-right:4px;
vertical-align:-1px;border:1px solid #999}}
.card{{margin:18px 0}} .card h3{{font-size:14px;margin:4px 0}} .card img{{max-width:100%;border:1px solid #ddd}}
.warn{{color:#b00}} .look{{background:#fff4e5;padding:8px 12px;border-radius:6px}}
</style></head><body>
<h1>Audit: {escape(model["name"])} against the labels</h1>
<p class="sub">{subtitle}</p>
<div class="kpi"><div>mean Dice<b id="mean-dice">{_fmt(figures["mean_dice"])}</b></div>
<div>mean IoU<b id="mean-iou">{_fmt(figures["mean_iou"])}</b></div>
<div>pixel accuracy<b id="pixel-accuracy">{_fmt(figures["pixel_accuracy"])}</b></div>
<div>images audited<b>{sel.num_images}</b></div></div>
<p class="look">Look first at the classes {escape(", ".join(look)) or "n/a"} (lowest Dice) and at the images
below (lowest per-image Dice). Means are over classes present in label or prediction, background left out; all
figures come from pixel counts summed over the audited images.</p>
<div class="charts">
<img src="{REPORT_DIR}/dice_iou.svg" alt="per-class Dice and IoU">
<img src="{REPORT_DIR}/confusion.svg" alt="confusion matrix">
<img src="{REPORT_DIR}/dice_hist.svg" alt="per-image Dice histogram">
</div>
<h2>Per class</h2>
<table><tr><th>class</th><th>Dice</th><th>IoU</th><th>label px</th><th>predicted px</th><th>overlap px</th></tr>
{rows}</table>
{coco_html}
<h2>Where model and labels disagree most</h2>
<p class="sub">image · label · prediction · disagreement (red: label ≠ prediction); colours as in the legend.</p>
{"".join(cards) or "<p>no labeled image with a Dice to rank</p>"}
</body></html>
"""
