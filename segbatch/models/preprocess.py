"""The preprocessing a model's weights expect: resize rule, resample filter, rescale, mean/std.

:class:`Preprocess` runs in two places: :meth:`Preprocess.resize_chw` in the read stage on
the uint8 image (CPU tasks, which import torch and Pillow but never torchvision or
transformers), :meth:`Preprocess.normalize` on the model's device. It is a frozen,
picklable dataclass of plain values, so the same object travels to both.

Resize rules (``output_size``), applied in this order:
  * ``resize``: an int is the shorter side (torchvision's and transformers' ``shortest_edge``
    rounding: the longer side is ``int(size * long / short)``); with ``longest_edge`` it is
    transformers' ``{"shortest_edge", "longest_edge"}`` rule (DETR's ``get_size_with_aspect_ratio``);
    a ``(h, w)`` pair is an exact size; None keeps the image's size.
  * ``size_divisor``: the size is rounded *up* to a multiple (stretching the image, as
    Mask2Former's and MaskFormer's processors do; smp models need multiples of 32).
  * ``crop``: a centre crop ``(h, w)`` (MobileViT), padding with zeros where the image is smaller.

Resample filters (``resample``), each the exact operation of one recipe:
  * ``torch-antialias``: bilinear with antialiasing in float32, rounded to uint8 —
    ``torchvision.transforms.functional.resize`` on a uint8 tensor, as torchvision's weight
    presets (the built-in models) run it;
  * ``torch-antialias-uint8``: the same filter through torch's uint8 CPU kernel, as
    ``torchvision.transforms.v2.functional.resize`` runs it on CPUs with AVX2/AVX-512 or on
    ARM (elsewhere it falls back to the float path, as torchvision does) — transformers'
    torchvision backend (its default image processors). It rounds differently from the float
    path (~20 % of pixels one level apart);
  * ``torch-bicubic``: bicubic with antialiasing through torch's uint8 CPU kernel (v2, as
    transformers' torchvision backend for bicubic processors);
  * ``pillow-bilinear`` / ``pillow-bicubic`` / ``pillow-nearest`` / ``pillow-lanczos`` /
    ``pillow-box`` / ``pillow-hamming``: ``PIL.Image.resize`` on the RGB image, as
    transformers' PIL backend (and its v4 "slow" processors) run it.
The families round differently (Pillow vs. torch: ~1 % of pixels on photographs), so a model
gets the one its recipe uses.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from segbatch.errors import JobError

if TYPE_CHECKING:  # torch is imported where pixels are resized: the driver plans without it
    import torch

TORCH_FILTERS = ("torch-antialias", "torch-antialias-uint8", "torch-bicubic")
PILLOW_FILTERS = (
    "pillow-bilinear",
    "pillow-bicubic",
    "pillow-nearest",
    "pillow-lanczos",
    "pillow-box",
    "pillow-hamming",
)
RESAMPLE_FILTERS = TORCH_FILTERS + PILLOW_FILTERS
CHANNEL_ORDERS = ("RGB", "BGR")
DEFAULT_RESCALE = 1 / 255


@dataclass(frozen=True)
class Preprocess:
    """The transform a model's weights expect (see the module docstring for each rule).

    ``resize``: shorter side (int), exact ``(h, w)``, or None; ``longest_edge``: cap of the
    longer side under transformers' shortest/longest-edge rule; ``size_divisor``: round the
    size up to a multiple; ``crop``: centre crop ``(h, w)``; ``resample``: one of
    :data:`RESAMPLE_FILTERS`; ``rescale``: factor applied to the uint8 values (None: none);
    ``mean``/``std``: per channel after rescaling (None: none); ``channel_order``: ``RGB`` or
    ``BGR`` (MobileViT flips to BGR).
    """

    resize: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = (0.485, 0.456, 0.406)
    std: tuple[float, ...] | None = (0.229, 0.224, 0.225)
    longest_edge: int | None = None
    size_divisor: int = 0
    crop: tuple[int, int] | None = None
    resample: str = "torch-antialias"
    rescale: float | None = DEFAULT_RESCALE
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE_FILTERS:
            raise JobError(f"unknown resample filter {self.resample!r}; valid filters: {', '.join(RESAMPLE_FILTERS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise JobError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")
        if (self.mean is None) != (self.std is None):
            raise JobError(f"mean and std go together, got mean={self.mean!r}, std={self.std!r}")
        if self.longest_edge is not None and not isinstance(self.resize, int):
            raise JobError(f"longest_edge={self.longest_edge} needs an int shorter side, got resize={self.resize!r}")
        if self.size_divisor < 0:
            raise JobError(f"size_divisor must be >= 0, got {self.size_divisor}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the resized image (before ``crop``) for an image of ``height × width``."""
        if self.resize is None:
            h, w = height, width
        elif isinstance(self.resize, tuple):
            h, w = self.resize
        elif self.longest_edge is not None:
            h, w = _shortest_longest_edge(height, width, self.resize, self.longest_edge)
        else:
            short, long = sorted((height, width))
            new_short, new_long = self.resize, int(self.resize * long / short)
            h, w = (new_long, new_short) if width <= height else (new_short, new_long)
        if self.size_divisor > 0:
            d = self.size_divisor
            h, w = math.ceil(h / d) * d, math.ceil(w / d) * d
        return h, w

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` the model gets (after resize and crop)."""
        return self.crop if self.crop is not None else self.output_size(height, width)

    def resize_chw(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` → ``(3, h, w) uint8`` at the model's input size.

        ``torch-antialias``: the very operations of torchvision's ``F.resize`` on a uint8
        tensor (bilinear, antialias: float32 interpolation, rounded back to uint8), written
        with torch alone so that the read workers never import torchvision (~1 s each at start).
        ``torch-antialias-uint8`` / ``torch-bicubic``: torch's uint8 kernels, as torchvision's
        v2 ``resize`` calls them on the CPU. ``pillow-*``: ``PIL.Image.resize`` on the RGB image, as
        transformers' PIL backend does.
        """
        import torch

        if self.resample in PILLOW_FILTERS:
            size = self.output_size(int(rgb.shape[0]), int(rgb.shape[1]))
            chw = _pillow_resize(rgb, size, self.resample)
            if self.crop is not None:
                chw = _center_crop(chw, self.crop, pillow=True)
            return chw.contiguous().numpy()
        return self.resize_tensor(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)).contiguous().numpy()

    def resize_tensor(self, chw: torch.Tensor) -> torch.Tensor:
        """``(3, H, W) uint8`` tensor on any device → ``(3, h, w) uint8`` at the model's input size,
        by the torch filters alone (:data:`TORCH_FILTERS`): the operations of :meth:`resize_chw`,
        where the image already is (the model actor's device, for ``--decode device``)."""
        if self.resample not in TORCH_FILTERS:
            raise JobError(f"resize_tensor runs the torch filters {', '.join(TORCH_FILTERS)}, not {self.resample!r}")
        size = self.output_size(int(chw.shape[1]), int(chw.shape[2]))
        if size != (chw.shape[1], chw.shape[2]):
            chw = _torch_resize(chw, size, self.resample)
        if self.crop is not None:
            chw = _center_crop(chw, self.crop, pillow=False)
        return chw

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 3, h, w) uint8`` → float32: channel order, rescale, then mean/std if set."""
        import torch

        if self.rescale == DEFAULT_RESCALE and self.channel_order == "RGB":
            # torchvision's own operations, as its presets run them (the built-in models).
            from torchvision.transforms import functional as F  # the model's process has torchvision anyway

            x = F.convert_image_dtype(batch, torch.float)
            if self.mean is not None and self.std is not None:
                x = F.normalize(x, mean=list(self.mean), std=list(self.std))
            return x
        x = batch.to(torch.float32)
        if self.channel_order == "BGR":
            x = x.flip(1)
        if self.rescale is not None:
            x = x * self.rescale
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values; the fields added after ``resize``/``mean``/``std`` only when not at their default."""
        out: dict[str, Any] = {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }
        for f in fields(self)[3:]:
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`; raises :class:`JobError` naming an unknown or bad key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise JobError(f"unknown preprocessing key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
        try:
            resize = d.get("resize")
            crop = d.get("crop")
            kwargs: dict[str, Any] = {
                "resize": tuple(int(v) for v in resize) if isinstance(resize, list | tuple) else _opt_int(resize),
                "mean": None if d.get("mean") is None else tuple(float(v) for v in d["mean"]),
                "std": None if d.get("std") is None else tuple(float(v) for v in d["std"]),
                "longest_edge": _opt_int(d.get("longest_edge")),
                "size_divisor": int(d.get("size_divisor") or 0),
                "crop": None if crop is None else (int(crop[0]), int(crop[1])),
                "resample": str(d.get("resample", "torch-antialias")),
                "rescale": _rescale(d),
                "channel_order": str(d.get("channel_order", "RGB")).upper(),
            }
        except (TypeError, ValueError, IndexError) as err:
            raise JobError(f"bad preprocessing {dict(d)!r}: {err}") from None
        if isinstance(kwargs["resize"], tuple) and len(kwargs["resize"]) != 2:
            raise JobError(f"preprocessing resize must be a shorter side or [height, width], got {resize!r}")
        return cls(**kwargs)

    def describe(self) -> str:
        if self.resize is None:
            base = "any (model resizes)" if not self.size_divisor else f"any, multiple of {self.size_divisor}"
        elif isinstance(self.resize, int):
            base = f"shorter side {self.resize}" + (f", longer <= {self.longest_edge}" if self.longest_edge else "")
        else:
            base = f"{self.resize[0]}x{self.resize[1]}"
        if self.crop is not None:
            base += f", crop {self.crop[0]}x{self.crop[1]}"
        return base


def _rescale(d: Mapping[str, Any]) -> float | None:
    if "rescale" not in d:
        return DEFAULT_RESCALE
    return None if d["rescale"] is None else float(d["rescale"])


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _shortest_longest_edge(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """transformers' ``get_size_with_aspect_ratio`` (the shortest/longest-edge rule), verbatim."""
    raw_size = None
    lo, hi = float(min(height, width)), float(max(height, width))
    if hi / lo * size > max_size:
        raw_size = max_size * lo / hi
        size = round(raw_size)
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        ow = size
        oh = int(raw_size * height / width) if raw_size is not None else int(size * height / width)
    else:
        oh = size
        ow = int(raw_size * width / height) if raw_size is not None else int(size * width / height)
    return oh, ow


def _native_uint8_bilinear() -> bool:
    """Whether torchvision's v2 ``resize`` runs bilinear on uint8 natively here (its own test)."""
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def _torch_resize(chw: torch.Tensor, size: tuple[int, int], resample: str) -> torch.Tensor:
    import torch
    import torch.nn.functional as nnf

    if resample == "torch-antialias-uint8" and _native_uint8_bilinear():
        x = chw.unsqueeze(0)
        return nnf.interpolate(x, size=list(size), mode="bilinear", align_corners=False, antialias=True)[0]
    if resample == "torch-bicubic":
        # torchvision hands uint8 straight to torch's CPU kernel for bicubic (its output is
        # rounded and clamped inside).
        x = chw.unsqueeze(0)
        return nnf.interpolate(x, size=list(size), mode="bicubic", align_corners=False, antialias=True)[0]
    x = nnf.interpolate(
        chw.unsqueeze(0).to(torch.float32), size=list(size), mode="bilinear", align_corners=False, antialias=True
    )
    return torch.round(x.squeeze(0)).to(torch.uint8)


def _pillow_resize(rgb: np.ndarray, size: tuple[int, int], resample: str) -> torch.Tensor:
    from PIL import Image  # the read stage decodes with Pillow: already imported there

    filters = {
        "pillow-bilinear": Image.Resampling.BILINEAR,
        "pillow-bicubic": Image.Resampling.BICUBIC,
        "pillow-nearest": Image.Resampling.NEAREST,
        "pillow-lanczos": Image.Resampling.LANCZOS,
        "pillow-box": Image.Resampling.BOX,
        "pillow-hamming": Image.Resampling.HAMMING,
    }
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if (image.height, image.width) != size:
        image = image.resize((size[1], size[0]), resample=filters[resample])
    import torch

    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _center_crop(chw: torch.Tensor, crop: tuple[int, int], *, pillow: bool) -> torch.Tensor:
    """Centre crop ``(3, h, w)`` to ``crop``, zero-padding a smaller image as transformers'
    backends do (the torchvision one pads ``(c - n) // 2`` before, the PIL one ``ceil``)."""
    import torch.nn.functional as nnf

    ch, cw = crop
    h, w = int(chw.shape[1]), int(chw.shape[2])
    if ch > h or cw > w:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        top, left = (math.ceil(ph / 2), math.ceil(pw / 2)) if pillow else (ph // 2, pw // 2)
        chw = nnf.pad(chw, (left, pw - left, top, ph - top), value=0)
        h, w = int(chw.shape[1]), int(chw.shape[2])
    top, left = (h - ch) // 2, (w - cw) // 2
    return chw[:, top : top + ch, left : left + cw]
