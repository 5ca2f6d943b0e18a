"""Time of the class map at full size: the reference (bilinear to the model's input size,
as the model's forward does, bilinear to the photo's size, argmax) vs :func:`upsampled_argmax`.

Same logits for both, in LRASPP-MobileNetV3's real shapes: 21 classes at 65×87 (1/8 of a
640×480 photo resized to 520×693), back to 480×640. Scenes, side by side: ``photo`` (3 classes
in a few large regions, as on VOC/COCO photos), ``busy4`` (4 classes in regions a few logit
pixels wide, as the throughput bench's fitted heads make), ``busy`` (every class in such
regions) and ``noise`` (every pixel a boundary: what a random, untrained model gives). Beside
the shortcut (``fast``), the same with every class kept (``all_classes``: the shortcut before
it kept only the classes that can win, :func:`~segbatch.stages.classmap.contenders`)::

    .venv/bin/python bench/upsample.py [--threads 1] [--repeat 20]

Ends with one line per scene: ``upsample_argmax scene=… kept=… undecided=… reference_ms=…
all_classes_ms=… fast_ms=… speedup=… agree=…``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from segbatch.stages import classmap
from segbatch.stages.classmap import contenders, undecided_fraction, upsampled_argmax

LOW, VIA, SIZE = (65, 87), (520, 693), (480, 640)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--classes", type=int, default=21)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    for scene, grid, active, noise in (
        ("photo", (3, 4), 3, 0.05),
        ("busy4", (9, 11), 4, 0.3),
        ("busy", (9, 11), args.classes, 0.3),
        ("noise", LOW, args.classes, 0.0),
    ):
        coarse = torch.randn(1, args.classes, *grid, generator=g) * 6
        coarse[:, active:] -= 20  # classes absent from the scene
        logits = F.interpolate(coarse, size=LOW, mode="bilinear", align_corners=False)[0]
        logits += noise * torch.randn(logits.shape, generator=g)
        measure(scene, logits, args.repeat)


def measure(scene: str, logits: torch.Tensor, repeat: int) -> None:
    def reference() -> torch.Tensor:
        mid = F.interpolate(logits[None], size=VIA, mode="bilinear", align_corners=False)  # inside the model
        up = F.interpolate(mid, size=SIZE, mode="bilinear", align_corners=False)
        return up.argmax(dim=1)[0].to(torch.uint8)

    def fast() -> torch.Tensor:
        return upsampled_argmax(logits, SIZE, via=VIA)

    def all_classes() -> torch.Tensor:
        supports = classmap._supports(logits, VIA, SIZE)
        return classmap._class_map(logits, SIZE, VIA, classmap.MARGIN, supports)

    times: dict[str, float] = {}
    for name, fn in (("reference", reference), ("all_classes", all_classes), ("fast", fast)) * 2:  # interleaved
        fn()
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        times[name] = min(times.get(name, float("inf")), (time.perf_counter() - t0) / repeat * 1000)
    agree = (reference() == fast()).float().mean().item()
    print(
        f"upsample_argmax scene={scene} kept={len(contenders(logits, SIZE, VIA))}/{len(logits)} "
        f"undecided={undecided_fraction(logits, SIZE, VIA):.3f} reference_ms={times['reference']:.2f} "
        f"all_classes_ms={times['all_classes']:.2f} fast_ms={times['fast']:.2f} "
        f"speedup={times['reference'] / times['fast']:.1f} agree={agree:.6f}"
    )


if __name__ == "__main__":
    main()
