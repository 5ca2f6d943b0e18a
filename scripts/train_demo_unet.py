"""Train the bundled demo U-Net on generated shapes and write segbatch/data/unet_shapes.pt.

    python scripts/train_demo_unet.py [--steps 900] [--out segbatch/data/unet_shapes.pt]

Takes a few minutes on 2 CPU cores. Training data come from :mod:`segbatch.sample` with a
seed that differs from the bundled sample dataset's, so the demo's Dice is measured on
images the model never saw. Seeded; exact weights may differ between torch builds and thread counts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from segbatch.models.unet import DEMO_CATEGORIES, DEMO_KWARGS, DEMO_PREPROCESS, UNet
from segbatch.models.weights import save_checkpoint
from segbatch.sample import IGNORE, render_sample

TRAIN_SEED = 12345
SIZES = ((128, 128), (120, 160), (150, 200), (160, 120), (128, 171), (200, 150))
CROP = 96


def make_batch(rng: np.random.Generator, batch_size: int, crop: int = CROP) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``crop``² crops of generated images, preprocessed exactly as segbatch does at inference.

    Returns ``(N, 3, crop, crop) float32`` inputs and ``(N, crop, crop) int64`` targets.
    """
    images, labels = [], []
    for _ in range(batch_size):
        h, w = SIZES[int(rng.integers(len(SIZES)))]
        image, label = render_sample(rng, h, w)
        chw = torch.from_numpy(DEMO_PREPROCESS.resize_chw(image))
        lab = torch.from_numpy(label)[None, None].float()
        lab = F.interpolate(lab, size=chw.shape[-2:], mode="nearest")[0, 0].long()
        y0 = int(rng.integers(0, chw.shape[1] - crop + 1))
        x0 = int(rng.integers(0, chw.shape[2] - crop + 1))
        images.append(chw[:, y0 : y0 + crop, x0 : x0 + crop])
        labels.append(lab[y0 : y0 + crop, x0 : x0 + crop])
    x = DEMO_PREPROCESS.normalize(torch.stack(images))
    return x, torch.stack(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="segbatch/data/unet_shapes.pt")
    args = parser.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(TRAIN_SEED)
    model = UNet(**DEMO_KWARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps, pct_start=0.15)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = make_batch(rng, args.batch_size)
        loss = F.cross_entropy(model(x)["out"], y, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    sha = save_checkpoint(args.out, "unet", model, DEMO_CATEGORIES, DEMO_PREPROCESS, DEMO_KWARGS)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out} ({n_params} parameters, sha256 {sha[:12]}…)")


if __name__ == "__main__":
    main()
