"""segmentation-models-pytorch models: ``smp:FOLDER_OR_HUB_ID`` (``pip install 'segbatch[smp]'``).

The folder is what smp's ``model.save_pretrained(folder)`` writes: ``config.json`` (the
architecture in ``_model_class``, the encoder, ``classes``, …) and ``model.safetensors``.
The model is rebuilt from that config with ``encoder_weights=None`` (nothing is downloaded:
the checkpoint holds every weight) and loaded strictly from the safetensors.

Preprocessing: the encoder's normalisation (smp's ``get_preprocessing_params``: timm's
pretrained config for ``tu-`` encoders, smp's own hub config for the others: cached or
downloaded on the driver), no resize, and the size rounded up to a multiple of the encoder's
output stride where the architecture needs it; a ``--model-card`` overrides any of it.
Categories: the card's, else ``id2label``/``categories`` in config.json, else ``class_0…``
(with a warning). A one-class (binary) model becomes background vs. that class: its logit
(or sigmoid probability) against 0 (0.5).

Fast paths: BatchNorm folding (smp's ``Conv2dReLU`` blocks are ``Sequential``); channels-last
on the CPU. The exact class-map shortcut applies to the resampling to the original size;
smp's heads that upsample do so with ``align_corners=True``, so their own upsampling stays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from segbatch.errors import JobError
from segbatch.models.bundle import ModelBundle, ModelOptions, tensor_output
from segbatch.models.card import ModelCard
from segbatch.models.fold import fold_batchnorm
from segbatch.models.preprocess import Preprocess
from segbatch.models.resolve import ResolvedModel, files_sha256, is_folder_ref, read_folder, refuse_pickled

log = logging.getLogger(__name__)

MONOTONE = (None, "identity", "sigmoid", "softmax", "softmax2d", "logsoftmax", "tanh")


def resolve_smp(
    target: str,
    *,
    task: str | None,
    card: ModelCard | None,
    revision: str | None,
    storage_options: Mapping[str, Any] | None,
) -> ResolvedModel:
    """Driver side of ``smp:TARGET``."""
    what = f"smp:{target}"
    if (task or (card.task if card else None)) not in (None, "semantic"):
        raise JobError(f"{what}: segmentation-models-pytorch models are semantic; --task {task!r} does not apply")
    seen: list[str] = []

    def keep(rel: str) -> bool:
        seen.append(rel)
        return rel.endswith((".json", ".safetensors"))

    commit = None
    if is_folder_ref(target):
        if revision is not None:
            raise JobError(f"--model-revision {revision!r} applies to hub ids, not the folder {target!r}")
        files = read_folder(target, "smp model folder", keep, storage_options)
        source = target
    else:
        from segbatch.models.hub import snapshot

        folder, commit = snapshot(target, revision, what)
        files = read_folder(folder, "smp model snapshot", keep)
        source = f"smp:{target}@{commit}"
    if "config.json" not in files:
        raise JobError(f"{what} has no config.json (found {sorted(seen)[:8]}); expected an smp save_pretrained folder")
    refuse_pickled(files, seen, what)
    config = _config(files, what)
    module = _build(config, what)  # randomly initialised: only its shape and stride are read here
    classes = int(config.get("classes", 1))
    categories = _categories(config, classes, what, card)
    base = None
    if card is None or card.preprocessing is None or not all(k in card.preprocessing for k in ("mean", "std")):
        base = _encoder_preprocess(config, module, what)
    preprocess = card.preprocess(base) if card is not None else base
    assert preprocess is not None
    return ResolvedModel(
        kind="smp",
        ref=f"smp:{target}",
        task="semantic",
        files=files,
        sha256=files_sha256(files),
        source=source,
        description=f"segmentation-models-pytorch {config['_model_class']}, encoder {config.get('encoder_name')}",
        categories=categories,
        preprocess=preprocess,
        card=card,
        revision=revision,
        settings={"architecture": str(config["_model_class"]), "commit": commit},
    )


def _config(files: Mapping[str, bytes], what: str) -> dict[str, Any]:
    try:
        config = json.loads(files["config.json"])
    except ValueError as err:
        raise JobError(f"{what}/config.json is not valid JSON: {err}") from None
    if not isinstance(config, dict) or "_model_class" not in config:
        raise JobError(f"{what}/config.json has no _model_class: not written by smp's save_pretrained")
    if config.get("activation") not in MONOTONE:
        raise JobError(
            f"{what}: activation {config.get('activation')!r} does not keep the class order; "
            f"valid: {', '.join(str(a) for a in MONOTONE)}"
        )
    return config


def _smp(sub: str = "") -> Any:
    """segmentation_models_pytorch (or one of its modules), imported only where used (untyped)."""
    import importlib

    return importlib.import_module("segmentation_models_pytorch" + (f".{sub}" if sub else ""))


def _build(config: Mapping[str, Any], what: str) -> nn.Module:
    smp = _smp()
    name = str(config["_model_class"])
    cls = getattr(smp, name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise JobError(f"{what}: unknown smp architecture {name!r} in config.json _model_class")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("id2label", "categories")}
    kwargs["encoder_weights"] = None  # the checkpoint holds the encoder's weights: download nothing
    try:
        return cls(**kwargs)
    except Exception as err:
        raise JobError(f"{what}: cannot build smp.{name} from config.json: {type(err).__name__}: {err}") from None


def _categories(config: Mapping[str, Any], classes: int, what: str, card: ModelCard | None) -> tuple[str, ...]:
    names: tuple[str, ...] | None = None
    if card is not None and card.categories is not None:
        names = card.categories
    elif isinstance(config.get("id2label"), Mapping):
        id2label = config["id2label"]
        names = tuple(str(id2label.get(str(i), id2label.get(i, f"class_{i}"))) for i in range(classes))
    elif isinstance(config.get("categories"), list):
        names = tuple(str(c) for c in config["categories"])
    expected = 2 if classes == 1 else classes
    if names is None:
        names = ("background", "class_1") if classes == 1 else tuple(f"class_{i}" for i in range(classes))
        shown = ", ".join(names[:4])
        log.warning("%s has %d classes but carries no names; calling them %s (a --model-card names them)", what,
                    classes, shown)  # fmt: skip
    if classes == 1 and len(names) == 1:
        names = ("background", names[0])
    if len(names) != expected:
        src = f"model card {card.source!r}" if card is not None and card.categories is not None else "config.json"
        raise JobError(
            f"{src} names {len(names)} categories but {what} has {classes} output channel(s)"
            + (" (a binary model: name the background and the class, or the class alone)" if classes == 1 else "")
        )
    return names


def _encoder_preprocess(config: Mapping[str, Any], module: nn.Module, what: str) -> Preprocess:
    get_preprocessing_params = _smp("encoders").get_preprocessing_params
    encoder = str(config.get("encoder_name"))
    try:
        params = get_preprocessing_params(encoder, pretrained=config.get("encoder_weights") or "imagenet")
    except Exception as err:
        raise JobError(
            f"{what}: cannot read the normalisation of encoder {encoder!r} ({type(err).__name__}: {err}); "
            "give preprocessing (mean, std) in a --model-card"
        ) from None
    lo, hi = (float(v) for v in params.get("input_range", (0, 1)))
    if lo != 0 or hi not in (1.0, 255.0):
        raise JobError(
            f"{what}: encoder {encoder!r} takes input range {[lo, hi]}; give preprocessing in a --model-card"
        )
    m: Any = module
    divisor = int(m.encoder.output_stride) if getattr(m, "requires_divisible_input_shape", True) else 0
    return Preprocess(
        resize=None,
        size_divisor=divisor,
        rescale=1 / 255 if hi == 1.0 else None,
        mean=tuple(float(v) for v in params["mean"]),
        std=tuple(float(v) for v in params["std"]),
        channel_order=str(params.get("input_space", "RGB")).upper(),
    )


def build_smp(resolved: ResolvedModel, options: ModelOptions) -> ModelBundle:
    """Actor side: rebuild from config.json, load model.safetensors strictly."""
    from safetensors.torch import load as load_safetensors

    from segbatch.models.weights import check_shapes

    what = resolved.ref
    config = _config(resolved.files, what)
    module = _build(config, what)
    name = next((n for n in sorted(resolved.files) if n.endswith(".safetensors")), None)
    assert name is not None  # refuse_pickled on the driver
    try:
        state = load_safetensors(resolved.files[name])
    except Exception as err:
        raise JobError(f"{what}/{name} is not a valid safetensors file: {type(err).__name__}: {err}") from None
    check_shapes(
        module, state, f"{what}/{name}", what, fix="config.json and the weights must come from one save_pretrained"
    )
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise JobError(
            f"{what}/{name} does not fit smp.{config['_model_class']} built from config.json: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}"
        )
    assert resolved.categories is not None and resolved.preprocess is not None
    binary = int(config.get("classes", 1)) == 1
    bundle = ModelBundle(
        module=module,
        task="semantic",
        categories=resolved.categories,
        preprocess=resolved.preprocess,
        semantic=_binary(config.get("activation") == "sigmoid") if binary else _logits,
        background_id=resolved.card.background_id(resolved.categories) if resolved.card else None,
        name=what,
        description=resolved.description,
        fold=fold_batchnorm,
        fast_paths="exact class map from the model's logits; BatchNorm folding; channels-last on CPU",
    )
    return bundle.check(what)


def _logits(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """smp's forward: masks ``(N, C, h, w)`` (with a classification head: ``(masks, labels)``)."""
    return tensor_output(module(x)), None


def _binary(sigmoid: bool) -> Any:
    """One output channel → two: a constant (0 for logits, 0.5 for sigmoid probabilities) for
    the background, the channel for the class; the argmax is then ``channel > constant``
    (ties, exactly at the constant, go to the background)."""

    def semantic(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        z = tensor_output(module(x))
        return torch.cat([torch.full_like(z, 0.5 if sigmoid else 0.0), z], dim=1), None

    return semantic
