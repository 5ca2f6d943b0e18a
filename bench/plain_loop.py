"""The plain loop a user would write: the seed's single-process snippet, as a function and as a script.

:func:`plain_loop` is the loop itself (PIL decode, torchvision's ``weights.transforms()``, forward,
bilinear logits to the original size + argmax, pycocotools RLE, one COCO-style JSON), timed from
its first image in a process that already has the model: ``bench/throughput.py``'s warm pass.

Run as a script it is the whole program a user runs — imports, the model built and its weights
loaded (``weights_only=True``), the loop, the JSON written — so that ``bench/throughput.py`` can
time it from process start to exit, as it times ``segbatch run``::

    .venv/bin/python bench/plain_loop.py --model lraspp_mobilenet_v3_large --weights ckpt.pth \
        --images DIR --out plain.json [--min-size 320]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.models import get_model_builder, get_model_weights
from torchvision.transforms.functional import pil_to_tensor

INSTANCE = {"maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"}
CPU = torch.device("cpu")


def plain_loop(name: str, model: torch.nn.Module, paths: list[Path], out: Path, device: torch.device = CPU) -> float:
    """img/s of the seed's snippet, single process, default torch threads; on a GPU the
    model, the resampling and the argmax run there (as the snippet with ``.to("cuda")``)."""
    weights = get_model_weights(name).DEFAULT
    transform = weights.transforms()
    images, annotations = [], []
    t0 = time.perf_counter()
    for image_id, path in enumerate(paths, start=1):
        img = Image.open(path).convert("RGB")
        x = transform(pil_to_tensor(img)).to(device)
        with torch.inference_mode():
            if name in INSTANCE:
                o = model([x])[0]
                keep = o["scores"] >= 0.5
                masks = (o["masks"][keep, 0] > 0.5).to(torch.uint8).cpu().numpy()
                found = list(zip(masks, o["labels"][keep].tolist(), o["scores"][keep].tolist(), strict=True))
            else:
                logits = model(x[None])["out"]
                up = F.interpolate(logits, size=(img.height, img.width), mode="bilinear", align_corners=False)
                pred = up.argmax(1)[0].to(torch.uint8).cpu().numpy()
                found = [((pred == c).astype(np.uint8), int(c), 1.0) for c in np.unique(pred) if c != 0]
        images.append({"id": image_id, "file_name": path.name, "width": img.width, "height": img.height})
        for m, c, s in found:
            rle = mask_utils.encode(np.asfortranarray(m))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": c,
                    "score": s,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": int(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 1,
                }
            )
    with open(out, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": []}, f)
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="torchvision model name")
    p.add_argument("--weights", required=True, type=Path, help="a state_dict file (torch.save(model.state_dict()))")
    p.add_argument("--images", required=True, type=Path, help="a folder of JPEGs (*.jpg, sorted by name)")
    p.add_argument("--out", required=True, type=Path, help="the COCO-style JSON to write")
    p.add_argument("--min-size", type=int, default=320, help="Mask R-CNN's shorter side (default 320)")
    args = p.parse_args()
    kwargs = {"min_size": args.min_size} if args.model in INSTANCE else {}
    model = get_model_builder(args.model)(weights=None, weights_backbone=None, **kwargs)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    rate = plain_loop(args.model, model.eval(), sorted(args.images.glob("*.jpg")), args.out)
    print(f"plain loop {rate:.2f} img/s (from its first image)")


if __name__ == "__main__":
    main()
