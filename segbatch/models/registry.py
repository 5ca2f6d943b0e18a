"""Model registry: ``register_model`` / ``get_model_spec`` / ``list_models``.

A :class:`ModelSpec` says how to build one architecture and what its default weights
are; a :class:`LoadedModel` is the built module together with the preprocessing and
categories of the weights it was loaded with — the model never travels without them,
as with torchvision's weight enums.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from segbatch.errors import JobError

Task = Literal["semantic", "instance"]

BACKGROUND_NAMES = frozenset({"background", "__background__", "_background_", "bg"})


@dataclass(frozen=True)
class Preprocess:
    """The transform a model's weights expect, as torchvision's ``SemanticSegmentation``.

    ``resize``: the shorter side in pixels (int), an exact ``(h, w)``, or None (the model
    resizes by itself, as Mask R-CNN does). Resizing is bilinear with antialiasing on the
    uint8 image; normalization runs on the model's device.
    """

    resize: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = (0.485, 0.456, 0.406)
    std: tuple[float, ...] | None = (0.229, 0.224, 0.225)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` the model gets for an image of ``height × width`` (torchvision's rule)."""
        if self.resize is None:
            return height, width
        if isinstance(self.resize, tuple):
            return self.resize
        short, long = sorted((height, width))
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def resize_chw(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` → ``(3, h, w) uint8`` at the model's input size.

        The very operations of torchvision's ``F.resize`` on a uint8 tensor (bilinear,
        antialias: float32 interpolation, rounded back to uint8), written with torch alone so
        that the read workers never import torchvision (~1 s each at start).
        """
        chw = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        size = self.output_size(int(chw.shape[1]), int(chw.shape[2]))
        if size != (chw.shape[1], chw.shape[2]):
            x = nnf.interpolate(
                chw.unsqueeze(0).to(torch.float32),
                size=list(size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            chw = torch.round(x.squeeze(0)).to(torch.uint8)
        return chw.contiguous().numpy()

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 3, h, w) uint8`` → float32 in [0, 1], then mean/std normalized if set."""
        from torchvision.transforms import functional as F  # the model's process has torchvision anyway

        x = F.convert_image_dtype(batch, torch.float)
        if self.mean is not None and self.std is not None:
            x = F.normalize(x, mean=list(self.mean), std=list(self.std))
        return x

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        resize = d.get("resize")
        return cls(
            resize=tuple(int(v) for v in resize) if isinstance(resize, list | tuple) else resize,  # type: ignore[arg-type]
            mean=None if d.get("mean") is None else tuple(float(v) for v in d["mean"]),
            std=None if d.get("std") is None else tuple(float(v) for v in d["std"]),
        )

    def describe(self) -> str:
        if self.resize is None:
            return "any (model resizes)"
        if isinstance(self.resize, int):
            return f"shorter side {self.resize}"
        return f"{self.resize[0]}x{self.resize[1]}"


@dataclass(frozen=True)
class ModelOptions:
    """Inference options that shape the built module or its outputs."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_size: int | None = None


@dataclass(frozen=True)
class DefaultWeights:
    """Where ``--weights DEFAULT`` comes from: a download URL (cached under TORCH_HOME) or a bundled file."""

    label: str
    url: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture.

    ``build(model_kwargs, options)`` returns a randomly initialised module;
    ``infer_kwargs(state_dict)`` reads ``model_kwargs`` (e.g. ``num_classes``) off a plain
    state_dict; ``categories``/``preprocess`` are those of the default weights.
    ``coarse_logits(module, x)``, for a semantic model whose forward ends by upsampling its
    logits bilinearly to the input size: those logits before that step, ``(N, C, h, w)``
    float (the predictor then resamples only where classes meet, see :mod:`segbatch.stages.classmap`).
    """

    name: str
    task: Task
    description: str
    categories: tuple[str, ...]
    preprocess: Preprocess
    default_weights: DefaultWeights | None
    build: Callable[[Mapping[str, Any], ModelOptions], nn.Module]
    infer_kwargs: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]
    default_kwargs: Mapping[str, Any] = field(default_factory=dict)
    coarse_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None


@dataclass
class LoadedModel:
    """A built, weight-loaded module in eval mode with the metadata of its weights."""

    spec: ModelSpec
    module: nn.Module
    categories: tuple[str, ...]
    preprocess: Preprocess
    weights_source: str
    weights_sha256: str | None

    @property
    def task(self) -> Task:
        return self.spec.task

    @property
    def background(self) -> int | None:
        return background_index(self.categories)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_builtin() -> None:
    # Importing the zoo registers the built-in models; done lazily so that importing the
    # registry alone stays cheap and free of import cycles.
    from segbatch.models import unet, zoo  # noqa: F401


def get_model_spec(name: str) -> ModelSpec:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise JobError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}") from None


def list_models() -> list[ModelSpec]:
    _ensure_builtin()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def background_index(categories: tuple[str, ...] | list[str]) -> int | None:
    """Index of the background category (named background / __background__), or None."""
    for i, name in enumerate(categories):
        if name.strip().lower() in BACKGROUND_NAMES:
            return i
    return None
