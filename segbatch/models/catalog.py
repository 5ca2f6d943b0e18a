"""The built-in models as data: name, task, categories, preprocessing, default weights (no torch).

The driver plans a built-in model's job from this table and the checkpoint's own header
(:func:`builtin_info`), without importing torch or torchvision. The modules themselves are
built from the registry (:mod:`segbatch.models.zoo`, :mod:`segbatch.models.unet`), which takes
each torchvision model's categories, preprocessing and weights URL from its weight enum;
``tests/models/test_catalog.py`` checks that this table says the same for every entry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from segbatch.errors import JobError
from segbatch.models.info import ModelInfo, Task, background_index, check_class_count
from segbatch.models.preprocess import Preprocess

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "segbatch.checkpoint/1"

# torchvision.models._meta's _VOC_CATEGORIES and _COCO_CATEGORIES (the weight enums' "categories").
VOC_CATEGORIES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
COCO_CATEGORIES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# torchvision's SemanticSegmentation preset of the segmentation weights: shorter side 520, ImageNet mean/std.
VOC_PREPROCESS = Preprocess(resize=520, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# Mask R-CNN resizes and normalizes inside (GeneralizedRCNNTransform): the original image in [0, 1].
RCNN_PREPROCESS = Preprocess(resize=None, mean=None, std=None)
DEMO_CATEGORIES = ("background", "circle", "square", "triangle")
DEMO_PREPROCESS = Preprocess(resize=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
DEMO_KWARGS: dict[str, Any] = {"num_classes": len(DEMO_CATEGORIES), "base_channels": 16, "depth": 3}
RCNN_NOTE = "resizes inside to shorter side 800, longer <= 1333 (--min-size)"
_TV = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class DefaultWeights:
    """Where ``--weights DEFAULT`` comes from: a download URL (cached under TORCH_HOME) or a bundled file."""

    label: str
    url: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class ModelMeta:
    """What a model is, as plain values: shared by a catalog entry and a registry
    :class:`~segbatch.models.registry.ModelSpec` (which adds how to build it)."""

    name: str
    task: Task
    description: str
    categories: tuple[str, ...]
    preprocess: Preprocess
    default_weights: DefaultWeights | None


@dataclass(frozen=True)
class BuiltinEntry(ModelMeta):
    """One built-in model as data. ``classes_key``: the state_dict tensor whose first dimension
    is the class count; ``coarse``: whether the predictor takes the class map from the logits
    before the model's own final upsampling (:mod:`segbatch.stages.classmap`)."""

    classes_key: str
    coarse: bool = False
    default_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fast_paths(self) -> str:
        return fast_paths(self.task, self.coarse)


def fast_paths(task: str, coarse: bool) -> str:
    """What the predictor's adapters use for a built-in, in words (job.json, ``segbatch models``)."""
    if coarse:
        return "exact class map from coarse logits; BatchNorm folding; channels-last on CPU"
    return "BatchNorm folding" + ("; channels-last on CPU" if task == "semantic" else "")


def bundled_checkpoint() -> str:
    """Path of the demo U-Net trained on segbatch's generated shapes (scripts/train_demo_unet.py)."""
    return str(resources.files("segbatch") / "data" / "unet_shapes.pt")


def _semantic(name: str, arch: str, enum: str, file: str, classes_key: str = "classifier.4.weight") -> BuiltinEntry:
    return BuiltinEntry(name, "semantic", f"torchvision {arch}", VOC_CATEGORIES, VOC_PREPROCESS,
                        DefaultWeights(f"{enum}.COCO_WITH_VOC_LABELS_V1", _TV + file), classes_key, coarse=True,
                        default_kwargs={"num_classes": len(VOC_CATEGORIES)})  # fmt: skip


def _instance(name: str, arch: str, enum: str, file: str) -> BuiltinEntry:
    return BuiltinEntry(name, "instance", f"torchvision {arch}; {RCNN_NOTE}", COCO_CATEGORIES, RCNN_PREPROCESS,
                        DefaultWeights(f"{enum}.COCO_V1", _TV + file), "roi_heads.box_predictor.cls_score.weight",
                        default_kwargs={"num_classes": len(COCO_CATEGORIES)})  # fmt: skip


_UNET = BuiltinEntry(
    "unet",
    "semantic",
    "U-Net with transposed-convolution decoder blocks (DEFAULT: bundled shapes demo)",
    DEMO_CATEGORIES,
    DEMO_PREPROCESS,
    DefaultWeights("segbatch unet_shapes.pt", path=bundled_checkpoint()),
    "head.weight",
    default_kwargs=DEMO_KWARGS,
)
_ENTRIES = (
    _semantic("fcn_resnet50", "FCN, ResNet-50", "FCN_ResNet50_Weights", "fcn_resnet50_coco-1167a1af.pth"),
    _semantic("fcn_resnet101", "FCN, ResNet-101", "FCN_ResNet101_Weights", "fcn_resnet101_coco-7ecb50ca.pth"),
    _semantic(
        "deeplabv3_resnet50",
        "DeepLabV3 (atrous, ASPP), ResNet-50",
        "DeepLabV3_ResNet50_Weights",
        "deeplabv3_resnet50_coco-cd0a2569.pth",
    ),
    _semantic(
        "deeplabv3_resnet101",
        "DeepLabV3 (atrous, ASPP), ResNet-101",
        "DeepLabV3_ResNet101_Weights",
        "deeplabv3_resnet101_coco-586e9e4e.pth",
    ),
    _semantic(
        "deeplabv3_mobilenet_v3_large",
        "DeepLabV3 (atrous, ASPP), MobileNetV3-Large",
        "DeepLabV3_MobileNet_V3_Large_Weights",
        "deeplabv3_mobilenet_v3_large-fc3c493d.pth",
    ),
    _semantic(
        "lraspp_mobilenet_v3_large",
        "LRASPP, MobileNetV3-Large",
        "LRASPP_MobileNet_V3_Large_Weights",
        "lraspp_mobilenet_v3_large-d234d4ea.pth",
        "classifier.high_classifier.weight",
    ),
    _instance(
        "maskrcnn_resnet50_fpn",
        "Mask R-CNN, ResNet-50-FPN",
        "MaskRCNN_ResNet50_FPN_Weights",
        "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    ),
    _instance(
        "maskrcnn_resnet50_fpn_v2",
        "Mask R-CNN v2, ResNet-50-FPN",
        "MaskRCNN_ResNet50_FPN_V2_Weights",
        "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
    ),
    _UNET,
)
BUILTINS: dict[str, BuiltinEntry] = {e.name: e for e in _ENTRIES}


def torch_hub_dir() -> str:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, TORCH_HOME
    defaulting to ``$XDG_CACHE_HOME/torch`` (``~/.cache/torch``)."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return os.path.join(os.path.expanduser(home), "hub")


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint. Fields other than ``state_dict`` are None for a plain state_dict.
    ``state_dict`` values are tensors, or shape stand-ins where read without torch."""

    state_dict: Mapping[str, Any]
    arch: str | None = None
    categories: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    model_kwargs: Mapping[str, Any] | None = None


def interpret_checkpoint(obj: Any, source: str, is_tensor: type | tuple[type, ...]) -> Checkpoint:
    """What ``torch.load`` (or :func:`~segbatch.models.checkpoint_header.read_checkpoint`) gave
    → :class:`Checkpoint`: a segbatch checkpoint, or a plain state_dict of ``is_tensor`` values."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        try:
            return Checkpoint(
                state_dict=obj["state_dict"],
                arch=str(obj["arch"]),
                categories=tuple(str(c) for c in obj["categories"]),
                preprocess=Preprocess.from_dict(obj["preprocess"]),
                model_kwargs=dict(obj.get("model_kwargs") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise JobError(f"segbatch checkpoint {source!r} is malformed: missing or bad field {err}") from err
    if isinstance(obj, Mapping) and obj and all(isinstance(v, is_tensor) for v in obj.values()):
        return Checkpoint(state_dict=obj)
    raise JobError(
        f"weights {source!r} hold a {type(obj).__name__}, not a state_dict (a mapping of names to tensors) "
        f"or a segbatch checkpoint (format {CHECKPOINT_FORMAT!r})"
    )


def check_arch(ckpt: Checkpoint, source: str, name: str) -> None:
    if ckpt.arch is not None and ckpt.arch != name:
        raise JobError(f"weights {source!r} are a checkpoint of model {ckpt.arch!r}, not {name!r}; "
                       f"run with --model {ckpt.arch}")  # fmt: skip


def class_names(
    name: str, task: str, default: tuple[str, ...], num_classes: int, ckpt: Checkpoint, source: str
) -> tuple[str, ...]:
    """The names of a built-in's ``num_classes`` classes: the checkpoint's own, else the default
    weights' when the count matches, else ``class_0…`` (with a warning)."""
    categories = ckpt.categories or (default if num_classes == len(default) else None)
    if categories is None:
        categories = tuple(f"class_{i}" for i in range(num_classes))
        log.warning(
            "weights %r have %d classes but carry no names; calling them class_0..class_%d "
            "(a segbatch checkpoint carries names)",
            source,
            num_classes,
            num_classes - 1,
        )
    if len(categories) != num_classes:
        raise JobError(f"weights {source!r} name {len(categories)} categories for {num_classes} classes")
    check_class_count(f"model {name!r}", task, tuple(categories))
    return tuple(categories)


def builtin_info(name: str, checkpoint: bytes | None, source: str) -> ModelInfo | None:
    """A built-in's :class:`ModelInfo` from this table and its checkpoint's header, without torch;
    None when ``name`` is not in the table (a model registered by user code) or the checkpoint
    cannot be read without torch (the caller builds the model then)."""
    from segbatch.models.checkpoint_header import TensorShape, read_checkpoint

    entry = BUILTINS.get(name)
    if entry is None:
        return None
    categories, preprocess = entry.categories, entry.preprocess
    if checkpoint is not None:
        obj = read_checkpoint(checkpoint)
        if obj is None:
            return None
        ckpt = interpret_checkpoint(obj, source, TensorShape)
        check_arch(ckpt, source, name)
        if ckpt.model_kwargs is not None:  # a segbatch checkpoint records the model's size
            kwargs = {**entry.default_kwargs, **ckpt.model_kwargs}
            num_classes = int(kwargs.get("num_classes", len(entry.categories)))
        else:  # a plain state_dict: the class head's first dimension
            head = ckpt.state_dict.get(entry.classes_key)
            if not isinstance(head, TensorShape) or not head.shape:
                raise JobError(f"weights {source!r} do not look like a state_dict of {name!r}: "
                               f"no key {entry.classes_key!r}")  # fmt: skip
            num_classes = head.shape[0]
        categories = class_names(name, entry.task, entry.categories, num_classes, ckpt, source)
        preprocess = ckpt.preprocess or entry.preprocess
    return ModelInfo(entry.task, categories, background_index(categories), preprocess, entry.description,
                     entry.fast_paths)  # fmt: skip
