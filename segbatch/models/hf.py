"""Hugging Face transformers models: ``hf:HUB_ID_OR_FOLDER`` (``pip install 'segbatch[hf]'``).

Two head families:
  * semantic heads, ``AutoModelForSemanticSegmentation`` (SegFormer, UperNet, DPT, BEiT,
    Data2Vec-Vision, MobileViT, …): ``--task semantic`` (the default);
  * universal heads, ``AutoModelForUniversalSegmentation`` (Mask2Former, MaskFormer):
    ``--task semantic`` or ``--task instance`` (required: their config does not say which).

Output equals transformers' own recipe (image processor → model →
``post_process_semantic_segmentation`` / ``post_process_instance_segmentation`` with the
original size), computed the same way:
  * preprocessing comes from the model's image processor, read on the driver into a
    :class:`Preprocess` (resize rule, resample filter of the backend transformers picks —
    torchvision v2's antialiased uint8 resize or Pillow's —, rescale, mean/std, centre crop, channel
    order) and checked there against the processor itself on a probe image; the read stage
    then resizes the uint8 image as the processor does, and the actor normalizes on the device;
  * semantic: the logits are resampled bilinearly to the original size and argmaxed as
    ``post_process_semantic_segmentation`` does, through the exact class-map shortcut
    (:mod:`segbatch.stages.classmap`): SegFormer's 1/4-size logits are upsampled once, as in
    its recipe; UperNet's forward ends with an upsampling to the input size, so its logits
    are taken before it (``via``) and its auxiliary head is skipped;
  * Mask2Former/MaskFormer: the recipe's query scores, masks (resampled to 384×384 for
    Mask2Former, as the recipe does), thresholds and nearest resampling to the original size.

Fast paths: exact class map from coarse logits (all semantic heads); BatchNorm folded
into the convolutions of the decode heads (SegFormer, UperNet, BEiT, Data2Vec, MobileViT:
:data:`segbatch.models.fold.NAMED_PAIRS`) and of every ``Sequential``; NCHW (these are
transformers, not measured faster in channels-last here).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from segbatch.errors import JobError
from segbatch.models.bundle import InstanceResult, ModelBundle, ModelOptions, Task
from segbatch.models.card import ModelCard
from segbatch.models.fold import fold_named_pairs
from segbatch.models.info import hf_fast_paths
from segbatch.models.preprocess import Preprocess
from segbatch.models.resolve import (
    ResolvedModel,
    files_sha256,
    is_folder_ref,
    read_folder,
    refuse_pickled,
    write_folder,
)

# Universal heads: model_type → the size its post-processing resamples mask logits to first.
UNIVERSAL: dict[str, tuple[int, int] | None] = {"mask2former": (384, 384), "maskformer": None}
NOT_SUPPORTED = {
    "oneformer": "OneFormer needs its CLIP tokenizer's task inputs and a class-info file from the hub; "
    "export it with torch.export and run it as export:FILE.pt2 with a model card"
}
# Images per forward pass on a CPU (ModelBundle.cpu_batch): SegFormer-B0 at 512 px on 2 threads
# ran 2.3-2.9 img/s at 1, 4.3-4.8 at 2, 4.0 at 4 and 3.8 at 8.
HF_CPU_BATCH = 2
PROBE_TOLERANCE = 1e-3  # normalized units: one uint8 level is ≥ 1/255/std ≈ 0.004 for ImageNet std


def _keep(rel: str) -> bool:
    return rel.endswith((".json", ".safetensors"))


def resolve_hf(
    target: str,
    *,
    task: str | None,
    card: ModelCard | None,
    revision: str | None,
    storage_options: Mapping[str, Any] | None,
) -> ResolvedModel:
    """Driver side of ``hf:TARGET``: read the folder (or the hub snapshot) whole, decide task,
    categories and preprocessing; :class:`JobError` for anything that would fail later."""
    what = f"hf:{target}"
    seen: list[str] = []

    def keep(rel: str) -> bool:
        seen.append(rel)
        return _keep(rel)

    commit = None
    if is_folder_ref(target):
        if revision is not None:
            raise JobError(f"--model-revision {revision!r} applies to hub ids, not the folder {target!r}")
        files = read_folder(target, "Hugging Face model folder", keep, storage_options)
        source = target
    else:
        from segbatch.models.hub import snapshot

        folder, commit = snapshot(target, revision, what)
        files = read_folder(folder, "Hugging Face model snapshot", keep)
        source = f"hf:{target}@{commit}"
    if "config.json" not in files:
        raise JobError(f"{what} has no config.json (found {sorted(seen)[:8]}); expected a save_pretrained folder")
    refuse_pickled(files, seen, what)
    config = _json(files["config.json"], f"{what}/config.json")
    model_type = str(config.get("model_type", ""))
    architectures = [str(a) for a in config.get("architectures") or []]
    if model_type in NOT_SUPPORTED:
        raise JobError(f"{what}: {NOT_SUPPORTED[model_type]}")
    task = task or (card.task if card else None)
    if model_type in UNIVERSAL:
        head = "universal"
        if task is None:
            raise JobError(
                f"{what} is a universal {model_type} model: pass --task semantic or --task instance "
                "(its config does not say which it was trained for)"
            )
    elif any(a.endswith("ForSemanticSegmentation") for a in architectures):
        head = "semantic"
        if task not in (None, "semantic"):
            raise JobError(
                f"{what} ({architectures[0]}) is a semantic segmentation model; --task {task!r} does not apply"
            )
        task = "semantic"
    else:
        raise JobError(
            f"{what} is a {model_type or 'model'} with architectures {architectures}; segbatch runs "
            "*ForSemanticSegmentation models and the universal heads (Mask2Former, MaskFormer)"
        )
    categories = _categories(config, what, card)
    base, processor = _processor_preprocess(files, model_type, what) if _needs_processor(card) else (None, "")
    preprocess = card.preprocess(base) if card is not None else base
    assert preprocess is not None  # _needs_processor made sure
    return ResolvedModel(
        kind="hf",
        ref=f"hf:{target}",
        task=task,  # type: ignore[arg-type]  # checked against TASKS above
        files=files,
        sha256=files_sha256(files),
        source=source,
        description=f"transformers {architectures[0] if architectures else model_type}",
        categories=categories,
        preprocess=preprocess,
        card=card,
        revision=revision,
        settings={"model_type": model_type, "head": head, "commit": commit, "image_processor": processor},
    )


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as err:
        raise JobError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise JobError(f"{what} must hold a JSON object")
    return value


def _categories(config: Mapping[str, Any], what: str, card: ModelCard | None) -> tuple[str, ...]:
    id2label = config.get("id2label") or {}
    try:
        ids = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise JobError(f"{what}/config.json: id2label keys must be class ids, got {list(id2label)[:5]}") from None
    num = int(config.get("num_labels") or len(ids))
    if card is not None and card.categories is not None:
        if len(card.categories) != num:
            raise JobError(
                f"model card {card.source!r} names {len(card.categories)} categories but {what} has {num} "
                f"output classes (config.json id2label/num_labels)"
            )
        return card.categories
    if not ids:
        raise JobError(f"{what}/config.json has no id2label; name the categories in a --model-card")
    # Gaps in id2label become placeholders, as torchvision's COCO list has "N/A".
    return tuple(ids.get(i, "N/A") for i in range(max(num, max(ids) + 1)))


def _needs_processor(card: ModelCard | None) -> bool:
    """Whether the image processor must be read: unless the card gives resize, mean and std itself."""
    pre = card.preprocessing if card is not None else None
    return pre is None or not all(k in pre for k in ("resize", "mean", "std"))


def _processor_preprocess(files: Mapping[str, bytes], model_type: str, what: str) -> tuple[Preprocess, str]:
    """The model's image processor (the backend transformers picks) as a :class:`Preprocess`,
    checked against the processor itself on a probe image."""
    from transformers import AutoImageProcessor

    if "preprocessor_config.json" not in files:
        raise JobError(
            f"{what} has no preprocessor_config.json; save the image processor with the model "
            "(processor.save_pretrained) or give preprocessing in a --model-card"
        )
    with tempfile.TemporaryDirectory(prefix="segbatch-hf-") as tmp:
        write_folder({k: v for k, v in files.items() if k.endswith(".json")}, tmp)
        try:
            processor = AutoImageProcessor.from_pretrained(tmp, local_files_only=True)
        except Exception as err:
            raise JobError(f"{what}: cannot read its image processor: {type(err).__name__}: {err}") from None
    pre = processor_to_preprocess(processor, model_type, what)
    verify_against_processor(pre, processor, what)
    return pre, type(processor).__name__


def _size(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)


def processor_to_preprocess(processor: Any, model_type: str, what: str) -> Preprocess:
    """Read an image processor's settings into a :class:`Preprocess`; :class:`JobError` for a
    setting segbatch does not reproduce (then a model card can state the preprocessing)."""
    name = type(processor).__name__
    pillow = not _torchvision_backend(processor)
    unsupported = [
        k
        for k, bad in (
            ("keep_aspect_ratio", bool(getattr(processor, "keep_aspect_ratio", False))),
            ("ensure_multiple_of", int(getattr(processor, "ensure_multiple_of", 1) or 1) != 1),
            ("do_pad", bool(getattr(processor, "do_pad", False))),
        )
        if bad
    ]
    if unsupported:
        raise JobError(
            f"{what}: its {name} uses {', '.join(unsupported)}, which segbatch does not reproduce; "
            "give the preprocessing in a --model-card"
        )
    resize: int | tuple[int, int] | None = None
    longest = None
    if getattr(processor, "do_resize", True):
        size = processor.size
        h, w, short, long = (_size(size, k) for k in ("height", "width", "shortest_edge", "longest_edge"))
        if h and w:
            resize = (int(h), int(w))
        elif short:
            resize, longest = int(short), (int(long) if long else None)
        else:
            raise JobError(f"{what}: {name} resizes by {size}, which segbatch does not reproduce; use a --model-card")
    filters = {2: "bilinear", 3: "bicubic", 0: "nearest", 1: "lanczos", 4: "box", 5: "hamming"}
    kind = filters.get(int(getattr(processor, "resample", 2)))
    if kind is None:
        raise JobError(
            f"{what}: {name} resamples with filter {processor.resample!r}, which segbatch does not reproduce"
        )
    if pillow:
        resample = f"pillow-{kind}"
    elif kind in ("bilinear", "bicubic"):
        resample = "torch-antialias-uint8" if kind == "bilinear" else "torch-bicubic"
    else:
        raise JobError(
            f"{what}: {name} (torchvision backend) resamples with {kind}, which segbatch does not reproduce; "
            "use a --model-card"
        )
    crop = None
    if getattr(processor, "do_center_crop", False):
        crop = (int(_size(processor.crop_size, "height")), int(_size(processor.crop_size, "width")))
    normalize = bool(getattr(processor, "do_normalize", False))
    return Preprocess(
        resize=resize,
        longest_edge=longest,
        # Universal heads' processors round the resized size up to size_divisor (stretching);
        # elsewhere size_divisor means padding, refused above with do_pad.
        size_divisor=int(getattr(processor, "size_divisor", 0) or 0) if model_type in UNIVERSAL else 0,
        crop=crop,
        resample=resample,
        rescale=float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else None,
        mean=tuple(float(v) for v in _triple(processor.image_mean)) if normalize else None,
        std=tuple(float(v) for v in _triple(processor.image_std)) if normalize else None,
        channel_order="BGR" if getattr(processor, "do_flip_channel_order", False) else "RGB",
    )


def _torchvision_backend(processor: Any) -> bool:
    """Whether ``processor`` resizes with torchvision (transformers 5's ``TorchvisionBackend``,
    its default; transformers 4's "fast" processors); every other one resizes with Pillow."""
    import importlib

    for module, name in (
        ("transformers.image_processing_backends", "TorchvisionBackend"),  # transformers 5
        ("transformers.image_processing_utils_fast", "BaseImageProcessorFast"),  # transformers 4
    ):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        return isinstance(processor, cls)
    return False


def _triple(value: Any) -> list[float]:
    return [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]


def probe_image(height: int = 181, width: int = 243) -> np.ndarray:
    """A seeded photo-like ``(H, W, 3) uint8`` image: smooth gradients, edges and noise."""
    rng = np.random.default_rng(12345)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], axis=-1)
    base[(yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (height / 4) ** 2] = (200, 40, 90)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def verify_against_processor(pre: Preprocess, processor: Any, what: str) -> None:
    """Run ``processor`` and ``pre`` on :func:`probe_image` (landscape and portrait); raise
    :class:`JobError` when the shapes differ or any value differs by more than rounding."""
    from PIL import Image

    for shape in ((181, 243), (243, 181)):
        rgb = probe_image(*shape)
        theirs = processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"][0].float()
        ours = pre.normalize(torch.from_numpy(pre.resize_chw(rgb))[None])[0]
        if tuple(theirs.shape) != tuple(ours.shape):
            raise JobError(
                f"{what}: its {type(processor).__name__} makes a {tuple(theirs.shape)} input from a "
                f"{shape[0]}x{shape[1]} image, segbatch's reading of it {tuple(ours.shape)}; "
                "give the preprocessing in a --model-card"
            )
        diff = float((theirs - ours).abs().max())
        if diff > PROBE_TOLERANCE:
            raise JobError(
                f"{what}: segbatch's reading of its {type(processor).__name__} ({pre.to_dict()}) differs from the "
                f"processor by up to {diff:.3g} on a probe image; give the preprocessing in a --model-card"
            )


def build_hf(resolved: ResolvedModel, options: ModelOptions) -> ModelBundle:
    """Actor side: the model from the shipped files (written to a private temp folder for
    ``from_pretrained``, safetensors only), with its adapters."""
    from transformers import AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation

    settings = resolved.settings
    model_type, head = str(settings["model_type"]), str(settings["head"])
    auto = AutoModelForUniversalSegmentation if head == "universal" else AutoModelForSemanticSegmentation
    with tempfile.TemporaryDirectory(prefix="segbatch-hf-") as tmp:
        write_folder(resolved.files, tmp)
        try:
            module = auto.from_pretrained(tmp, local_files_only=True, use_safetensors=True, dtype=torch.float32)
        except Exception as err:
            raise JobError(f"{resolved.ref}: cannot load the model: {type(err).__name__}: {err}") from None
    module.eval()
    assert resolved.categories is not None and resolved.preprocess is not None
    task: Task = resolved.task
    bundle = ModelBundle(
        module=module,
        task=task,
        categories=resolved.categories,
        preprocess=resolved.preprocess,
        background_id=resolved.card.background_id(resolved.categories) if resolved.card else None,
        name=resolved.ref,
        description=resolved.description,
        fold=fold_named_pairs,
        channels_last=False,
        cpu_batch=HF_CPU_BATCH,
    )
    bundle.fast_paths = hf_fast_paths(model_type, head, task)
    if head == "universal":
        mask_size = UNIVERSAL[model_type]
        if task == "semantic":
            bundle.semantic = universal_semantic(mask_size)
        else:
            bundle.instance = universal_instance(mask_size)
    elif model_type == "upernet":
        module.auxiliary_head = None  # training only; its forward pass is skipped
        bundle.semantic = upernet_coarse
    else:
        if getattr(module, "auxiliary_head", None) is not None:
            module.auxiliary_head = None
        bundle.semantic = semantic_logits
    return bundle.check(resolved.ref)


def semantic_logits(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """``*ForSemanticSegmentation``: its logits, at whatever size the head makes them (SegFormer
    1/4, MobileViT 1/32, BEiT 1/4, DPT ×2 of its patches), resampled once to the original size."""
    return module(pixel_values=x).logits, None


def upernet_coarse(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """``UperNetForSemanticSegmentation.forward`` up to, not including, its bilinear upsampling
    of the logits to the input size (``via``); the auxiliary head is not run."""
    m: Any = module  # transformers' attributes, untyped here
    features = m.backbone.forward_with_filtered_kwargs(x).feature_maps
    return m.decode_head(features), (int(x.shape[-2]), int(x.shape[-1]))


def universal_semantic(mask_size: tuple[int, int] | None) -> Any:
    """Mask2Former/MaskFormer ``post_process_semantic_segmentation`` before its resize: class
    probabilities (null class dropped) × mask probabilities, ``(N, C, h, w)``."""

    def semantic(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        out = module(pixel_values=x)
        masks = out.masks_queries_logits
        if mask_size is not None:
            masks = nnf.interpolate(masks, size=mask_size, mode="bilinear", align_corners=False)
        classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]
        return torch.einsum("bqc, bqhw -> bchw", classes, masks.sigmoid()), None

    return semantic


def universal_instance(mask_size: tuple[int, int] | None) -> Any:
    """Mask2Former/MaskFormer ``post_process_instance_segmentation`` (``return_binary_maps``):
    top-k (class, query) pairs, score = class probability × mean mask probability inside the
    mask, masks = logit > logit(mask_threshold) (0 at the default 0.5, as the recipe's ``> 0``),
    resampled (nearest) to the original size, kept when score ≥ the threshold and not empty.
    Only the kept queries' masks are resampled to full size: the same result, a fraction of
    the memory."""

    def instance(
        module: nn.Module, images: list[torch.Tensor], sizes: list[tuple[int, int]], options: ModelOptions
    ) -> list[InstanceResult]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(i)
        results: list[InstanceResult] = [None] * len(images)  # type: ignore[list-item]
        t = min(max(options.mask_threshold, 1e-7), 1 - 1e-7)
        cut = 0.0 if options.mask_threshold == 0.5 else math.log(t / (1 - t))
        for idx in groups.values():
            out = module(pixel_values=torch.stack([images[i] for i in idx]))
            masks_all = out.masks_queries_logits
            if mask_size is not None:
                masks_all = nnf.interpolate(masks_all, size=mask_size, mode="bilinear", align_corners=False)
            for j, i in enumerate(idx):
                results[i] = _instances(out.class_queries_logits[j], masks_all[j], sizes[i], cut, options)
        return results

    return instance


def _instances(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int], cut: float, options: ModelOptions
) -> InstanceResult:
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    scores = class_logits.softmax(dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=scores.device).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    top_scores, top = scores.flatten(0, 1).topk(num_queries, sorted=False)
    top_labels = labels[top]
    queries = torch.div(top, num_classes, rounding_mode="floor")
    pred = mask_logits[queries]
    binary = (pred > cut).float()
    mask_scores = (pred.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    final = top_scores * mask_scores
    keep = (final >= options.score_threshold).nonzero().squeeze(1)
    full = nnf.interpolate(binary[keep].unsqueeze(0), size=size, mode="nearest")[0] if len(keep) else None
    if full is None:
        return np.zeros((0, *size), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.float32)
    nonempty = full.flatten(1).any(1)
    keep, full = keep[nonempty], full[nonempty]
    return (
        full.to(torch.uint8).cpu().numpy(),
        top_labels[keep].cpu().numpy().astype(np.int64),
        final[keep].float().cpu().numpy().astype(np.float32),
    )
