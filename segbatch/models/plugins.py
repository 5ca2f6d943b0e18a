"""Plugins: ``--model module:function`` or a name registered in the ``segbatch.models`` entry-point group.

The function is called once on the driver and once in each model actor, as
``function(weights)`` (or ``function()`` when it takes no argument), where ``weights`` is
the content of ``--weights`` as bytes (read once on the driver and shipped to the actors),
or None for ``--weights DEFAULT`` / ``none`` (the plugin then builds its own default, e.g.
from files its package installs). It returns a :class:`~segbatch.models.bundle.ModelBundle`,
or a mapping with the same keys::

    {"module": nn.Module,                 # eval mode is set by segbatch
     "task": "semantic" | "instance",
     "categories": ["background", ...],   # class id i → name
     "preprocess": Preprocess(...) or {"resize": 512, "mean": [...], "std": [...], ...},
     # optional: "background", "semantic", "instance" (forward adapters), "description"}

A pip package registers models by name in its ``pyproject.toml``::

    [project.entry-points."segbatch.models"]
    road-unet = "mypkg.models:build_model"

and ``segbatch run --model road-unet`` then finds it; ``segbatch models`` lists it. The
package must be installed wherever the model actors run (the function runs there). The
built-in models are built into the same bundle.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

import torch

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.models.bundle import ModelBundle, ModelOptions, tensor_output
from segbatch.models.card import ModelCard
from segbatch.models.preprocess import Preprocess
from segbatch.models.resolve import ResolvedModel

ENTRY_POINT_GROUP = "segbatch.models"
BUNDLE_KEYS = (
    "module",
    "task",
    "categories",
    "preprocess",
    "background",
    "semantic",
    "instance",
    "description",
    "name",
)
PROBE_SIZE = (256, 256)


def entry_points() -> list[metadata.EntryPoint]:
    """The installed ``segbatch.models`` entry points (none is loaded)."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def entry_point_names() -> list[str]:
    return [ep.name for ep in entry_points()]


def _entry_point(name: str) -> metadata.EntryPoint:
    for ep in entry_points():
        if ep.name == name:
            return ep
    raise JobError(f"no {ENTRY_POINT_GROUP!r} entry point named {name!r}; installed: {entry_point_names()}")


def load_function(ref: str, what: str) -> Callable[..., Any]:
    """``"pkg.module:attr.path"`` → the callable; :class:`JobError` naming what failed."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:
        raise JobError(
            f"plugin {what}: cannot import module {module_name!r} ({type(err).__name__}: {err}); "
            "install the package that provides it, or use a model prefix: hf:, smp:, export:"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise JobError(f"plugin {what}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise JobError(f"plugin {what}: {ref!r} is a {type(obj).__name__}, not a function")
    return obj


def call_plugin(fn: Callable[..., Any], weights: bytes | None, what: str, card: ModelCard | None) -> ModelBundle:
    """Call the plugin function and turn what it returns into a checked bundle (card applied)."""
    try:
        takes_args = bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        takes_args = True
    try:
        out = fn(weights) if takes_args else fn()
    except JobError:
        raise
    except Exception as err:
        raise JobError(f"plugin {what} raised {type(err).__name__}: {err}") from None
    bundle = _as_bundle(out, what)
    if card is not None:
        _apply_card(bundle, card, what)
    return bundle.check(f"plugin {what}")


def _as_bundle(out: Any, what: str) -> ModelBundle:
    if isinstance(out, ModelBundle):
        return out
    if not isinstance(out, Mapping):
        raise JobError(
            f"plugin {what} returned a {type(out).__name__}; expected a segbatch ModelBundle or a mapping with "
            f"keys module, task, categories, preprocess"
        )
    unknown = sorted(str(k) for k in out if k not in BUNDLE_KEYS)
    missing = [k for k in ("module", "task", "categories", "preprocess") if k not in out]
    if unknown or missing:
        raise JobError(
            f"plugin {what} returned a mapping with "
            + (f"unknown keys {unknown} " if unknown else "")
            + (f"without {missing} " if missing else "")
            + f"(valid keys: {', '.join(BUNDLE_KEYS)})"
        )
    pre = out["preprocess"]
    if isinstance(pre, Mapping):
        pre = Preprocess.from_dict(pre)
    background = out.get("background")
    categories = out["categories"]
    if isinstance(background, str):
        if not isinstance(categories, list | tuple) or background not in categories:
            raise JobError(f"plugin {what}: background {background!r} is not one of its categories")
        background = list(categories).index(background)
    return ModelBundle(
        module=out["module"],
        task=out["task"],
        categories=categories,
        preprocess=pre,
        semantic=out.get("semantic"),
        instance=out.get("instance"),
        background_id=background,
        name=str(out.get("name") or ""),
        description=str(out.get("description") or ""),
    )


def _apply_card(bundle: ModelBundle, card: ModelCard, what: str) -> None:
    if card.task is not None and card.task != bundle.task:
        raise JobError(f"model card {card.source!r} says task {card.task!r}, plugin {what} is {bundle.task!r}")
    if card.categories is not None:
        if len(card.categories) != len(bundle.categories):
            raise JobError(
                f"model card {card.source!r} names {len(card.categories)} categories, "
                f"plugin {what} has {len(bundle.categories)}"
            )
        bundle.categories = card.categories
    if card.background is not None:
        bundle.background_id = card.background_id(tuple(bundle.categories))
    bundle.preprocess = card.preprocess(bundle.preprocess)
    if card.output_key is not None and bundle.task == "semantic" and bundle.semantic is None:
        key = card.output_key

        def semantic(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
            return tensor_output(module(x), key), None

        bundle.semantic = semantic


def resolve_plugin(
    model: str,
    target: str,
    weights: str,
    *,
    task: str | None,
    card: ModelCard | None,
    storage_options: Mapping[str, Any] | None,
) -> ResolvedModel:
    """Driver side: find and call the function, check what it returns on a zero image."""
    if ":" in target:
        ref, dist = target, None
    else:
        ep = _entry_point(target)
        ref = ep.value
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else None
    what = repr(model) if ref == model else f"{model!r} ({ref})"
    fn = load_function(ref, what)
    data = None
    if weights.upper() != "DEFAULT" and weights.lower() != "none":
        try:
            with fsio.storage_errors(weights, "weights"):
                data = fsio.read_bytes(weights, storage_options)
        except FileNotFoundError:
            raise JobError(
                f"weights file {weights!r} does not exist; valid values: DEFAULT, none, or a path/URL"
            ) from None
    bundle = call_plugin(fn, data, what, card)
    if task is not None and task != bundle.task:
        raise JobError(f"plugin {what} is a {bundle.task} model; --task {task!r} does not apply")
    probe(bundle, what)
    return ResolvedModel(
        kind="plugin",
        ref=model,
        task=bundle.task,
        files={} if data is None else {"weights": data},
        sha256=None if data is None else hashlib.sha256(data).hexdigest(),
        source="DEFAULT" if data is None else weights,
        description=bundle.description or f"plugin {ref}",
        card=card,
        settings={"function": ref, "distribution": dist},
    )


def probe(bundle: ModelBundle, what: str) -> None:
    """Run ``bundle`` on one zero image and check the shape of what its adapter returns."""
    size = bundle.preprocess.input_size(*PROBE_SIZE)
    x = bundle.preprocess.normalize(torch.zeros(1, 3, *size, dtype=torch.uint8))
    with torch.inference_mode():
        try:
            if bundle.task == "semantic":
                assert bundle.semantic is not None
                logits, _ = bundle.semantic(bundle.module, x)
            else:
                assert bundle.instance is not None
                results = bundle.instance(bundle.module, [x[0]], [PROBE_SIZE], ModelOptions())
        except JobError:
            raise
        except Exception as err:
            raise JobError(f"{what} fails on a {size[0]}x{size[1]} zero image: {type(err).__name__}: {err}") from None
    if bundle.task == "semantic":
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != len(bundle.categories):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise JobError(
                f"{what} has {len(bundle.categories)} categories but returns logits of shape {shape}; "
                f"expected (N, {len(bundle.categories)}, h, w)"
            )
    elif not (isinstance(results, list) and len(results) == 1 and len(results[0]) == 3):
        raise JobError(f"{what}'s instance adapter must return one (masks, labels, scores) per image")


def build_plugin(resolved: ResolvedModel, options: ModelOptions) -> ModelBundle:
    """Actor side: call the function again with the shipped weights."""
    ref = str(resolved.settings["function"])
    fn = load_function(ref, repr(resolved.ref))
    return call_plugin(fn, resolved.files.get("weights"), repr(resolved.ref), resolved.card)


def model_listing() -> list[dict[str, Any]]:
    """What ``segbatch models`` prints: the built-ins (with task, input and categories), every
    installed plugin (name and target, not loaded) and the adapters (whether their library is
    installed; not imported)."""
    import importlib.util

    from segbatch.models.registry import list_models

    rows: list[dict[str, Any]] = [
        {
            "name": spec.name,
            "kind": "built-in",
            "task": spec.task,
            "input": spec.preprocess.describe(),
            "categories": list(spec.categories),
            "description": spec.description,
        }
        for spec in list_models()
    ]
    for ep in entry_points():
        dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""
        rows.append(
            {
                "name": ep.name,
                "kind": "plugin",
                "task": "",
                "input": "",
                "categories": [],
                "description": f"{ep.value}{dist}",
            }
        )
    for prefix, module, extra, what in (
        ("hf:HUB_ID_OR_FOLDER", "transformers", "hf", "Hugging Face semantic and universal segmentation models"),
        ("smp:FOLDER_OR_HUB_ID", "segmentation_models_pytorch", "smp", "segmentation-models-pytorch save_pretrained"),
        ("export:FILE.pt2", "torch", None, "torch.export program with --model-card"),
    ):
        installed = importlib.util.find_spec(module) is not None
        note = "" if installed or extra is None else f" (not installed: pip install 'segbatch[{extra}]')"
        rows.append(
            {
                "name": prefix,
                "kind": "adapter",
                "task": "semantic, instance" if prefix.startswith("hf") else "semantic",
                "input": "from the model",
                "categories": [],
                "description": what + note,
            }
        )
    rows.append(
        {
            "name": "module:function",
            "kind": "adapter",
            "task": "semantic, instance",
            "input": "from the bundle",
            "categories": [],
            "description": f"a function returning a model bundle; or a {ENTRY_POINT_GROUP!r} entry point name",
        }
    )
    return rows
