"""Picture of one image for the audit: image | label | prediction | disagreement.

All panels share one scale; class maps are coloured by evaluation class with the VOC
colour map (class 0 black, as in VOC masks), blended over the image so that the scene
stays readable. Disagreement marks label≠prediction pixels red over a grey image;
ignored label pixels are left grey.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from segbatch.metrics import IGNORE
from segbatch.sample import voc_palette

PANEL_HEIGHT = 220
_GAP = 6
_CAPTION = 18


def class_colours(num_classes: int) -> np.ndarray:
    """``(K, 3) uint8`` colour of each evaluation class (VOC colour map)."""
    pal = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return pal[np.arange(num_classes) % 255]


def _blend(rgb: np.ndarray, classes: np.ndarray, colours: np.ndarray, background: int | None) -> np.ndarray:
    out = rgb.astype(np.float32) * 0.45
    valid = classes != IGNORE
    fg = valid & (classes != background) if background is not None else valid
    col = colours[np.clip(classes, 0, len(colours) - 1)].astype(np.float32)
    out[fg] = 0.35 * rgb[fg] + 0.65 * col[fg]
    return out.astype(np.uint8)


def panels_png(
    rgb: np.ndarray, label: np.ndarray, pred: np.ndarray, colours: np.ndarray, background: int | None
) -> bytes:
    """PNG bytes of the four panels side by side.

    Args:
        rgb: ``(H, W, 3) uint8`` image.
        label: ``(H, W) int32`` evaluation class ids, :data:`IGNORE` where ignored.
        pred: ``(H, W) int32`` evaluation class ids.
        colours: ``(K, 3) uint8`` from :func:`class_colours`.
        background: evaluation id of background (drawn as the plain, darkened image).
    """
    h, w = label.shape
    scale = min(4.0, PANEL_HEIGHT / h)  # small images are enlarged (nearest) to be seen
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    wrong = (label != pred) & (label != IGNORE)
    disagree = (grey * 0.6).astype(np.uint8)
    disagree[wrong] = (255, 40, 40)
    pictures = [
        ("image", rgb),
        ("label", _blend(rgb, label, colours, background)),
        ("prediction", _blend(rgb, pred, colours, background)),
        (f"disagreement ({wrong.mean():.1%})", disagree),
    ]
    canvas = Image.new("RGB", (4 * size[0] + 3 * _GAP, size[1] + _CAPTION), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (caption, arr) in enumerate(pictures):
        # Nearest keeps class boundaries crisp (no blended, non-existent colours).
        panel = Image.fromarray(arr).resize(size, Image.Resampling.NEAREST if k else Image.Resampling.BILINEAR)
        x = k * (size[0] + _GAP)
        canvas.paste(panel, (x, _CAPTION))
        draw.text((x + 2, 3), caption, fill=(30, 30, 30))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
