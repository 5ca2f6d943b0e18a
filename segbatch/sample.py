"""Generated sample data: textured images of circles, squares and triangles with exact masks.

Used for the bundled demo dataset, for training the demo U-Net, and by tests and
benchmarks. Labels are VOC-style palette PNGs: class ids 0..3 (see
:data:`segbatch.models.unet.DEMO_CATEGORIES`) with a 255 "ignore" band along object
boundaries, as in PASCAL VOC.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("background", "circle", "square", "triangle")
IGNORE = 255


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triplets, flattened), index 255 white."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    palette[255 * 3 : 256 * 3] = [255, 255, 255]
    return palette


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour gradient with low-frequency blotches and mild noise, float (H, W, 3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-60, 60, size=(2, 3))
    img = base + (yy[..., None] / h) * slope[0] + (xx[..., None] / w) * slope[1]
    for _ in range(3):  # soft blotches, so that colour alone does not give shapes away
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.4) * max(h, w)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None] * rng.uniform(-50, 50, size=3)
    return img + rng.normal(0, 3, size=img.shape)


def render_sample(
    rng: np.random.Generator, height: int, width: int, max_shapes: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its label.

    Each class has its own surface, as real objects do: circles are shaded like spheres,
    squares are striped, triangles are speckled; the background is smooth.

    Returns:
        image ``(H, W, 3) uint8`` RGB and label ``(H, W) uint8`` with class ids and 255 on boundaries.
    """
    img = _background(rng, height, width)
    label = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(1, len(CLASSES)))
        size = rng.uniform(0.1, 0.25) * min(height, width)
        cy, cx = rng.uniform(size, height - size), rng.uniform(size, width - size)
        angle = rng.uniform(0, 2 * np.pi)
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        colour = rng.uniform(30, 225, size=3)
        if cls == 1:
            draw.ellipse([cx - size, cy - size, cx + size, cy + size], fill=1)
            r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / size
            surface = colour * (1.25 - 0.6 * np.clip(r, 0, 1) ** 2)[..., None]
        elif cls == 2:
            corners = [
                (cx + 1.2 * size * np.cos(angle + k * np.pi / 2), cy + 1.2 * size * np.sin(angle + k * np.pi / 2))
                for k in range(4)
            ]
            draw.polygon(corners, fill=1)
            stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / 6.0)
            surface = colour + 35.0 * stripes[..., None]
        else:
            corners = [
                (
                    cx + 1.3 * size * np.cos(angle + k * 2 * np.pi / 3),
                    cy + 1.3 * size * np.sin(angle + k * 2 * np.pi / 3),
                )
                for k in range(3)
            ]
            draw.polygon(corners, fill=1)
            surface = colour + rng.normal(0, 30, size=(height, width, 1))
        inside = np.asarray(canvas, dtype=bool)
        img[inside] = surface[inside]
        label[inside] = cls
    boundary = np.zeros_like(label, dtype=bool)
    boundary[:-1, :] |= label[:-1, :] != label[1:, :]
    boundary[1:, :] |= label[1:, :] != label[:-1, :]
    boundary[:, :-1] |= label[:, :-1] != label[:, 1:]
    boundary[:, 1:] |= label[:, 1:] != label[:, :-1]
    label[boundary] = IGNORE
    return np.clip(img, 0, 255).astype(np.uint8), label


def save_label_png(label: np.ndarray, path: str) -> None:
    """Write a ``(H, W) uint8`` label as a VOC palette PNG."""
    png = Image.fromarray(label, mode="P")
    png.putpalette(voc_palette())
    png.save(path)


def write_sample_dataset(
    out_dir: str,
    n: int,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = ((128, 128), (120, 160), (150, 200), (160, 120)),
    image_format: str = "jpg",
) -> list[str]:
    """Write ``n`` images to ``out_dir/images`` and labels to ``out_dir/masks``; returns file stems.

    ``sizes`` are ``(height, width)``, used in turn.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    stems = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image, label = render_sample(rng, h, w)
        stem = f"shapes_{i:04d}"
        path = os.path.join(out_dir, "images", f"{stem}.{image_format}")
        if image_format in ("jpg", "jpeg"):
            Image.fromarray(image).save(path, quality=92)
        else:
            Image.fromarray(image).save(path)
        save_label_png(label, os.path.join(out_dir, "masks", f"{stem}.png"))
        stems.append(stem)
    return stems
