"""Model cards: what travels with a model whose files do not say it (``--model-card FILE.yaml``).

An exported program needs one; for ``hf:``, ``smp:`` and plugins it overrides what the model
carries. The format (YAML or JSON)::

    task: semantic                  # semantic | instance
    categories: [background, road, car]   # class id i → name (or a mapping {0: background, …})
    background: background          # optional: a category name or id (default: one named background)
    preprocessing:                  # keys left out keep the model's own values
      resize: [512, 512]            # shorter side (int), [height, width], or null (keep the size)
      longest_edge: null            # with an int resize: transformers' shortest/longest-edge rule
      size_divisor: 0               # round the size up to a multiple (e.g. 32)
      crop: null                    # centre crop [height, width]
      resample: torch-antialias     # torch-antialias | torch-antialias-uint8 | torch-bicubic | pillow-bilinear | …
      rescale: 0.00392156862745098  # applied to uint8 values (1/255); null: none
      mean: [0.485, 0.456, 0.406]   # null: no normalization (then std: null too)
      std: [0.229, 0.224, 0.225]
      channel_order: RGB            # RGB | BGR
    output:                         # what the forward returns (exported programs, plugins)
      key: out                      # the logits' dict key or tuple index; omit for a plain tensor

Semantic logits are ``(N, C, h, w)`` at any resolution: segbatch resamples them bilinearly
(``align_corners=False``) to each image's original size and takes the argmax.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from segbatch.errors import JobError
from segbatch.models.info import TASKS, Task
from segbatch.models.preprocess import Preprocess

CARD_KEYS = ("task", "categories", "background", "preprocessing", "output")
OUTPUT_KEYS = ("key",)


@dataclass(frozen=True)
class ModelCard:
    """A parsed model card; fields the card leaves out are None. ``sha256``: of the card's bytes."""

    source: str
    sha256: str
    task: Task | None = None
    categories: tuple[str, ...] | None = None
    background: str | int | None = None
    preprocessing: Mapping[str, Any] | None = None
    output_key: str | int | None = None

    def preprocess(self, base: Preprocess | None) -> Preprocess:
        """``base`` (the model's own preprocessing) with the card's keys applied; without a
        base the card must give ``resize``, ``mean`` and ``std`` (no silent defaults)."""
        if self.preprocessing is None:
            if base is None:
                raise JobError(f"model card {self.source!r} has no preprocessing; this model needs one (see README)")
            return base
        if base is None:
            missing = [k for k in ("resize", "mean", "std") if k not in self.preprocessing]
            if missing:
                raise JobError(
                    f"model card {self.source!r}: preprocessing must give {', '.join(missing)} "
                    "(null where the model takes none)"
                )
            base = Preprocess()
        merged = {**_all_fields(base), **dict(self.preprocessing)}
        try:
            return Preprocess.from_dict(merged)
        except JobError as err:
            raise JobError(f"model card {self.source!r}: {err}") from None

    def background_id(self, categories: tuple[str, ...]) -> int | None:
        """The card's background as a class id of ``categories`` (None when the card names none)."""
        if self.background is None:
            return None
        if isinstance(self.background, int):
            if not 0 <= self.background < len(categories):
                raise JobError(
                    f"model card {self.source!r}: background {self.background} is not a class id "
                    f"(0..{len(categories) - 1})"
                )
            return self.background
        if self.background not in categories:
            raise JobError(
                f"model card {self.source!r}: background {self.background!r} is not one of the categories "
                f"{list(categories)[:10]}"
            )
        return categories.index(self.background)


def _all_fields(pre: Preprocess) -> dict[str, Any]:
    d = pre.to_dict()
    for key in ("longest_edge", "size_divisor", "crop", "resample", "rescale", "channel_order"):
        value = getattr(pre, key)
        d.setdefault(key, list(value) if isinstance(value, tuple) else value)
    return d


def parse_card(data: bytes, source: str) -> ModelCard:
    """Card bytes (YAML or JSON) → :class:`ModelCard`; :class:`JobError` names the bad key."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise JobError(f"model card {source!r} is not valid YAML/JSON: {err}") from None
    if not isinstance(raw, Mapping):
        raise JobError(f"model card {source!r} must hold a mapping with keys {', '.join(CARD_KEYS)}")
    unknown = sorted(str(k) for k in raw if k not in CARD_KEYS)
    if unknown:
        raise JobError(f"model card {source!r}: unknown key(s) {unknown}; valid keys: {', '.join(CARD_KEYS)}")
    task = raw.get("task")
    if task is not None and task not in TASKS:
        raise JobError(f"model card {source!r}: task must be one of {', '.join(TASKS)}, got {task!r}")
    categories = _categories(raw.get("categories"), source)
    background = raw.get("background")
    if background is not None and not isinstance(background, str | int):
        raise JobError(f"model card {source!r}: background must be a category name or id, got {background!r}")
    pre = raw.get("preprocessing")
    if pre is not None and not isinstance(pre, Mapping):
        raise JobError(f"model card {source!r}: preprocessing must be a mapping, got {type(pre).__name__}")
    if pre is not None:
        try:  # validate early: unknown keys, bad values
            Preprocess.from_dict({**_all_fields(Preprocess()), **dict(pre)})
        except JobError as err:
            raise JobError(f"model card {source!r}: {err}") from None
    output = raw.get("output") or {}
    if not isinstance(output, Mapping) or sorted(str(k) for k in output if k not in OUTPUT_KEYS):
        raise JobError(f"model card {source!r}: output must be a mapping with key(s) {', '.join(OUTPUT_KEYS)}")
    key = output.get("key")
    if key is not None and not isinstance(key, str | int):
        raise JobError(f"model card {source!r}: output.key must be a name or an index, got {key!r}")
    return ModelCard(
        source=source,
        sha256=sha,
        task=task,
        categories=categories,
        background=background,
        preprocessing=None if pre is None else dict(pre),
        output_key=key,
    )


def _categories(value: Any, source: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        try:
            ids = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            raise JobError(f"model card {source!r}: categories mapping keys must be class ids") from None
        if sorted(ids) != list(range(len(ids))):
            raise JobError(f"model card {source!r}: category ids must be 0..{len(ids) - 1}, got {sorted(ids)[:10]}")
        return tuple(ids[i] for i in range(len(ids)))
    if isinstance(value, list) and value and all(isinstance(v, str | int) for v in value):
        return tuple(str(v) for v in value)
    raise JobError(f"model card {source!r}: categories must be a non-empty list of names or a mapping id → name")


def card_json(card: ModelCard | None) -> dict[str, Any] | None:
    """What job.json records of the card."""
    if card is None:
        return None
    return {"source": card.source, "sha256": card.sha256, **json.loads(json.dumps(_card_values(card)))}


def _card_values(card: ModelCard) -> dict[str, Any]:
    return {
        "task": card.task,
        "categories": None if card.categories is None else list(card.categories),
        "background": card.background,
        "preprocessing": None if card.preprocessing is None else dict(card.preprocessing),
        "output": {"key": card.output_key},
    }
