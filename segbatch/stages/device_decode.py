"""JPEG bytes → resized model input, in the model actor, on its device (``--decode device``).

The read task sent the file's bytes and its EXIF orientation
(:func:`~segbatch.io.images.jpeg_header`). Here the JPEGs of a batch are decoded in one call of
torchvision's ``decode_jpeg`` on the actor's device (nvJPEG on a GPU, libjpeg-turbo on the
CPU), turned as :func:`PIL.ImageOps.exif_transpose` turns them, checked for a blank picture
and resized with :meth:`~segbatch.models.preprocess.Preprocess.resize_tensor` — the operations
of the host path, so the pixels stay where the model runs. An image the decoder rejects (a
corrupt JPEG) or a blank one is decoded again by the host path's
:func:`~segbatch.io.images.decode`, here, so that it ends as the same error row (or, should
Pillow read what the decoder would not, as the same pixels): one image never fails its batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from segbatch.errors import ImageError
from segbatch.io.images import BLANK_LEVELS, ORIENTATIONS, HighBitDepth, decode
from segbatch.models.preprocess import Preprocess


def orient(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """``(C, H, W)`` as stored → as shown, for EXIF ``orientation`` 1..8 (PIL's exif_transpose table:
    2 mirror, 3 rotate 180°, 4 flip, 5 transpose, 6 rotate 90° clockwise, 7 transverse, 8 rotate
    90° counter-clockwise)."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")
    if orientation == 2:
        return chw.flip(2)
    if orientation == 3:
        return chw.flip(1, 2)
    if orientation == 4:
        return chw.flip(1)
    if orientation == 5:
        return chw.transpose(1, 2)
    if orientation == 6:
        return chw.transpose(1, 2).flip(2)
    if orientation == 7:
        return chw.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return chw.transpose(1, 2).flip(1)
    return chw


def decode_jpegs(datas: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor | Exception]:
    """JPEG files ``(B,) uint8`` → ``(3, H, W) uint8`` RGB tensors on ``device`` as stored (no
    EXIF applied), or the decoder's exception for a file it rejects. One batched call; when it
    fails, one call per file, to find which."""
    from torchvision.io import ImageReadMode, decode_jpeg

    # A copy each: arrays from Ray's object store are read-only, which torch warns about.
    tensors = [torch.from_numpy(np.array(d, dtype=np.uint8)) for d in datas]
    with warnings.catch_warnings():
        # torchvision 0.29 says its image decoding is deprecated (for torchcodec); it still works.
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision.*")
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | Exception] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as err:
                out.append(err)
        return out


def decode_resize(
    datas: Sequence[np.ndarray],
    orientations: Sequence[int],
    preprocess: Preprocess,
    device: torch.device,
    high_bit_depth: HighBitDepth = "range",
) -> list[torch.Tensor | ImageError]:
    """Encoded JPEGs and their EXIF orientations → ``(3, h, w) uint8`` model inputs on ``device``,
    or the :class:`ImageError` the host path raises for that file (its row's error)."""
    decoded = decode_jpegs(datas, device)
    shown = [d if isinstance(d, Exception) else orient(d, int(o)) for d, o in zip(decoded, orientations, strict=True)]
    ok = [k for k, d in enumerate(shown) if not isinstance(d, Exception)]
    # The blank-image check of the host path: every image's min and max in one copy back.
    extremes = torch.stack([_extremes(shown[k]) for k in ok]).cpu().tolist() if ok else []  # type: ignore[arg-type]
    blank = {k for k, (lo, hi) in zip(ok, extremes, strict=True) if hi - lo <= BLANK_LEVELS}
    out: list[torch.Tensor | ImageError] = []
    for k, image in enumerate(shown):
        if isinstance(image, Exception) or k in blank:
            out.append(_host(datas[k], preprocess, device, high_bit_depth))
        else:
            out.append(preprocess.resize_tensor(image))
    return out


def _extremes(image: torch.Tensor) -> torch.Tensor:
    """``(2,)``: the smallest and largest value of ``image``, read in its memory order.

    ATen's CPU ``aminmax`` of a ``(3, H, W)`` uint8 tensor took 0.3-7.8 ms at 640×480 (more
    under load; a quarter of the actor's decoding in a py-spy profile), of the same bytes as
    one flat run 0.01 ms (torch 2.14). A decoded JPEG is a CHW view of HWC memory, so the flat
    run is the view with the dimensions in stride order (a copy only for a tensor that has gaps)."""
    order = sorted(range(image.dim()), key=lambda d: image.stride(d), reverse=True)
    return torch.stack(torch.aminmax(image.permute(order).reshape(-1)))


def _host(
    data: np.ndarray, preprocess: Preprocess, device: torch.device, high_bit_depth: HighBitDepth
) -> torch.Tensor | ImageError:
    """The host path for one file: its error, or (where Pillow reads it) its pixels."""
    try:
        rgb = decode(np.asarray(data, dtype=np.uint8).tobytes(), high_bit_depth).rgb
        return torch.from_numpy(preprocess.resize_chw(rgb)).to(device)
    except ImageError as err:
        return err
    except Exception as err:  # as the read stage: anything else in one image must not stop the batch
        return ImageError("read", f"{type(err).__name__}: {err}")
