"""``--model`` on the driver → :class:`ResolvedModel` (bytes + metadata) → :class:`ModelBundle` on an actor.

``--model`` is one of
  * a built-in name (``segbatch models``), with ``--weights`` as before;
  * ``hf:HUB_ID_OR_FOLDER`` — a Hugging Face transformers model (:mod:`segbatch.models.hf`);
  * ``smp:FOLDER_OR_HUB_ID`` — a segmentation-models-pytorch ``save_pretrained`` folder
    (:mod:`segbatch.models.smp_models`);
  * ``export:FILE.pt2`` — a ``torch.export`` program with a ``--model-card``
    (:mod:`segbatch.models.exported`);
  * ``module:function`` or the name of a ``segbatch.models`` entry point — a plugin
    (:mod:`segbatch.models.plugins`).

The driver reads the model once (a folder is read whole: relative path → bytes), hashes it,
and ships the :class:`ResolvedModel` to the actors through the object store: workers need
no shared filesystem and no hub access. Nothing is unpickled: safetensors,
``torch.load(weights_only=True)``, ``torch.export.load``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.models.card import ModelCard, card_json, parse_card
from segbatch.models.info import TASKS, ModelOptions, Task
from segbatch.models.preprocess import Preprocess

if TYPE_CHECKING:  # resolving needs no torch (the driver); building does (the actors)
    from segbatch.models.bundle import ModelBundle

PREFIXES = ("hf:", "smp:", "export:")
KINDS = ("builtin", "hf", "smp", "export", "plugin")
_PLUGIN_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
# Weight files that would need unpickling: refused, with the way out.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ResolvedModel:
    """Everything an actor needs to build the model, as plain values and bytes.

    ``files``: the model read whole (relative path → bytes; ``{}`` when there is none);
    ``sha256``: over those bytes (for a built-in, of its checkpoint, as before); ``source``:
    where they came from; ``categories``/``preprocess``: decided on the driver where the model
    files say them (None: the bundle's builder decides); ``settings``: adapter-specific plain
    values (e.g. the hub commit, the head family).
    """

    kind: str
    ref: str
    task: Task
    files: Mapping[str, bytes]
    sha256: str | None
    source: str
    description: str = ""
    categories: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    card: ModelCard | None = None
    revision: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def identity_options(self) -> dict[str, Any]:
        """What besides ``model`` and the weights' hash makes a different job (empty for a built-in,
        so earlier outputs still resume)."""
        if self.kind == "builtin":
            return {}
        return {
            "task": self.task,
            "model_card_sha256": None if self.card is None else self.card.sha256,
        }

    def job_json(self) -> dict[str, Any]:
        """The model's provenance for job.json (beyond name, task, categories, preprocessing)."""
        return {
            "kind": self.kind,
            "revision": self.revision,
            "files": sorted(self.files) if self.kind in ("hf", "smp") else None,
            "card": card_json(self.card),
            **{k: v for k, v in self.settings.items() if isinstance(v, str | int | float | bool) or v is None},
        }


def resolve_model(
    model: str,
    weights: str = "DEFAULT",
    *,
    task: str | None = None,
    model_card: str | None = None,
    revision: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ResolvedModel:
    """Driver side: ``--model`` (+ ``--weights``, ``--task``, ``--model-card``, ``--model-revision``)
    → :class:`ResolvedModel`. Raises :class:`JobError` naming the bad value and the valid choices."""
    if task is not None and task not in TASKS:
        raise JobError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    card = read_card(model_card, storage_options) if model_card else None
    kind, target = parse_model_ref(model)
    if revision is not None and kind not in ("hf", "smp"):
        raise JobError(f"--model-revision {revision!r} applies to hf: and smp: hub ids, not {model!r}")
    if kind == "builtin":
        if card is not None:
            raise JobError(
                f"--model-card applies to hf:, smp:, export: models and plugins; built-in model {model!r} "
                "carries its categories and preprocessing (or its segbatch checkpoint does)"
            )
        return _resolve_builtin(model, weights, task, storage_options)
    if kind != "plugin" and weights.upper() != "DEFAULT":
        raise JobError(f"--weights {weights!r} applies to built-in models and plugins; {model!r} carries its weights")
    if kind == "hf":
        from segbatch.models.hf import resolve_hf

        return resolve_hf(target, task=task, card=card, revision=revision, storage_options=storage_options)
    if kind == "smp":
        from segbatch.models.smp_models import resolve_smp

        return resolve_smp(target, task=task, card=card, revision=revision, storage_options=storage_options)
    if kind == "export":
        from segbatch.models.exported import resolve_export

        return resolve_export(target, task=task, card=card, storage_options=storage_options)
    from segbatch.models.plugins import resolve_plugin

    return resolve_plugin(model, target, weights, task=task, card=card, storage_options=storage_options)


def load_bundle(resolved: ResolvedModel, options: ModelOptions) -> ModelBundle:
    """Actor (and driver) side: build the :class:`ModelBundle` from ``resolved`` (no network, no shared files)."""
    builders: dict[str, Callable[[ResolvedModel, ModelOptions], ModelBundle]] = {
        "builtin": _build_builtin,
        "hf": _lazy("segbatch.models.hf", "build_hf"),
        "smp": _lazy("segbatch.models.smp_models", "build_smp"),
        "export": _lazy("segbatch.models.exported", "build_export"),
        "plugin": _lazy("segbatch.models.plugins", "build_plugin"),
    }
    if resolved.kind not in builders:
        raise JobError(f"unknown model kind {resolved.kind!r}; valid kinds: {', '.join(KINDS)}")
    bundle = builders[resolved.kind](resolved, options)
    if not bundle.name:
        bundle.name = resolved.ref
    bundle.weights_source = bundle.weights_source or resolved.source
    bundle.weights_sha256 = bundle.weights_sha256 or resolved.sha256
    return bundle


def _lazy(module: str, name: str) -> Callable[[ResolvedModel, ModelOptions], ModelBundle]:
    def build(resolved: ResolvedModel, options: ModelOptions) -> ModelBundle:
        import importlib

        fn: Callable[[ResolvedModel, ModelOptions], ModelBundle] = getattr(importlib.import_module(module), name)
        return fn(resolved, options)

    return build


def parse_model_ref(model: str) -> tuple[str, str]:
    """``--model`` → ``(kind, target)``: ``("hf", "org/name")``, ``("plugin", "pkg.mod:fn")``, ``("builtin", name)``…"""
    for prefix in PREFIXES:
        if model.startswith(prefix):
            target = model[len(prefix) :].strip()
            if not target:
                raise JobError(f"model {model!r} names nothing after {prefix!r}")
            return prefix[:-1], target
    if ":" in model:
        if _PLUGIN_REF.match(model):
            return "plugin", model
        prefix = model.split(":", 1)[0]
        raise JobError(
            f"unknown model prefix {prefix + ':'!r} in {model!r}; valid: {', '.join(PREFIXES)}, "
            "module:function (a plugin), or a model name (segbatch models)"
        )
    from segbatch.models.catalog import BUILTINS

    if model in BUILTINS:  # the built-ins need no torch to be named
        return "builtin", model
    from segbatch.models.registry import _REGISTRY, _ensure_builtin

    _ensure_builtin()
    if model in _REGISTRY:  # a model registered by user code (register_model)
        return "builtin", model
    from segbatch.models.plugins import entry_point_names

    plugins = entry_point_names()
    if model in plugins:
        return "plugin", model
    names = sorted(_REGISTRY) + sorted(plugins)
    raise JobError(
        f"unknown model {model!r}; valid models: {', '.join(names)}; or hf:HUB_ID_OR_FOLDER, smp:FOLDER, "
        "export:FILE.pt2, module:function"
    )


def _resolve_builtin(
    model: str, weights: str, task: str | None, storage_options: Mapping[str, Any] | None
) -> ResolvedModel:
    from segbatch.models.catalog import BUILTINS, ModelMeta
    from segbatch.models.weight_files import resolve_weights

    spec: ModelMeta | None = BUILTINS.get(model)
    if spec is None:  # registered by user code
        from segbatch.models.registry import get_model_spec

        spec = get_model_spec(model)
    if task is not None and task != spec.task:
        raise JobError(f"model {model!r} is a {spec.task} model; --task {task!r} does not apply")
    w = resolve_weights(spec, weights, storage_options)
    return ResolvedModel(
        kind="builtin",
        ref=model,
        task=spec.task,
        files={} if w.data is None else {"checkpoint": w.data},
        sha256=w.sha256,
        source=w.source,
        description=spec.description,
    )


def _build_builtin(resolved: ResolvedModel, options: ModelOptions) -> ModelBundle:
    from segbatch.models.registry import get_model_spec
    from segbatch.models.weights import ResolvedWeights, load_model

    weights = ResolvedWeights(source=resolved.source, data=resolved.files.get("checkpoint"), sha256=resolved.sha256)
    return load_model(get_model_spec(resolved.ref), weights, options)


def read_card(url: str, storage_options: Mapping[str, Any] | None = None) -> ModelCard:
    """Read and parse ``--model-card`` (YAML or JSON, any fsspec URL)."""
    try:
        with fsio.storage_errors(url, "model card"):
            data = fsio.read_bytes(url, storage_options)
    except FileNotFoundError:
        raise JobError(f"model card {url!r} does not exist") from None
    return parse_card(data, url)


def read_folder(
    url: str, what: str, keep: Callable[[str], bool], storage_options: Mapping[str, Any] | None = None
) -> dict[str, bytes]:
    """Every file under folder ``url`` that ``keep(relative_path)`` accepts → ``{relative path: bytes}``
    (hidden files and folders skipped). Raises :class:`JobError` when the folder is missing."""
    with fsio.storage_errors(url, what):
        fs, root = fsio.resolve(url, storage_options)
        if not fs.isdir(root):
            raise JobError(
                f"{what} {url!r} is not a folder" + (" (it is a file)" if fs.exists(root) else " (it does not exist)")
            )
        out: dict[str, bytes] = {}
        for path in sorted(fs.find(root)):
            rel = path[len(root) :].lstrip("/")
            if any(part.startswith(".") for part in rel.split("/")) or not keep(rel):
                continue
            out[rel] = fs.cat_file(path)
    return out


def files_sha256(files: Mapping[str, bytes]) -> str:
    """One SHA-256 over a folder's files: of the sorted lines ``relative path \\0 sha256(bytes)``."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{hashlib.sha256(files[rel]).hexdigest()}\n".encode())
    return h.hexdigest()


def refuse_pickled(files: Mapping[str, bytes], names: list[str], what: str) -> None:
    """JobError when a folder holds only pickled weights (``names``: every file seen)."""
    pickled = [n for n in names if n.endswith(PICKLED_SUFFIXES)]
    if not any(n.endswith(".safetensors") for n in files):
        hint = (
            f" (it holds {', '.join(pickled[:3])}: pickled weights, which segbatch never unpickles)" if pickled else ""
        )
        raise JobError(
            f"{what} has no *.safetensors weights{hint}; save the model with save_pretrained "
            "(safetensors is its default) or convert the weights to safetensors"
        )


def write_folder(files: Mapping[str, bytes], root: str) -> None:
    """Write ``files`` under local folder ``root`` (for libraries that insist on a folder)."""
    import os

    for rel, data in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def is_folder_ref(target: str) -> bool:
    """Whether ``target`` names a folder (a path or URL) rather than a hub id ``org/name``."""
    import os

    if "://" in target or target.startswith(("./", "../", "/", "~", ".\\")):
        return True
    return os.path.exists(os.path.expanduser(target)) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", target)
