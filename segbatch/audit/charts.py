"""Static SVG charts for report.html: horizontal bars, a heatmap, a histogram.

Plain SVG strings, no JavaScript: the report opens from disk or a bucket and every
picture is a file that any browser renders. Hovering a mark shows its exact value
(an SVG ``<title>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

_FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _svg(width: float, height: float, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" {_FONT}>\n<rect width="100%" height="100%" fill="white"/>\n'
        + "\n".join(body)
        + "\n</svg>\n"
    )


def grouped_bars(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    muted: Sequence[bool] | None = None,
    title: str = "",
) -> str:
    """Horizontal bars in [0, 1], one row per label, one bar per series ``(name, colour, values)``.

    ``muted`` rows (e.g. background) are drawn grey; a None value is written "n/a".
    """
    muted = list(muted or [False] * len(labels))
    label_w = 8 + 7 * max([len(s) for s in labels] + [6])
    bar_w, bar_h = 360, 11
    row_h = bar_h * len(series) + 8
    top = 40
    height = top + row_h * len(labels) + 30
    width = label_w + bar_w + 70
    body = [f'<text x="8" y="18" font-weight="bold">{escape(title)}</text>']
    x = label_w
    for k, (name, colour, _) in enumerate(series):
        body.append(
            f'<rect x="{x + 120 * k}" y="26" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 120 * k + 14}" y="35">{escape(name)}</text>'
        )
    for i, label in enumerate(labels):
        y = top + i * row_h
        grey = muted[i]
        label_fill = "#888" if grey else "#222"
        body.append(
            f'<text x="{label_w - 6}" y="{y + row_h / 2 + 2:.1f}" text-anchor="end" '
            f'fill="{label_fill}">{escape(label)}</text>'
        )
        for k, (name, colour, values) in enumerate(series):
            v = values[i]
            yb = y + k * bar_h + 2
            if v is None:
                body.append(f'<text x="{x + 4}" y="{yb + bar_h - 2}" fill="#888">n/a</text>')
                continue
            w = max(0.0, min(1.0, float(v))) * bar_w
            fill = "#bbbbbb" if grey else colour
            body.append(
                f'<rect x="{x}" y="{yb}" width="{w:.1f}" height="{bar_h - 1}" fill="{fill}">'
                f"<title>{escape(label)} {escape(name)} {v:.4f}</title></rect>"
                f'<text x="{x + w + 4:.1f}" y="{yb + bar_h - 2}">{v:.3f}</text>'
            )
    axis_y = top + row_h * len(labels) + 4
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        tx = x + t * bar_w
        body.append(
            f'<line x1="{tx:.1f}" y1="{top - 2}" x2="{tx:.1f}" y2="{axis_y}" stroke="#ddd"/>'
            f'<text x="{tx:.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#555">{t:g}</text>'
        )
    return _svg(width, height, body)


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str = "") -> str:
    """Confusion heatmap: ``(K, K)`` counts, rows label, columns prediction, shaded by row share."""
    k = len(labels)
    cell = max(18, min(44, 520 // max(k, 1)))
    label_w = 8 + 7 * max([len(s) for s in labels] + [6])
    top = 44 + label_w  # room for rotated column labels
    width = max(label_w + cell * k + 20, 460)  # room for the subtitle
    height = top + cell * k + 40
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, counts / np.maximum(rows, 1), 0.0)
    body = [
        f'<text x="8" y="18" font-weight="bold">{escape(title)}</text>',
        '<text x="8" y="34" fill="#555">rows: label, columns: prediction; shade = share of the label row</text>',
    ]
    for j, lab in enumerate(labels):
        cx = label_w + j * cell + cell / 2
        body.append(f'<text transform="translate({cx + 4:.1f},{top - 6}) rotate(-60)">{escape(lab)}</text>')
    for i, lab in enumerate(labels):
        y = top + i * cell
        body.append(f'<text x="{label_w - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end">{escape(lab)}</text>')
        for j in range(k):
            s = float(share[i, j])
            # White → dark blue; the diagonal in green so agreement reads apart from confusion.
            if i == j:
                r, g, b = int(255 - 200 * s), int(255 - 90 * s), int(255 - 200 * s)
            else:
                r, g, b = int(255 - 215 * s), int(255 - 175 * s), int(255 - 60 * s)
            text_fill = "white" if s > 0.55 else "#222"
            body.append(
                f'<rect x="{label_w + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="rgb({r},{g},{b})"><title>label {escape(lab)} → predicted {escape(labels[j])}: '
                f"{int(counts[i, j])} px ({s:.1%} of the label)</title></rect>"
            )
            if cell >= 30 and s >= 0.005:
                body.append(
                    f'<text x="{label_w + j * cell + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" '
                    f'text-anchor="middle" font-size="10" fill="{text_fill}">{s * 100:.0f}</text>'
                )
    return _svg(width, height, body)


def histogram(values: Sequence[float], bins: int = 20, title: str = "", xlabel: str = "") -> str:
    """Histogram of values in [0, 1] with ``bins`` equal bins."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    plot_w, plot_h, left, top = 440, 180, 50, 34
    peak = max(int(counts.max()) if counts.size else 0, 1)
    body = [f'<text x="8" y="18" font-weight="bold">{escape(title)}</text>']
    bw = plot_w / bins
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        body.append(
            f'<rect x="{left + i * bw + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" '
            f'height="{h:.1f}" fill="#4c78a8"><title>{edges[i]:.2f}–{edges[i + 1]:.2f}: {int(c)} images'
            f"</title></rect>"
        )
    base = top + plot_h
    body.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#555"/>')
    body.extend(
        f'<text x="{left + t * plot_w:.1f}" y="{base + 14}" text-anchor="middle" fill="#555">{t:g}</text>'
        for t in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    body.append(
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end" fill="#555">{peak}</text>'
        f'<text x="{left - 6}" y="{base}" text-anchor="end" fill="#555">0</text>'
        f'<text x="{left + plot_w / 2:.1f}" y="{base + 30}" text-anchor="middle">{escape(xlabel)}</text>'
    )
    return _svg(left + plot_w + 20, base + 40, body)
