"""Large images, tiled: peak memory of the model actor's work at two image sizes, and throughput
against a plain sliding-window loop.

For each ``--sizes`` (megapixels; default 25 and 400, as issue 19 asks) a square RGB BigTIFF is
generated tile by tile (uncompressed, 512×512 tiles: read by region). Each measurement runs in a
fresh process (its ``VmHWM`` is its peak resident set): what a model actor runs for a tiled
image — :func:`segbatch.stages.read.read_batch` (header only) then
:class:`segbatch.stages.predict.Predictor` with :class:`segbatch.stages.tiled.TiledRead` —
with LRASPP (``--weights none``), ``--tile`` 1024, ``--overlap`` 256, on one torch thread.
The plain loop (MMSegmentation's ``slide_inference`` as written: the whole image decoded, one
full-size ``(C, H, W)`` float32 sum and a count map, each window's logits upsampled and added,
argmax) runs on the smaller size only (or ``--throughput-mp``) — at 400 MP its sums alone would be
34 GB — alternated with segbatch's path, best of ``--repeats`` each::

    .venv/bin/python bench/large_image.py [--sizes 25,400] [--tile 1024] [--overlap 256] \
        [--mode memory|throughput|both] [--throughput-mp MP] [--repeats 2]

Ends with ``large_image_peak_rss_mb <a>MP=… <b>MP=… ratio=…`` and
``large_image_mp_per_s <MP>MP segbatch=… plain=… ratio=…``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scratch import add_workdir_arg, scratch_dir

REPO = Path(__file__).resolve().parents[1]
MODEL = "lraspp_mobilenet_v3_large"
TIFF_TILE = 512


def _tiles(side: int) -> Iterator[np.ndarray]:
    """The image's TIFF tiles, row-major: smooth colour fields and rings, different in every tile."""
    yy, xx = np.mgrid[0:TIFF_TILE, 0:TIFF_TILE].astype(np.float32)
    for ty in range(0, side, TIFF_TILE):
        for tx in range(0, side, TIFF_TILE):
            y, x = yy + ty, xx + tx
            ring = (np.sin(np.hypot(y - side / 3, x - side / 2) / 37.0) > 0).astype(np.float32)
            r = 127 + 100 * np.sin(x / 211.0) * ring
            g = 127 + 100 * np.cos(y / 173.0)
            b = 127 + 100 * np.sin((x + y) / 97.0) * (1 - ring)
            yield np.stack([r, g, b], axis=-1).astype(np.uint8)


def make_image(path: Path, megapixels: float) -> int:
    """A square ``megapixels`` BigTIFF at ``path``; returns its side."""
    import tifffile

    side = int(math.sqrt(megapixels * 1e6))
    if not path.exists():
        tifffile.imwrite(path, _tiles(side), shape=(side, side, 3), dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE),
                         photometric="rgb", bigtiff=True)  # fmt: skip
    return side


def _peak_mb() -> tuple[float, float]:
    """(VmHWM, VmRSS) of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def child_segbatch(path: str, tile: int, overlap: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    from segbatch.models.resolve import resolve_model
    from segbatch.stages.predict import Predictor
    from segbatch.stages.read import read_batch
    from segbatch.stages.tiled import TiledRead
    from segbatch.stages.tiling import TileSpec

    spec = TileSpec((tile, tile), overlap)
    predictor = Predictor(model=resolve_model(MODEL, "none"), device="cpu", tiling=TiledRead(spec, max_image_pixels=0))
    with torch.inference_mode():  # the first forward pass primes oneDNN (seconds): an actor pays it once
        predictor._logits([np.zeros((3, tile, tile), np.uint8)])
    loaded = _peak_mb()[1]
    t0 = time.perf_counter()
    batch = read_batch({"uri": np.array([path], dtype=object)}, predictor.preprocess, max_image_pixels=0, tiled=True)
    out = predictor(batch)
    seconds = time.perf_counter() - t0
    assert out["status"][0] == "ok", out["error"][0]
    return {
        "peak_mb": _peak_mb()[0],
        "loaded_mb": loaded,
        "seconds": seconds,
        "pixels": float(out["label_map"][0].size),
    }


def child_plain(path: str, tile: int, overlap: int) -> dict[str, float]:
    import tifffile
    import torch
    import torch.nn.functional as F
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    with torch.inference_mode():  # primed as segbatch's actor is
        model(torch.zeros((1, 3, tile, tile)))
    loaded = _peak_mb()[1]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    image = tifffile.imread(path)
    height, width = image.shape[:2]
    preds = torch.zeros((21, height, width), dtype=torch.float32)
    count = torch.zeros((height, width), dtype=torch.float32)
    stride = tile - overlap
    rows = max(height - tile + stride - 1, 0) // stride + 1
    cols = max(width - tile + stride - 1, 0) // stride + 1
    with torch.inference_mode():
        for r in range(rows):
            for c in range(cols):
                y1, x1 = min(r * stride + tile, height), min(c * stride + tile, width)
                y0, x0 = max(y1 - tile, 0), max(x1 - tile, 0)
                x = torch.from_numpy(image[y0:y1, x0:x1]).permute(2, 0, 1)[None].float().div(255)
                logits = model((x - mean) / std)["out"]
                logits = F.interpolate(logits, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
                preds[:, y0:y1, x0:x1] += logits[0]
                count[y0:y1, x0:x1] += 1
    label_map = (preds / count).argmax(dim=0).to(torch.uint8).numpy()
    seconds = time.perf_counter() - t0
    return {"peak_mb": _peak_mb()[0], "loaded_mb": loaded, "seconds": seconds, "pixels": float(label_map.size)}


def _measure(kind: str, path: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        str(path),
        "--tile",
        str(args.tile),
        "--overlap",
        str(args.overlap),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=None, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} on {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="25,400", help="two image sizes in megapixels (default 25,400)")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=256)
    p.add_argument("--mode", choices=("memory", "throughput", "both"), default="both")
    p.add_argument(
        "--throughput-mp", type=float, default=None, help="image size of the MP/s comparison (default: the smaller)"
    )
    p.add_argument("--repeats", type=int, default=2, help="MP/s: best of this many alternated runs each (default 2)")
    p.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    add_workdir_arg(p)
    args = p.parse_args()
    if args.child:
        kind, path = args.child
        result = (child_segbatch if kind == "segbatch" else child_plain)(path, args.tile, args.overlap)
        print(json.dumps(result))
        return
    sizes = [float(s) for s in args.sizes.split(",")]
    if len(sizes) != 2 or not all(s > 0 for s in sizes):
        raise SystemExit(f"--sizes must be two sizes in megapixels, e.g. 25,400, got {args.sizes!r}")
    small, large = sorted(sizes)
    with scratch_dir("sb-large-", args.workdir) as work:
        if args.mode in ("memory", "both"):
            runs = {}
            for mp in (small, large):
                path = work / f"image-{mp:g}mp.tif"
                side = make_image(path, mp)
                runs[mp] = r = _measure("segbatch", path, args)
                print(f"segbatch {mp:g} MP ({side}x{side}): peak {r['peak_mb']:.0f} MiB (model loaded: "
                      f"{r['loaded_mb']:.0f} MiB), {r['seconds']:.1f} s, {_rate(r):.3f} MP/s", flush=True)  # fmt: skip
            a, b = runs[small]["peak_mb"], runs[large]["peak_mb"]
            print(f"large_image_peak_rss_mb {small:g}MP={a:.0f} {large:g}MP={b:.0f} ratio={b / a:.2f}", flush=True)
        if args.mode in ("throughput", "both"):
            mp = args.throughput_mp or small
            path = work / f"image-{mp:g}mp.tif"
            make_image(path, mp)
            # Alternated, best of --repeats each: a shared machine's load hits both alike.
            best = {"segbatch": 0.0, "plain": 0.0}
            for _ in range(args.repeats):
                for kind in best:
                    r = _measure(kind, path, args)
                    best[kind] = max(best[kind], _rate(r))
                    print(f"{kind} {mp:g} MP: peak {r['peak_mb']:.0f} MiB (model loaded: {r['loaded_mb']:.0f} MiB), "
                          f"{r['seconds']:.1f} s, {_rate(r):.3f} MP/s", flush=True)  # fmt: skip
            ours, theirs = best["segbatch"], best["plain"]
            print(f"large_image_mp_per_s {mp:g}MP segbatch={ours:.3f} plain={theirs:.3f} ratio={ours / theirs:.2f}")


def _rate(r: dict[str, float]) -> float:
    return r["pixels"] / 1e6 / r["seconds"]


if __name__ == "__main__":
    main()
