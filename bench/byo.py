"""Bring your own model: segbatch on a Hugging Face SegFormer against transformers' own loop.

One invocation, the same generated JPEGs and the same model folder for both:

1. transformers: the recipe its model cards show, in one process — Pillow decode, the
   model's image processor, the model, ``post_process_semantic_segmentation`` at the original
   size, then per class a pycocotools RLE into one COCO JSON (as the plain loop of
   ``bench/throughput.py``); images in batches of ``--hf-batch`` (default 8, faster here than 1);
2. segbatch: ``segbatch run --model hf:FOLDER`` as a user runs it (no layout flags, its own
   local Ray cluster; start-up, finalize and writing all outputs included).

The model is the SegFormer-B0 architecture (transformers' default ``SegformerConfig``) with
seeded weights — nothing can be downloaded here —, its classifier fitted by least squares to
the generated labels so that its maps have regions and boundaries as a trained model's do.
Run::

    .venv/bin/python bench/byo.py [--n 256] [--size 512]

It ends with ``byo hf:segformer-b0 transformers=… segbatch=… img/s ratio=…`` and the pixel
agreement of the two outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from scratch import add_workdir_arg, scratch_dir
from throughput import FIT_IMAGES, write_images

CLASSES = ["background", "circle", "square", "triangle"]


def build_segformer(folder: Path, paths: list[Path], labels: list[np.ndarray], size: int) -> None:
    """Seeded SegFormer-B0 with a fitted classifier, saved as ``save_pretrained`` writes it."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)}
    )
    model = SegformerForSemanticSegmentation(config).eval()
    processor = SegformerImageProcessor(size={"height": size, "width": size})
    feats: list[torch.Tensor] = []
    hook = model.decode_head.classifier.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    with torch.inference_mode():
        for p in paths[:FIT_IMAGES]:
            model(**processor(images=Image.open(p).convert("RGB"), return_tensors="pt"))
    hook.remove()
    x = torch.cat(feats)  # (n, 256, size/4, size/4), the fused decoder features
    h, w = x.shape[-2:]
    ys = []
    for lab in labels[:FIT_IMAGES]:
        t = torch.from_numpy(lab.astype(np.int64))[None, None].float()
        ys.append(F.interpolate(t, size=(h, w), mode="nearest")[0, 0].long())
    y = torch.stack(ys).flatten()
    a = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    keep = y < len(CLASSES)  # 255: the boundary band, no class
    a1 = torch.cat([a[keep], torch.ones(int(keep.sum()), 1)], dim=1)
    target = F.one_hot(y[keep], len(CLASSES)).float() * 8.0 - 4.0
    sol = torch.linalg.lstsq(a1, target).solution  # (257, K)
    with torch.no_grad():
        model.decode_head.classifier.weight.copy_(sol[:-1].T[:, :, None, None])
        model.decode_head.classifier.bias.copy_(sol[-1])
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def transformers_loop(folder: Path, paths: list[Path], out: Path, batch: int) -> tuple[float, dict[str, np.ndarray]]:
    """img/s of processor → model → post-process → RLE → JSON, and the class maps by file name."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    t0 = time.perf_counter()
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    images, annotations, maps = [], [], {}
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        pil = [Image.open(p).convert("RGB") for p in chunk]
        with torch.inference_mode():
            outputs = model(**processor(images=pil, return_tensors="pt"))
            sizes = [(i.height, i.width) for i in pil]
            preds = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        for p, img, pred in zip(chunk, pil, preds, strict=True):
            image_id = len(images) + 1
            m = pred.to(torch.uint8).numpy()
            maps[p.name] = m
            images.append({"id": image_id, "file_name": p.name, "width": img.width, "height": img.height})
            for c in np.unique(m):
                if c == 0:
                    continue
                rle = mask_utils.encode(np.asfortranarray((m == c).astype(np.uint8)))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(c),
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "area": int(mask_utils.area(rle)),
                        "iscrowd": 1,
                    }
                )
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return len(paths) / (time.perf_counter() - t0), maps


def segbatch_cli(folder: Path, images: Path, out: Path) -> tuple[float, dict[str, object]]:
    """img/s of ``segbatch run --model hf:FOLDER`` from process start to exit, and its job.json."""
    ray_tmp = tempfile.mkdtemp(prefix="sbr-", dir="/tmp")
    cmd = [str(Path(sys.executable).parent / "segbatch"), "run", "--input", str(images), "--output", str(out),
           "--model", f"hf:{folder}", "--no-report"]  # fmt: skip
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    finally:
        elapsed = time.perf_counter() - t0
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"segbatch run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    job = json.loads((out / "job.json").read_text())
    n = len(list(images.iterdir()))
    return n / elapsed, job


def agreement(out: Path, maps: dict[str, np.ndarray]) -> float:
    """Share of pixels where segbatch's masks give the same class as transformers' maps."""
    coco = json.loads((out / "predictions.coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    same = total = 0
    by_image: dict[int, list[dict[str, object]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for img in coco["images"]:
        ref = maps[Path(img["file_name"]).name]
        pred = np.zeros_like(ref)
        for a in by_image.get(img["id"], []):
            pred[mask_utils.decode(a["segmentation"]).astype(bool)] = CLASSES.index(names[a["category_id"]])
        same += int((pred == ref).sum())
        total += ref.size
    return same / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="images (default 256)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--size", type=int, default=512, help="the processor's input size (default 512, as ADE models)")
    p.add_argument("--hf-batch", type=int, default=8, help="images per forward in the transformers loop")
    add_workdir_arg(p)
    args = p.parse_args()
    with scratch_dir("sb-byo-", args.workdir) as work:
        paths, labels = write_images(work / "data", args.n, args.width, args.height)
        folder = work / "segformer-b0"
        build_segformer(folder, paths, labels, args.size)
        print(
            f"{args.n} JPEGs {args.width}x{args.height}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"SegFormer-B0 at {args.size}x{args.size}",
            flush=True,
        )
        hf, maps = transformers_loop(folder, paths, work / "hf.coco.json", args.hf_batch)
        print(f"  transformers loop (batch {args.hf_batch}): {hf:.2f} img/s", flush=True)
        sb, job = segbatch_cli(folder, work / "data" / "images", work / "run")
        layout = job.get("layout", {})
        print(f"  segbatch run: {sb:.2f} img/s end to end (layout {layout}, timings {job.get('timings')})", flush=True)
        agree = agreement(work / "run", maps)
        print(
            f"byo hf:segformer-b0 transformers={hf:.2f} segbatch={sb:.2f} img/s "
            f"ratio={sb / hf:.2f} agreement={agree:.6f}"
        )


if __name__ == "__main__":
    main()
