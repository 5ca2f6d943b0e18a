"""Exported programs: ``export:FILE.pt2`` (``torch.export.save``) with a ``--model-card``.

The route for any architecture whose code should not travel: the program file holds the
graph and the weights, loaded with ``torch.export.load`` after every member it would unpickle
passed ``torch.load(weights_only=True)`` (:func:`check_archive`). The model card
(:mod:`segbatch.models.card`) says the task (semantic), the categories, the preprocessing
and where the logits are in the output (``output.key`` for a dict or tuple; a plain
``(N, C, h, w)`` tensor otherwise). The driver loads the program once and runs it on one
zero image to check the card against it: the number of output channels, the input size a
program exported with static height and width takes, and the batch size (a program exported
with a static batch of one gets one image per forward pass).

Fast paths: the exact class map from the logits to the original size. No BatchNorm folding
(the graph holds ATen operators, not modules) and no channels-last (the graph's strides are
the exporter's).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.models.bundle import ModelBundle, ModelOptions, tensor_output
from segbatch.models.card import ModelCard
from segbatch.models.resolve import ResolvedModel

PROBE_SIZE = (256, 256)  # the zero image the driver runs a program with dynamic height/width on


class ExportedModule(nn.Module):
    """An exported program's module as an ordinary ``nn.Module``: ``eval()``/``train()`` only
    set the flag (the program is already in inference form; its own ``eval()`` raises)."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> Any:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


def resolve_export(
    target: str, *, task: str | None, card: ModelCard | None, storage_options: Mapping[str, Any] | None
) -> ResolvedModel:
    """Driver side of ``export:FILE``: read it, check the card against the program."""
    what = f"export:{target}"
    if card is None:
        raise JobError(f"{what} needs a --model-card (task, categories, preprocessing, output); see README")
    task = task or card.task
    if task not in (None, "semantic"):
        raise JobError(
            f"{what}: exported programs run as semantic models (logits (N, C, h, w)); for {task!r} use a plugin"
        )
    if card.categories is None:
        raise JobError(f"model card {card.source!r} must name the categories of {what}")
    try:
        with fsio.storage_errors(target, "exported program"):
            data = fsio.read_bytes(target, storage_options)
    except FileNotFoundError:
        raise JobError(f"exported program {target!r} does not exist") from None
    import hashlib

    resolved = ResolvedModel(
        kind="export",
        ref=f"export:{target}",
        task="semantic",
        files={"program.pt2": data},
        sha256=hashlib.sha256(data).hexdigest(),
        source=target,
        description="torch.export program",
        categories=card.categories,
        preprocess=card.preprocess(None),
        card=card,
    )
    program = _load(data, what)
    batch, hw = input_shape(program, what)
    pre = resolved.preprocess
    assert pre is not None
    fixed = pre.crop if pre.crop is not None else (pre.output_size(1, 1) if isinstance(pre.resize, tuple) else None)
    if hw is not None and fixed != hw:
        raise JobError(
            f"{what} was exported for {hw[0]}x{hw[1]} inputs only, but model card {card.source!r} resizes by "
            f"{pre.describe()}; set preprocessing resize: [{hw[0]}, {hw[1]}]"
        )
    size = hw or pre.input_size(*PROBE_SIZE)
    with torch.inference_mode():
        try:
            out = ExportedModule(program)(torch.zeros(batch or 1, 3, *size))
        except Exception as err:
            raise JobError(f"{what} fails on a {size[0]}x{size[1]} zero image: {type(err).__name__}: {err}") from None
    logits = tensor_output(out, card.output_key)
    if logits.dim() != 4 or logits.shape[1] != len(card.categories):
        raise JobError(
            f"model card {card.source!r} names {len(card.categories)} categories but {what} returns logits of "
            f"shape {tuple(logits.shape)}; expected (N, {len(card.categories)}, h, w)"
            + ("" if card.output_key is not None else " (set output.key if the logits are one of several outputs)")
        )
    return resolved


def check_archive(data: bytes, what: str) -> None:
    """Refuse a program whose archive holds anything ``torch.load(weights_only=True)`` rejects.

    ``torch.export.load`` unpickles some members itself: tensors saved with ``use_pickle``
    (tensor subclasses) with ``weights_only=False``, and the sample inputs (and the legacy
    format's state dict) with ``weights_only=True`` *falling back to* ``weights_only=False``.
    Checking each such member here with ``weights_only=True`` first means nothing beyond
    tensors and plain containers is ever unpickled."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise JobError(f"{what} is not a torch.export program (torch.export.save): not a zip archive") from None
    with archive:
        names = archive.namelist()
        pickled = {n for n in names if n.endswith((".pt", ".pkl", ".pth"))}
        for name in names:
            if name.endswith("_config.json"):
                try:
                    config = json.loads(archive.read(name)).get("config", {})
                except (ValueError, AttributeError):
                    raise JobError(f"{what}: archive member {name!r} is not valid JSON") from None
                folder = name.rsplit("/", 1)[0]
                for meta in config.values() if isinstance(config, dict) else []:
                    if isinstance(meta, dict) and meta.get("use_pickle"):
                        pickled.add(f"{folder}/{meta.get('path_name')}")
        for name in sorted(pickled):
            try:
                torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
            except Exception as err:
                raise JobError(
                    f"{what}: archive member {name!r} does not load with torch.load(weights_only=True) "
                    f"({type(err).__name__}); segbatch never unpickles anything else: re-export the model "
                    "without tensor subclasses or custom objects"
                ) from None


def _load(data: bytes, what: str) -> nn.Module:
    check_archive(data, what)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as err:
        raise JobError(
            f"{what} is not a torch.export program (torch.export.save): {type(err).__name__}: {err}"
        ) from None
    return program.module()


def input_shape(program: nn.Module, what: str) -> tuple[int | None, tuple[int, int] | None]:
    """(static batch size or None, static ``(h, w)`` or None) of the program's one image input."""
    graph = getattr(program, "graph", None)
    inputs = [n for n in graph.nodes if n.op == "placeholder"] if graph is not None else []
    shapes = [
        n.meta["val"].shape for n in inputs if "val" in n.meta and getattr(n.meta["val"], "dim", lambda: 0)() == 4
    ]
    if len(shapes) != 1:
        raise JobError(f"{what} must take one image batch (N, 3, h, w); it takes {len(shapes)} 4-D inputs")
    n, c, h, w = shapes[0]

    def static(v: Any) -> int | None:
        return v if isinstance(v, int) else None

    if static(c) not in (None, 3):
        raise JobError(f"{what} takes {c}-channel images; segbatch feeds RGB (3 channels)")
    hw = (static(h), static(w))
    return static(n), (hw if hw[0] is not None and hw[1] is not None else None)  # type: ignore[return-value]


def build_export(resolved: ResolvedModel, options: ModelOptions) -> ModelBundle:
    """Actor side: load the program, wrap it, point the semantic adapter at its logits."""
    what = resolved.ref
    program = _load(resolved.files["program.pt2"], what)
    batch, _ = input_shape(program, what)
    card = resolved.card
    assert card is not None and resolved.categories is not None and resolved.preprocess is not None
    key = card.output_key

    def semantic(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        return tensor_output(module(x), key), None

    bundle = ModelBundle(
        module=ExportedModule(program),
        task="semantic",
        categories=resolved.categories,
        preprocess=resolved.preprocess,
        semantic=semantic,
        background_id=card.background_id(resolved.categories),
        name=what,
        description=resolved.description,
        fold=None,
        channels_last=False,
        max_batch=batch,
        fast_paths="exact class map from the program's logits (no BatchNorm folding, no channels-last)",
    )
    return bundle.check(what)
