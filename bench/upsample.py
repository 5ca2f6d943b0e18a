"""Time of the class map at full size: full bilinear upsample + argmax vs :func:`upsampled_argmax`.

Same logits for both, in a real LRASPP-MobileNetV3 output shape (21 classes at 65×87 for a
640×480 photo resized to 520 px), measured side by side for two scenes: ``photo`` (3 classes in
a few large regions, as on VOC/COCO photos) and ``busy`` (regions a few logit pixels wide, so a
third of the cells sit on a boundary: the shortcut's worst case)::

    .venv/bin/python bench/upsample.py [--threads 1] [--repeat 50]

Ends with one line per scene: ``upsample_argmax scene=… undecided=… full_ms=… fast_ms=… speedup=… agree=…``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from segbatch.upsample import upsampled_argmax


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--classes", type=int, default=21)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for scene, grid, active, noise in (("photo", (3, 4), 3, 0.05), ("busy", (9, 11), args.classes, 0.3)):
        g = torch.Generator().manual_seed(0)
        coarse = torch.randn(1, args.classes, *grid, generator=g) * 6
        coarse[:, active:] -= 20  # classes absent from the scene
        logits = F.interpolate(coarse, size=(65, 87), mode="bilinear", align_corners=False)[0]
        logits += noise * torch.randn(logits.shape, generator=g)
        measure(scene, logits, (480, 640), args.repeat)


def measure(scene: str, logits: torch.Tensor, size: tuple[int, int], repeat: int) -> None:
    def full() -> torch.Tensor:
        up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)
        return up.argmax(dim=1)[0].to(torch.uint8)

    def fast() -> torch.Tensor:
        return upsampled_argmax(logits, size)

    times: dict[str, float] = {}
    for name, fn in (("full", full), ("fast", fast), ("full", full), ("fast", fast)):  # interleaved, warm
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        times[name] = min(times.get(name, float("inf")), (time.perf_counter() - t0) / repeat * 1000)
    reference = full()
    agree = (reference == fast()).float().mean().item()
    # Output pixels whose 4 source neighbours do not share one class (interpolated in full).
    low = logits.argmax(0)
    pad = F.pad(low[None, None].float(), (0, 1, 0, 1), mode="replicate")[0, 0]
    corner = pad[:-1, :-1]
    cells = ((corner != pad[1:, :-1]) | (corner != pad[:-1, 1:]) | (corner != pad[1:, 1:])).float().mean().item()
    print(f"upsample_argmax scene={scene} undecided_cells={cells:.3f} full_ms={times['full']:.2f} "
          f"fast_ms={times['fast']:.2f} speedup={times['full'] / times['fast']:.1f} agree={agree:.6f}")


if __name__ == "__main__":
    main()
