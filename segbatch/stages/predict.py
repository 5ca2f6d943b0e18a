"""The predict stage: one model on one device, mapping a batch of images to predictions.

A callable class in Ray Data's batch-inference shape: the model loads once in
``__init__``; ``__call__`` maps a batch dict to a batch dict. Ray itself stays in
:mod:`segbatch.pipeline`, which builds the actor pool around this class.

Input batch columns: ``image`` (each ``(3, h, w) uint8``, resized for the model),
``height``/``width`` (original size), ``status``, ``error`` and pass-through columns.
Output adds, for a semantic model, ``label_map`` (each ``(H, W) uint8`` at the original
size), for an instance model ``inst_masks`` (``(N, H, W) uint8``), ``inst_labels``
(``(N,) int64``), ``inst_scores`` (``(N,) float32``); ``t_predict`` (s per image) and
``worker`` (str: where the model ran).
``image`` is dropped. A failure in one image becomes that row's error.

Rows the read stage sent as JPEG bytes (``--decode device``: ``encoded``, ``orientation``) are
decoded and resized here first, on the model's device (:mod:`segbatch.stages.device_decode`);
the time that takes is added to their ``t_read``. ``encoded`` and ``orientation`` are dropped.

The model is a :class:`~segbatch.models.bundle.ModelBundle` (built-in, Hugging Face, smp,
exported program or plugin: this stage does not know which); its adapters return the logits
(semantic) or the instances at the original size (instance).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from segbatch.errors import ImageError
from segbatch.models.bundle import ModelBundle, ModelOptions
from segbatch.models.registry import get_model_spec
from segbatch.models.resolve import ResolvedModel, load_bundle
from segbatch.models.weights import ResolvedWeights, load_model
from segbatch.stages.classmap import resampled_grid, upsampled_argmax_batch
from segbatch.stages.columns import object_array as _object_array
from segbatch.stages.columns import per_row
from segbatch.stages.cpu_clock import stage_clock
from segbatch.stages.device_decode import decode_resize
from segbatch.stages.tiled import (
    TiledRead,
    crops_result,
    detect_tiled,
    join_instance_strips,
    join_strips,
    label_many,
    label_steps,
)

log = logging.getLogger(__name__)

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
UNCERTAIN_MARGIN = 0.1  # top-two probability margin under which a pixel counts as uncertain


def pick_device(gpu_ids: list[Any] | None = None) -> torch.device:
    """CUDA when this process was given a GPU and CUDA works; else the CPU (with a warning if a GPU was given)."""
    if torch.cuda.is_available():
        return torch.device("cuda")  # Ray sets CUDA_VISIBLE_DEVICES, so cuda:0 is this actor's GPU
    if gpu_ids:
        log.warning("GPU ids %s were assigned but CUDA is not available here; running on the CPU", gpu_ids)
    return torch.device("cpu")


def use_channels_last(task: str, device: torch.device, autocast_dtype: torch.dtype | None) -> bool:
    """Whether the ``channels_last`` option applies: where NHWC was measured faster.

    On the CPU, oneDNN's NHWC kernels ran LRASPP 1.2× and DeepLabV3-MobileNet 1.5× faster.
    On a GPU in float32, cuDNN ran both 1.5× *slower* in NHWC (H200: 1254 vs 1846 img/s
    for LRASPP), so fp32 keeps NCHW; under fp16/bf16 autocast NHWC is the layout of cuDNN's
    tensor-core kernels (not yet measured here). Mask R-CNN batches images of different
    sizes as a list: always the default layout.
    """
    if task != "semantic":
        return False
    return device.type == "cpu" or autocast_dtype is not None


class Predictor:
    """Holds one model (a :class:`ModelBundle`) and runs batches through it.

    The model is either ``model``, a :class:`ResolvedModel` (or a function returning one,
    e.g. fetching it from Ray's object store) built with :func:`load_bundle`, or, as before,
    the built-in ``model_name`` with its ``weights``.
    """

    def __init__(
        self,
        model_name: str | None = None,
        weights: ResolvedWeights | Callable[[], ResolvedWeights] | None = None,
        options: ModelOptions | None = None,
        precision: str = "fp32",
        channels_last: bool = True,
        fold_batchnorm: bool = True,
        device: torch.device | str | None = None,
        num_threads: int | None = None,
        worker: str | None = None,
        model: ResolvedModel | Callable[[], ResolvedModel] | None = None,
        quality_stride: int | None = None,
        tiling: TiledRead | None = None,
    ) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        options = options or ModelOptions()
        if model is not None:
            self.bundle: ModelBundle = load_bundle(model() if callable(model) else model, options)
        elif model_name is not None and weights is not None:
            resolved = weights() if callable(weights) else weights
            self.bundle = load_model(get_model_spec(model_name), resolved, options)
        else:
            raise TypeError("Predictor needs model=ResolvedModel, or model_name with weights")
        self.loaded = self.bundle  # the name callers used for the built-ins
        self.device = torch.device(device) if device is not None else pick_device()
        self.options = options
        self.autocast_dtype = _DTYPES.get(precision) if self.device.type == "cuda" else None
        self.channels_last = (
            channels_last
            and self.bundle.channels_last
            and use_channels_last(self.bundle.task, self.device, self.autocast_dtype)
        )
        module = self.bundle.module
        # BatchNorm folded into the convolutions (segbatch.models.fold), as the bundle's
        # adapter says it applies: fewer passes over the activations; rounds differently,
        # hence an option.
        self.folded = self.bundle.fold(module) if fold_batchnorm and self.bundle.fold is not None else 0
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.preprocess = self.bundle.preprocess
        # Where this predictor runs, recorded on every row (images.parquet ``worker``).
        self.worker = worker or f"pid={os.getpid()} device={self.device}"
        # Runs with labels: class probabilities at every quality_stride-th pixel of the class
        # map's grid, for the label-quality evidence (segbatch.quality) the encode stage makes.
        self.quality_stride = quality_stride
        # Tiled runs (large images): each image is read by region here and run tile by tile; tiles
        # per pass unset (None): as many as images, the bundle's cpu_batch on a CPU (_tile_logits
        # pads a short pass); always within max_batch.
        if tiling is not None and tiling.tiles_per_pass is None:
            step = self._cpu_step if self.device.type == "cpu" else (self.bundle.max_batch or 1)
            tiling = dataclasses.replace(tiling, tiles_per_pass=step)
        if tiling is not None and self.bundle.max_batch:
            per_pass = min(tiling.tiles_per_pass or 1, self.bundle.max_batch)
            tiling = dataclasses.replace(tiling, tiles_per_pass=per_pass)
        self.tiling = tiling

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["status"])
        status = np.asarray(batch["status"], dtype=object).copy()
        error = np.asarray(batch["error"], dtype=object).copy()
        t_predict = np.zeros(n, dtype=np.float64)
        t_read = np.asarray(batch.get("t_read", np.zeros(n)), dtype=np.float64).copy()
        if batch.get("encoded") is not None:
            batch = self._decode_encoded(batch, status, error, t_read)
        semantic = self.bundle.task == "semantic"
        results: list[Any] = [None] * n
        ok = [i for i in range(n) if status[i] == "ok"]
        # A strip of a large image split across actors (segbatch.stages.strips) leaves its part,
        # joined with the image's other strips before encode, and no result of its own.
        strip_parts: np.ndarray | None = None
        if self.tiling is not None and "strips" in batch:
            strip_parts = np.full(n, None, dtype=object)
        if self.tiling is not None:
            # All the batch's images at once: a semantic model's passes take the tiles of several
            # images (a GPU batch filled by small images' windows).
            t0 = time.perf_counter()
            jobs = [(str(batch["uri"][i]), self._strip_of(batch, i, strip_parts is not None)) for i in ok]
            tiled = self._tiled_many(jobs)
            read_total = 0.0
            for i, (_, strip), out in zip(ok, jobs, tiled, strict=True):
                if isinstance(out, ImageError):
                    status[i], error[i] = "error", str(out)
                elif isinstance(out, BaseException):
                    status[i], error[i] = "error", f"predict: {type(out).__name__}: {out}"
                else:
                    results[i], read_s = out
                    t_read[i] += read_s
                    read_total += read_s
                    if strip[1] > 1:
                        assert strip_parts is not None
                        strip_parts[i], results[i] = results[i], None
            share = max(0.0, time.perf_counter() - t0 - read_total) / max(1, len(ok))
            t_predict[ok] = share  # the passes were shared: each image an equal share of the model's time
            ok = []
        # Group images of one input shape: stacking them is exact, where padding to a common
        # size would change the model's output near borders and in global pooling.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in ok:
            key = tuple(batch["image"][i].shape) if semantic else (0,)
            groups.setdefault(key, []).append(i)
        # On a GPU the whole group goes at once; on the CPU the bundle's ``cpu_batch`` images
        # per forward pass, as measured fastest for its kind of model (_run pads a short pass).
        step = min(len(ok), self.bundle.max_batch or len(ok)) if self.device.type == "cuda" else self._cpu_step
        chunks = [idx[i : i + step] for idx in groups.values() for i in range(0, len(idx), max(step, 1))]
        with stage_clock("actor_model", len(ok), "thread"):
            for idx in chunks:
                t0 = time.perf_counter()
                try:
                    outs: list[Any] = self._run(batch, idx)
                except Exception as err:
                    # One bad image must not fail its neighbours: retry one by one to find it.
                    outs = [self._try_one(batch, i) for i in idx] if len(idx) > 1 else [err]
                dt = (time.perf_counter() - t0) / len(idx)
                for i, out in zip(idx, outs, strict=True):
                    t_predict[i] = dt
                    if isinstance(out, Exception):
                        status[i], error[i] = "error", f"predict: {type(out).__name__}: {out}"
                    else:
                        results[i] = out
        out_batch = {k: v for k, v in batch.items() if k not in ("image", "encoded", "orientation")}
        out_batch.update(status=status, error=error, t_predict=t_predict, worker=np.full(n, self.worker, dtype=object))
        if "t_read" in batch:
            out_batch["t_read"] = t_read
        if strip_parts is not None:
            out_batch["strip_part"] = strip_parts
        if semantic:
            none = SemanticResult(np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.uint8), np.nan, np.nan,
                                  np.zeros(0, np.float32), None)  # fmt: skip
            res = [r if r is not None else none for r in results]
            out_batch["label_map"] = per_row([r.label_map for r in res])
            out_batch["top_prob"] = per_row([r.top_prob for r in res])
            out_batch["confidence"] = np.array([r.confidence for r in res], dtype=np.float32)
            out_batch["uncertain_share"] = np.array([r.uncertain_share for r in res], dtype=np.float32)
            out_batch["class_scores"] = _object_array([r.class_scores for r in res])
            if self.quality_stride:
                out_batch["quality_probs"] = per_row([r.probs for r in res])
        else:
            empty = (np.zeros((0, 0, 0), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.float32))
            inst: list[tuple[Any, ...]] = [r if r is not None else empty for r in results]
            out_batch["inst_masks"] = _object_array([r[0] for r in inst])
            out_batch["inst_labels"] = _object_array([r[1] for r in inst])
            out_batch["inst_scores"] = _object_array([r[2] for r in inst])
            if self.tiling is not None:  # tiled: the instances as crops (tiled.crops_result), None on error
                out_batch["inst_crops"] = _object_array([r[3] if len(r) > 3 else None for r in inst])
        return out_batch

    def _decode_encoded(
        self, batch: dict[str, np.ndarray], status: np.ndarray, error: np.ndarray, t_read: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The batch with the rows sent as JPEG bytes decoded and resized on the device (``image``:
        ``(3, h, w) uint8`` tensors there); a file that fails gets its error, and no size or
        conversion, as in the read stage (``status``, ``error`` and ``t_read`` are updated in place)."""
        encoded = batch["encoded"]
        images = _object_array(list(batch["image"]))
        todo = [i for i in range(len(images)) if status[i] == "ok" and encoded[i] is not None]
        if not todo:
            return {**batch, "image": images}
        height, width = np.array(batch["height"]), np.array(batch["width"])
        conversion = np.array(batch["conversion"], dtype=object)
        t0 = time.perf_counter()
        with stage_clock("actor_decode", len(todo), "thread"):
            decoded = decode_resize(
                [encoded[i] for i in todo], [int(batch["orientation"][i]) for i in todo], self.preprocess, self.device
            )
        dt = (time.perf_counter() - t0) / len(todo)
        for i, image in zip(todo, decoded, strict=True):
            t_read[i] += dt
            if isinstance(image, Exception):
                status[i], error[i] = "error", str(image)
                height[i], width[i], conversion[i] = 0, 0, None
            else:
                images[i] = image
        return {**batch, "image": images, "height": height, "width": width, "conversion": conversion}

    def _try_one(self, batch: dict[str, np.ndarray], i: int) -> Any:
        try:
            return self._run(batch, [i])[0]
        except Exception as err:
            return err

    @property
    def _cpu_step(self) -> int:
        """Images per forward pass on the CPU: the bundle's ``cpu_batch``, within ``max_batch``."""
        return max(1, min(self.bundle.cpu_batch, self.bundle.max_batch or self.bundle.cpu_batch))

    @torch.inference_mode()
    def _run(self, batch: dict[str, np.ndarray], idx: list[int]) -> list[Any]:
        n = len(idx)
        if self.device.type == "cpu" and n < self._cpu_step:
            # A short pass padded with copies of its last image: a model's output for an image
            # changes in its last bits with the number of images in the pass (not with their
            # content), so that each image's result is the same whatever its batch held.
            idx = idx + [idx[-1]] * (self._cpu_step - n)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            if self.bundle.task == "semantic":
                return self._semantic(batch, idx)[:n]
            return self._instance(batch, idx)[:n]

    @staticmethod
    def _strip_of(batch: dict[str, np.ndarray], i: int, split: bool) -> tuple[int, int]:
        return (int(batch["strip"][i]), int(batch["strips"][i])) if split else (0, 1)

    def _tiled(self, uri: str, strip: tuple[int, int] = (0, 1)) -> tuple[Any, float]:
        """One image (``strip`` ``(0, 1)``), tile by tile (:mod:`segbatch.stages.tiled`), and the
        seconds spent reading; for strip ``(index, count > 1)`` its part to join instead of a result."""
        out = self._tiled_many([(uri, strip)])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def _tiled_many(self, jobs: list[tuple[str, tuple[int, int]]]) -> list[tuple[Any, float] | BaseException]:
        """:meth:`_tiled` of each ``(uri, strip)``, or the exception that ended it: a semantic
        model's tiles go through shared passes (:func:`~segbatch.stages.tiled.label_many`), an
        instance model's image by image."""
        assert self.tiling is not None
        out: list[tuple[Any, float] | BaseException] = []
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None),
        ):
            if self.bundle.task != "semantic":
                for uri, strip in jobs:
                    try:
                        part = detect_tiled(uri, self.tiling, self.preprocess, self._detect, strip)
                    except Exception as err:
                        out.append(err)
                        continue
                    if strip[1] > 1:
                        out.append((part, part.t_read))
                    else:
                        merged, t_read = join_instance_strips([part])
                        out.append((crops_result(merged), t_read))
                return out
            classes = len(self.bundle.categories)
            steps = [label_steps(uri, self.tiling, self.preprocess, classes, self.device, UNCERTAIN_MARGIN, strip)
                     for uri, strip in jobs]  # fmt: skip
            pieces = label_many(steps, self._tile_logits, self.tiling_step)
        for piece, (_, strip) in zip(pieces, jobs, strict=True):
            if isinstance(piece, BaseException) or strip[1] > 1:
                out.append(piece if isinstance(piece, BaseException) else (piece, piece.t_read))
                continue
            whole = join_strips([piece])
            # No coarse confidence image and no label-quality probabilities for a tiled image: the
            # tiles' coarse grids do not form one image, and probabilities at every 4th pixel of a
            # 400 MP image would be ~1 GB (README "Large images").
            empty = np.zeros((0, 0), np.uint8)
            result = SemanticResult(whole.label_map, empty, whole.confidence, whole.uncertain_share,
                                    whole.class_scores, None)  # fmt: skip
            out.append((result, whole.t_read))
        return out

    def _tile_logits(self, tiles: list[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """:meth:`_logits` of a pass of tiles, a short pass on the CPU padded to the full one, as
        :meth:`_run` pads images: a tile's logits never depend on how many tiles ran beside it,
        so an image's strips join into exactly its whole-image result."""
        n = len(tiles)
        if self.device.type == "cpu" and n < self.tiling_step:
            tiles = tiles + [tiles[-1]] * (self.tiling_step - n)
        logits, via = self._logits(tiles)
        return logits[:n], via

    @property
    def tiling_step(self) -> int:
        """Tiles per forward pass of a tiled run."""
        return self.tiling.per_pass if self.tiling is not None else 1

    def _detect(self, tiles: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[Any]:
        """Tiles ``(3, h, w) uint8`` → the bundle's instances per tile at ``sizes`` (each window's)."""
        images = [self.preprocess.normalize(torch.from_numpy(t)[None].to(self.device))[0] for t in tiles]
        assert self.bundle.instance is not None  # ModelBundle.check sets the default
        return self.bundle.instance(self.module, images, sizes, self.options)

    def _logits(self, images: list[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """``N`` images ``(3, h, w) uint8`` of one shape → the bundle's logits ``(N, C, h', w')`` and ``via``."""
        x = self._to_device(images)
        x = self.preprocess.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        assert self.bundle.semantic is not None  # ModelBundle.check sets the default
        # The bundle's adapter: logits at any size, and where the model's forward ends with
        # its own upsampling to the input size, the logits before it and that size (``via``):
        # the class map then resamples only where classes meet, through both steps.
        logits, via = self.bundle.semantic(self.module, x)
        # NCHW before the class map: a channels-last model returns channels-last logits, and
        # ATen's bilinear resampling of those to full size ran 5× slower in the actor (LRASPP,
        # 21 classes, 65×87 → 520×693 → 480×640: 109 against 22 ms on 2 threads); the copy
        # costs ~0.1 ms.
        return logits.contiguous(), via

    def _semantic(self, batch: dict[str, np.ndarray], idx: list[int]) -> list[SemanticResult]:
        logits, via = self._logits([batch["image"][i] for i in idx])
        if logits.dim() != 4 or logits.shape[0] != len(idx):
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, expected (N, C, h, w)")
        if logits.shape[1] != len(self.bundle.categories):
            raise ValueError(
                f"the model returned {logits.shape[1]} classes for {len(self.bundle.categories)} categories"
            )
        # Back to the original size as detectron2's sem_seg_postprocess does (bilinear on
        # the logits, then argmax), images of one original size together.
        sizes: dict[tuple[int, int], list[int]] = {}
        for j, i in enumerate(idx):
            sizes.setdefault((int(batch["height"][i]), int(batch["width"][i])), []).append(j)
        out: list[SemanticResult] = [None] * len(idx)  # type: ignore[list-item]
        for size, js in sizes.items():
            sel = logits if len(js) == len(idx) else logits[js]
            maps = upsampled_argmax_batch(sel, size, via=via)
            for j, result in zip(js, self._confidence(sel, maps, size, via), strict=True):
                out[j] = result
        return out

    def _confidence(
        self, logits: torch.Tensor, maps: torch.Tensor, size: tuple[int, int], via: tuple[int, int] | None
    ) -> list[SemanticResult]:
        """How sure the model was, from the logits it made (no second pass): the softmax of the
        coarse logits ``(n, C, h, w)`` gives the top-class probability map and the top-two margin;
        each class's mean top probability over its pixels of the class map ``(n, H, W)`` is its
        mask's score (the map resampled bilinearly to the image). Device-side, one copy back."""
        probs = torch.softmax(logits.float(), dim=1)
        top2 = probs.topk(2, dim=1).values
        top = top2[:, 0]
        # Sums in float64: a float32 reduction's order depends on the batch and the thread
        # count, and the same image must give the same figures whatever the layout.
        confidence = top.double().mean(dim=(1, 2))
        uncertain = ((top - top2[:, 1]) < UNCERTAIN_MARGIN).double().mean(dim=(1, 2))
        # float64 too: the float32 kernel rounds differently in its vector body and scalar tail,
        # whose positions move with the thread count.
        full = F.interpolate(top[:, None].double(), size=size, mode="bilinear", align_corners=False)[:, 0]
        c = logits.shape[1]
        results = []
        for k in range(len(maps)):
            flat = maps[k].flatten().long()
            sums = torch.bincount(flat, weights=full[k].flatten(), minlength=c)
            counts = torch.bincount(flat, minlength=c).clamp(min=1)
            grid = None
            if self.quality_stride:
                grid = torch.softmax(resampled_grid(logits[k], size, via, self.quality_stride), dim=0).half()
            results.append((maps[k], (top[k] * 255).round().to(torch.uint8), confidence[k], uncertain[k],
                            (sums / counts).float(), grid))  # fmt: skip
        # One device-to-host copy of everything, then numpy.
        return [
            SemanticResult(
                m.cpu().numpy(),
                t.cpu().numpy(),
                float(cf),
                float(u),
                cs.cpu().numpy(),
                None if g is None else g.cpu().numpy(),
            )
            for m, t, cf, u, cs, g in results
        ]

    def _to_device(self, images: list[Any]) -> torch.Tensor:
        """``N`` images ``(3, h, w) uint8`` of one shape → ``(N, 3, h, w) uint8`` on the device.

        To a GPU they are copied once, straight into pinned memory (the caching host
        allocator reuses it once the copy is done), so that the copy to the device is
        asynchronous and at the bus's speed; stacking first, then pinning, copies twice.
        """
        if any(isinstance(image, torch.Tensor) for image in images):  # decoded here (--decode device)
            return torch.stack([_on(image, self.device) for image in images])
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack(images))
        pinned = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=True)
        staged = pinned.numpy()
        for k, image in enumerate(images):
            staged[k] = image
        return pinned.to(self.device, non_blocking=True)

    def _instance(
        self, batch: dict[str, np.ndarray], idx: list[int]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        # np.array copies: arrays from Ray's object store are read-only.
        images = [self.preprocess.normalize(_on(batch["image"][i], self.device)[None])[0] for i in idx]
        sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in idx]
        assert self.bundle.instance is not None  # ModelBundle.check sets the default
        return self.bundle.instance(self.module, images, sizes, self.options)


class SemanticResult(NamedTuple):
    """One image's semantic prediction, at the original size ``(H, W)``."""

    label_map: np.ndarray  # (H, W) uint8 model class ids
    top_prob: np.ndarray  # (h, w) uint8: the coarse top-class probability × 255
    confidence: float  # mean top-class probability (coarse grid)
    uncertain_share: float  # share of coarse pixels whose top two are within UNCERTAIN_MARGIN
    class_scores: np.ndarray  # (C,) float32: mean top probability over each class's pixels
    probs: np.ndarray | None  # (C, ⌈H/s⌉, ⌈W/s⌉) float16 class probabilities every s-th pixel, or None


def _on(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """An image (numpy from the read stage, or a tensor decoded here) as a tensor on ``device``."""
    if isinstance(image, torch.Tensor):
        return image.to(device)
    return torch.from_numpy(np.array(image)).to(device)  # a copy: object-store arrays are read-only
