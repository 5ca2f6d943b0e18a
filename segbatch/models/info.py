"""What the driver knows of a model before any actor builds it, as plain values (no torch).

A job is planned from a model's task, categories, background and preprocessing: the read
tasks resize with the preprocessing, encode maps class ids through the categories, job.json
records them. :func:`describe` gets them without building the model where the model's files
say them — a built-in and its checkpoint (:mod:`segbatch.models.catalog`,
:mod:`segbatch.models.checkpoint_header`) — so that the driver does not import torch and
torchvision (~4 s of CPU, which on a small machine slows the Ray start it overlaps). Other
models are built once on the driver, as before. The model actors build the model anyway; each
reports its :meth:`ModelInfo.signature`, and a run whose actors built something other than
what the driver planned stops (:class:`segbatch.executor.Executor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from segbatch.errors import JobError
from segbatch.models.preprocess import Preprocess

if TYPE_CHECKING:
    from segbatch.models.bundle import ModelBundle
    from segbatch.models.resolve import ResolvedModel

Task = Literal["semantic", "instance"]
TASKS: tuple[str, ...] = ("semantic", "instance")
BACKGROUND_NAMES = frozenset({"background", "__background__", "_background_", "bg"})
# The name given to the background category prepended to an instance model's categories
# that have none (torchvision's convention: instance class 0 is the background).
INSTANCE_BACKGROUND = "__background__"
MAX_SEMANTIC_CLASSES = 255  # label maps are uint8


@dataclass(frozen=True)
class ModelOptions:
    """Inference options that shape the built module or its outputs."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_size: int | None = None


def background_index(categories: tuple[str, ...] | list[str]) -> int | None:
    """Index of the background category (named background / __background__), or None."""
    for i, name in enumerate(categories):
        if name.strip().lower() in BACKGROUND_NAMES:
            return i
    return None


@dataclass(frozen=True)
class ModelInfo:
    """A model's task, categories (by class id), background id, preprocessing, description and
    fast paths (in words) — the :class:`~segbatch.models.bundle.ModelBundle` without its module."""

    task: Task
    categories: tuple[str, ...]
    background: int | None
    preprocess: Preprocess
    description: str = ""
    fast_paths: str = ""

    @classmethod
    def of(cls, bundle: ModelBundle) -> ModelInfo:
        return cls(bundle.task, tuple(bundle.categories), bundle.background, bundle.preprocess, bundle.description,
                   bundle.fast_paths)  # fmt: skip

    def signature(self) -> dict[str, Any]:
        """What the outputs depend on, as JSON values: equal on the driver and every actor."""
        return {
            "task": self.task,
            "categories": list(self.categories),
            "background": self.background,
            "preprocess": self.preprocess.to_dict(),
        }


def describe(resolved: ResolvedModel, options: ModelOptions) -> ModelInfo:
    """The :class:`ModelInfo` of ``resolved``: from its files alone for a built-in whose
    checkpoint can be read without torch, else from the model built here (:func:`load_bundle`).
    Raises :class:`JobError` for what the files show to be wrong (a checkpoint of another model,
    no class head, names that do not match the class count); the actors find the rest (a
    tensor of the wrong shape) when they build the model, before any image is labeled."""
    if resolved.kind == "builtin":
        from segbatch.models.catalog import builtin_info

        info = builtin_info(resolved.ref, resolved.files.get("checkpoint"), resolved.source)
        if info is not None:
            return info
    if resolved.kind == "hf" and resolved.categories is not None and resolved.preprocess is not None:
        # The driver read config.json and the image processor (segbatch.models.hf.resolve_hf):
        # everything but the weights, which only the actors load.
        bg = resolved.card.background_id(resolved.categories) if resolved.card is not None else None
        categories, background = with_background(resolved.task, resolved.categories, bg)
        check_class_count(resolved.ref, resolved.task, categories)
        fast = hf_fast_paths(str(resolved.settings["model_type"]), str(resolved.settings["head"]), resolved.task)
        return ModelInfo(resolved.task, categories, background, resolved.preprocess, resolved.description, fast)
    from segbatch.models.resolve import load_bundle

    return ModelInfo.of(load_bundle(resolved, options))


def with_background(
    task: str, categories: tuple[str, ...], background_id: int | None
) -> tuple[tuple[str, ...], int | None]:
    """``(categories, background id)`` as the pipeline uses them: the given id, else the category
    named background; an instance model without one gets :data:`INSTANCE_BACKGROUND` as class 0
    (its labels shift by one, :meth:`segbatch.models.bundle.ModelBundle.check`)."""
    background = background_id if background_id is not None else background_index(categories)
    if task == "instance" and background is None:
        return (INSTANCE_BACKGROUND, *categories), 0
    return tuple(categories), background


def hf_fast_paths(model_type: str, head: str, task: str) -> str:
    """What a Hugging Face model's adapter uses, in words (:func:`segbatch.models.hf.build_hf`)."""
    if head == "universal":
        if task == "semantic":
            return "exact class map from the 384x384 class scores; BatchNorm folding"
        return "masks resampled only for queries above the score threshold; BatchNorm folding"
    if model_type == "upernet":
        return "exact class map from coarse logits via the input size; BatchNorm folding"
    return "exact class map from the model's logits; BatchNorm folding"


def check_class_count(what: str, task: str, categories: tuple[str, ...]) -> None:
    """A semantic model's class ids must fit the uint8 label maps."""
    if task == "semantic" and len(categories) > MAX_SEMANTIC_CLASSES:
        raise JobError(f"{what}: {len(categories)} classes; label maps hold at most {MAX_SEMANTIC_CLASSES}")
