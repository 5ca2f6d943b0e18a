"""The model bundle: one type for every model, built-in or brought by the user.

A :class:`ModelBundle` is a module together with everything the pipeline needs to run it:
task, categories (by class id), background, preprocessing, and the forward adapters the
predictor calls. Downstream stages (read, predict, encode) know only the bundle, never the
family (torchvision, Hugging Face, smp, exported program, plugin) it came from.

Forward adapters (the predictor calls them under ``torch.inference_mode``, with the batch
normalized by :meth:`Preprocess.normalize` and on the model's device):

* semantic — ``semantic(module, x)`` with ``x`` ``(N, 3, h, w)`` float → ``(logits, via)``:
  ``logits`` ``(N, C, h', w')`` float at any resolution, ``via`` ``(h'', w'')`` or None. The
  class map is ``argmax`` of the logits resampled bilinearly (``align_corners=False``) to
  ``via`` when given, then to the original image size — the exact shortcut of
  :mod:`segbatch.stages.classmap` applies to both. A model whose forward ends with a bilinear
  upsampling to its input size returns the logits before it and ``via`` = the input size.
* instance — ``instance(module, images, sizes, options)`` with ``images`` a list of
  ``(3, h, w)`` float tensors and ``sizes`` the original ``(H, W)`` of each → one
  ``(masks, labels, scores)`` per image: ``(n, H, W) uint8`` 0/1 at the original size,
  ``(n,) int64`` class ids into ``categories``, ``(n,) float32``, already filtered by
  ``options.score_threshold``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from segbatch.errors import JobError
from segbatch.models.fold import fold_batchnorm
from segbatch.models.info import (
    BACKGROUND_NAMES,
    INSTANCE_BACKGROUND,
    MAX_SEMANTIC_CLASSES,
    TASKS,
    ModelOptions,
    Task,
    background_index,
    check_class_count,
    with_background,
)
from segbatch.models.preprocess import Preprocess

__all__ = [
    "BACKGROUND_NAMES",
    "INSTANCE_BACKGROUND",
    "MAX_SEMANTIC_CLASSES",
    "TASKS",
    "InstanceResult",
    "LoadedModel",
    "ModelBundle",
    "ModelOptions",
    "Task",
    "background_index",
    "plain_semantic",
    "tensor_output",
    "torchvision_instance",
]


InstanceResult = tuple[np.ndarray, np.ndarray, np.ndarray]
SemanticForward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, "tuple[int, int] | None"]]
InstanceForward = Callable[[nn.Module, list[torch.Tensor], list[tuple[int, int]], "ModelOptions"], list[InstanceResult]]
FoldFn = Callable[[nn.Module], int]


def tensor_output(out: Any, key: str | int | None = None) -> torch.Tensor:
    """The logits tensor of a forward's output: ``out[key]`` when a key is given; else the
    tensor itself, a ``dict``'s ``"out"`` (torchvision) or ``"logits"``, an output object's
    ``.logits`` (transformers), or a tuple's first element."""
    if key is not None:
        try:
            value = out[key]
        except (KeyError, IndexError, TypeError) as err:
            raise JobError(f"the model's output has no {key!r}: {type(out).__name__} {_keys(out)}") from err
        if not isinstance(value, torch.Tensor):
            raise JobError(f"the model's output {key!r} is a {type(value).__name__}, not a tensor")
        return value
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for k in ("out", "logits"):
            if isinstance(out.get(k), torch.Tensor):
                return out[k]
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise JobError(
        f"cannot find the logits in the model's output ({type(out).__name__} {_keys(out)}); "
        "name the key in the model card's output.key"
    )


def _keys(out: Any) -> str:
    if isinstance(out, Mapping):
        return f"with keys {sorted(map(str, out))}"
    if isinstance(out, tuple | list):
        return f"of length {len(out)}"
    return ""


def plain_semantic(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """The default semantic adapter: the forward's logits (see :func:`tensor_output`), no ``via``."""
    return tensor_output(module(x)), None


def torchvision_instance(
    module: nn.Module, images: list[torch.Tensor], sizes: list[tuple[int, int]], options: ModelOptions
) -> list[InstanceResult]:
    """The default instance adapter, torchvision's detection API: ``module(list of (3, h, w))``
    → per image ``{"masks": (n, 1, h, w) probabilities, "labels", "scores"}``; masks are
    thresholded at ``options.mask_threshold`` (resampled bilinearly first where the model's
    input size differs from the original, as torchvision's ``paste_masks_in_image`` leaves
    them at the input size)."""
    outputs = module(images)
    results = []
    for out, size in zip(outputs, sizes, strict=True):
        keep = out["scores"] >= options.score_threshold
        probs = out["masks"][keep]
        probs = probs[:, 0] if probs.dim() == 4 else probs
        if tuple(probs.shape[-2:]) != tuple(size) and len(probs):
            probs = nnf.interpolate(probs[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        masks = (probs > options.mask_threshold).to(torch.uint8).cpu().numpy()
        if not len(probs):
            masks = np.zeros((0, *size), np.uint8)
        results.append(
            (
                masks,
                out["labels"][keep].cpu().numpy().astype(np.int64),
                out["scores"][keep].float().cpu().numpy().astype(np.float32),
            )
        )
    return results


@dataclass
class ModelBundle:
    """A model ready to run: module (eval mode, CPU), task, categories, preprocessing, adapters.

    ``categories[i]`` names class id ``i``; ``background`` is the id of the background
    class (default: the category named background / __background__, else None).
    ``semantic``/``instance``: the forward adapters (module docstring; defaults
    :func:`plain_semantic` and :func:`torchvision_instance`). ``fold``: how BatchNorm is
    folded into convolutions for this module (default: every convolution → BatchNorm pair
    inside a ``Sequential``; None: folding does not apply);
    ``channels_last``: whether NHWC may be used where measured faster; ``max_batch``: images
    per forward at most (1 for a program exported with a static batch of one); ``cpu_batch``:
    images per forward pass on a CPU (1 for convolutional networks: LRASPP at 520 px, 2 threads,
    runs 17 img/s at 1 and 11.5 at 4, its activations falling out of cache; a transformer's
    attention and linear layers want a few: SegFormer-B0 at 512 px 4.5 img/s at 2, 2.5 at 1).
    ``fast_paths``: what the adapter uses, in words (``segbatch models``, job.json).
    """

    module: nn.Module
    task: Task
    categories: tuple[str, ...]
    preprocess: Preprocess
    semantic: SemanticForward | None = None
    instance: InstanceForward | None = None
    background_id: int | None = None
    name: str = ""
    description: str = ""
    fold: FoldFn | None = fold_batchnorm
    channels_last: bool = True
    max_batch: int | None = None
    cpu_batch: int = 1
    fast_paths: str = ""
    weights_source: str = ""
    weights_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def background(self) -> int | None:
        return self.background_id if self.background_id is not None else background_index(self.categories)

    def check(self, what: str) -> ModelBundle:
        """Validate and complete the bundle (default adapters; an instance model's background);
        raise :class:`JobError` naming ``what`` and the problem. Returns ``self``."""
        if not isinstance(self.module, nn.Module):
            raise JobError(f"{what}: module must be a torch.nn.Module, got {type(self.module).__name__}")
        if self.task not in TASKS:
            raise JobError(f"{what}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.preprocess, Preprocess):
            raise JobError(f"{what}: preprocess must be a segbatch Preprocess, got {type(self.preprocess).__name__}")
        cats = tuple(self.categories) if isinstance(self.categories, list | tuple) else None
        if not cats or not all(isinstance(c, str) and c for c in cats):
            raise JobError(f"{what}: categories must be a non-empty list of names, got {self.categories!r}")
        self.categories = cats
        if self.background_id is not None and not 0 <= self.background_id < len(cats):
            raise JobError(f"{what}: background {self.background_id} is not a class id (0..{len(cats) - 1})")
        if self.task == "semantic":
            check_class_count(what, self.task, cats)
            self.semantic = self.semantic or plain_semantic
        else:
            self.instance = self.instance or torchvision_instance
            if self.background is None:
                # The pipeline treats instance class 0 as the background (torchvision's
                # convention): prepend one and shift the model's labels by one.
                self.categories, self.background_id = with_background(self.task, cats, None)
                self.instance = _shifted(self.instance)
        self.module.eval()
        return self


def _shifted(adapter: InstanceForward) -> InstanceForward:
    def shifted(
        module: nn.Module, images: list[torch.Tensor], sizes: list[tuple[int, int]], options: ModelOptions
    ) -> list[InstanceResult]:
        return [(m, labels + 1, s) for m, labels, s in adapter(module, images, sizes, options)]

    return shifted


# The built-ins' old name: a built, weight-loaded model with its metadata.
LoadedModel = ModelBundle
