"""Agreement of segbatch's class maps with torchvision's reference inference, per device,
precision and layout — the figure an option that changes numbers must state.

The reference is the seed's recipe in float32 on the CPU: torchvision's preset transforms,
``model(x)["out"]``, bilinear to the original size, argmax. segbatch's side is its
:class:`~segbatch.stages.predict.Predictor` on the same images (segbatch's read stage: decode,
resize), one configuration at a time. Models and images as ``bench/throughput.py`` makes
them (seeded, BatchNorm calibrated, head fitted on generated labels). Run::

    .venv/bin/python bench/agreement.py [--n 32] [--models lraspp_mobilenet_v3_large] [--device cuda]

One line per configuration: pixels that agree, and the reference's largest top-2 logit gap
among the pixels that differ (a gap near float32 rounding means a near-tie, not an error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models import get_model_weights
from torchvision.transforms.functional import pil_to_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import add_workdir_arg, scratch_dir
from throughput import bench_model, write_images


def reference(name: str, model: torch.nn.Module, paths: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: the class map ``(H, W) int64`` and top-2 gap ``(H, W) float32``, CPU float32."""
    transform = get_model_weights(name).DEFAULT.transforms()
    out = []
    with torch.inference_mode():
        for p in paths:
            img = Image.open(p).convert("RGB")
            logits = model(transform(pil_to_tensor(img))[None])["out"]
            up = F.interpolate(logits, size=(img.height, img.width), mode="bilinear", align_corners=False)[0]
            top = up.topk(2, dim=0).values
            out.append((up.argmax(0).numpy(), (top[0] - top[1]).numpy()))
    return out


def segbatch_maps(
    name: str, ckpt: Path, paths: list[Path], device: str, precision: str, channels_last: bool, batch: int
) -> tuple[list[np.ndarray], bool]:
    """segbatch's class maps ``(H, W) uint8``, and whether channels-last applied there."""
    from segbatch.models.registry import ModelOptions, get_model_spec
    from segbatch.models.weights import resolve_weights
    from segbatch.stages.predict import Predictor
    from segbatch.stages.read import read_batch

    pred = Predictor(
        name,
        resolve_weights(get_model_spec(name), str(ckpt)),
        ModelOptions(),
        precision=precision,
        channels_last=channels_last,
        device=device,
    )
    maps: list[np.ndarray] = []
    for i in range(0, len(paths), batch):
        uris = np.array([str(p) for p in paths[i : i + batch]], dtype=object)
        rows = read_batch({"uri": uris}, pred.preprocess)
        out = pred(rows)
        assert all(s == "ok" for s in out["status"]), out["error"]
        maps.extend(out["label_map"])
    return maps, pred.channels_last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--models", default="lraspp_mobilenet_v3_large,deeplabv3_mobilenet_v3_large")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8)
    add_workdir_arg(p)
    args = p.parse_args()
    with scratch_dir("sb-agree-", args.workdir) as work:
        paths, labels = write_images(work, args.n, 640, 480)
        configs = [("cpu", "fp32", False), ("cpu", "fp32", True)]
        if args.device == "cuda":  # (channels-last does not apply in fp32 there: see use_channels_last)
            configs += [("cuda", "fp32", False)] + [
                ("cuda", prec, cl) for prec in ("bf16", "fp16") for cl in (False, True)
            ]
        for name in args.models.split(","):
            model = bench_model(name, paths, labels, min_size=320)
            ckpt = work / f"{name}.pth"
            torch.save(model.state_dict(), ckpt)
            ref = reference(name, model, paths)
            for device, precision, cl in configs:
                maps, cl = segbatch_maps(name, ckpt, paths, device, precision, cl, args.batch_size)
                same = total = 0
                worst_gap = 0.0
                for m, (r, gap) in zip(maps, ref, strict=True):
                    diff = m.astype(np.int64) != r
                    same += int((~diff).sum())
                    total += diff.size
                    if diff.any():
                        worst_gap = max(worst_gap, float(gap[diff].max()))
                print(
                    f"{name} device={device} precision={precision} layout={'channels_last' if cl else 'nchw'} "
                    f"agreement={same / total:.7f} differing_pixels={total - same} of {total} "
                    f"max_ref_top2_gap_where_differing={worst_gap:.2e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
