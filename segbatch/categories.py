"""Matching model categories to label categories: the evaluation class space.

Model and labels each name their classes; Dice needs one shared list. Categories are
matched by name (case, spaces, ``_`` and ``-`` ignored: ``diningtable`` = ``dining table``),
with an explicit mapping file as the override. Classes only one side knows stay in the
space as their own evaluation classes and are reported, never silently dropped.

The label-map file (YAML or JSON) may hold
    categories: {0: background, 1: cat, ...}  # names of mask-PNG class ids
    match: {diningtable: dining table, ...}   # model category → label category
A file with neither key is read as the ``match`` mapping itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from segbatch.errors import JobError
from segbatch.metrics import IGNORE

PNG_IGNORE = 255
UNLABELED = -2  # a pixel no COCO annotation covers (background): segbatch.io.labels paints it
PLACEHOLDER = "N/A"  # torchvision's COCO category list has unused ids named N/A


def normalize_name(name: str) -> str:
    """The form names are compared in: lower case, letters and digits only (``tv/monitor`` = ``TV Monitor``)."""
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def resolve_names(requested: Iterable[str], available: Sequence[str], what: str) -> tuple[str, ...]:
    """The names of ``available`` that ``requested`` names, compared as categories are everywhere
    (:func:`normalize_name`), in the order requested. Raises :class:`JobError` naming the unknown
    ones and the valid choices."""
    by_norm: dict[str, str] = {}
    for name in available:
        by_norm.setdefault(normalize_name(name), name)
    found, unknown = [], []
    for name in requested:
        match = by_norm.get(normalize_name(name))
        if match is None:
            unknown.append(name)
        elif match not in found:
            found.append(match)
    if unknown:
        valid = list(available)
        shown = ", ".join(valid[:50]) + (f", … ({len(valid)} in all)" if len(valid) > 50 else "")
        raise JobError(f"{what} {unknown} are unknown; valid: {shown}")
    return tuple(found)


@dataclass(frozen=True)
class LabelMapFile:
    categories: dict[int, str]
    match: dict[str, str]


def parse_label_map(data: bytes, source: str) -> LabelMapFile:
    try:
        doc = yaml.safe_load(data) or {}
    except yaml.YAMLError as err:
        raise JobError(f"label map {source!r} is not valid YAML/JSON: {err}") from err
    if not isinstance(doc, dict):
        raise JobError(f"label map {source!r} must be a mapping")
    if "categories" in doc or "match" in doc:
        unknown = set(doc) - {"categories", "match"}
        if unknown:
            raise JobError(f"label map {source!r} has unknown keys {sorted(unknown)}; valid: categories, match")
        cats, match = doc.get("categories") or {}, doc.get("match") or {}
    else:
        cats, match = {}, doc
    try:
        categories = {int(k): str(v) for k, v in dict(cats).items()}
    except (TypeError, ValueError) as err:
        raise JobError(f"label map {source!r}: 'categories' must map integer ids to names ({err})") from err
    return LabelMapFile(categories=categories, match={str(k): str(v) for k, v in dict(match).items()})


@dataclass(frozen=True)
class EvalSpace:
    """The shared class list and lookups into it.

    ``model_lut[model_id]`` and ``label_lut[raw_label_id - label_offset]`` give evaluation
    ids; :data:`segbatch.metrics.IGNORE` marks label pixels that count nowhere.
    """

    names: tuple[str, ...]
    background: int | None
    model_lut: np.ndarray  # (num_model_classes,) int32
    label_lut: np.ndarray  # (span,) int32
    label_offset: int
    pairs: tuple[tuple[str, str], ...]  # (model name, label name) matched
    model_only: tuple[str, ...]
    label_only: tuple[str, ...]
    # Evaluation classes both sides know (matched by name or by the label map): only these count
    # in mean Dice / IoU. Classes one side alone knows (a label id the model has no class for, a
    # model class the labels never name) are reported as unmatched instead. None: every class.
    counted: tuple[int, ...] | None = None

    def counted_mask(self) -> np.ndarray:
        """``(K,) bool``: which evaluation classes count in the means."""
        mask = np.zeros(self.num_classes, dtype=bool)
        mask[list(self.counted) if self.counted is not None else slice(None)] = True
        return mask

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def predictions(self, model_ids: np.ndarray) -> np.ndarray:
        """``(H, W)`` model class ids → ``(H, W) int32`` evaluation ids."""
        return self.model_lut[model_ids]

    def labels(self, raw: np.ndarray) -> np.ndarray:
        """``(H, W)`` raw label ids (PNG values or COCO category ids) → ``(H, W) int32`` evaluation ids."""
        idx = raw.astype(np.int64) - self.label_offset
        bad = (idx < 0) | (idx >= len(self.label_lut))
        if bad.any():
            raise ValueError(f"label id {int(raw[bad].flat[0])} is outside the known label categories")
        return self.label_lut[idx]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (job.json ``eval_classes``); :meth:`from_dict` restores it exactly."""
        return {
            "names": list(self.names),
            "background": self.background,
            "matched": [list(p) for p in self.pairs],
            "model_only": list(self.model_only),
            "label_only": list(self.label_only),
            "model_lut": self.model_lut.tolist(),
            "label_lut": self.label_lut.tolist(),
            "label_offset": self.label_offset,
            "counted": None if self.counted is None else list(self.counted),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalSpace:
        return cls(
            names=tuple(d["names"]),
            background=d["background"],
            model_lut=np.asarray(d["model_lut"], dtype=np.int32),
            label_lut=np.asarray(d["label_lut"], dtype=np.int32),
            label_offset=int(d["label_offset"]),
            pairs=tuple((str(a), str(b)) for a, b in d["matched"]),
            model_only=tuple(d["model_only"]),
            label_only=tuple(d["label_only"]),
            counted=None if d.get("counted") is None else tuple(int(c) for c in d["counted"]),
        )


def build_eval_space(
    model_categories: tuple[str, ...],
    background: int | None,
    label_kind: str | None,
    label_categories: Mapping[int, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> EvalSpace:
    """Match model and label categories.

    Args:
        model_categories: names indexed by model class id.
        background: model id of the background class, or None.
        label_kind: ``"png"``, ``"coco"`` or None (no labels).
        label_categories: COCO ``{id: name}``, or names of PNG ids (default: the model's names by id).
        overrides: ``{model name: label name}`` from the label-map file.
    """
    names: list[str] = []
    model_lut = np.zeros(len(model_categories), dtype=np.int32)
    first_model_id: dict[str, int] = {}
    for i, name in enumerate(model_categories):
        if name == PLACEHOLDER:
            continue
        first_model_id.setdefault(name, i)
    for name, i in first_model_id.items():
        model_lut[i] = len(names)
        names.append(name)
    bg_eval = int(model_lut[background]) if background is not None else None
    for i, name in enumerate(model_categories):
        if name == PLACEHOLDER or first_model_id[name] != i:
            model_lut[i] = bg_eval if bg_eval is not None else model_lut[first_model_id.get(name, 0)]

    if label_kind is None:
        empty = np.zeros(0, dtype=np.int32)
        return EvalSpace(tuple(names), bg_eval, model_lut, empty, 0, (), (), ())

    if label_kind == "png":
        given = dict(label_categories or {})
        if given:
            label_names = {i: given.get(i, f"label_{i}") for i in range(PNG_IGNORE)}
        else:
            # Without names, PNG ids are read as the model's own class ids.
            label_names = {
                i: model_categories[i] if i < len(model_categories) else f"label_{i}" for i in range(PNG_IGNORE)
            }
    elif label_kind == "coco":
        label_names = dict(label_categories or {})
    else:
        raise ValueError(f"unknown label kind {label_kind!r}")

    overrides = dict(overrides or {})
    by_norm_label: dict[str, list[int]] = {}
    for lid, lname in label_names.items():
        by_norm_label.setdefault(normalize_name(lname), []).append(lid)
    label_by_name = {lname: lid for lid, lname in label_names.items()}
    resolved: dict[str, str] = {}
    for m, lab in overrides.items():
        (model_name,) = resolve_names([m], list(first_model_id), "label map: model categories")
        (label_name,) = resolve_names([lab], sorted(set(label_names.values())), f"label map ({m!r}): label categories")
        resolved[model_name] = label_name
    overrides = resolved

    label_eval: dict[int, int] = {}
    pairs: list[tuple[str, str]] = []
    for mname, mid in first_model_id.items():
        if mname in overrides:
            lids = [label_by_name[overrides[mname]]]
        else:
            lids = [lid for lid in by_norm_label.get(normalize_name(mname), []) if lid not in label_eval]
        for lid in lids:
            label_eval[lid] = int(model_lut[mid])
        if lids:
            pairs.append((mname, label_names[lids[0]]))
    label_only: list[str] = []
    for lid in sorted(label_names):
        if lid in label_eval:
            continue
        lname = label_names[lid]
        eval_name = lname if lname not in names else f"{lname} (label)"
        if eval_name in names:  # two label ids with one name share one evaluation class
            label_eval[lid] = names.index(eval_name)
            continue
        label_eval[lid] = len(names)
        names.append(eval_name)
        if not (label_kind == "png" and lname.startswith("label_")):
            label_only.append(lname)
    matched_models = {m for m, _ in pairs}
    model_only = tuple(
        m
        for m in first_model_id
        if m not in matched_models and not (label_kind == "coco" and first_model_id[m] == background)
    )

    if label_kind == "png":
        lut = np.full(PNG_IGNORE + 1, IGNORE, dtype=np.int32)
        for lid, e in label_eval.items():
            lut[lid] = e
        offset = 0
    else:
        # COCO: ids may be sparse; UNLABELED pixels are background (or ignored without one).
        lo = min([UNLABELED, *label_eval])
        hi = max([UNLABELED, *label_eval])
        lut = np.full(hi - lo + 1, IGNORE, dtype=np.int32)
        for lid, e in label_eval.items():
            lut[lid - lo] = e
        lut[UNLABELED - lo] = bg_eval if bg_eval is not None else IGNORE
        offset = lo
    counted = tuple(sorted({int(model_lut[first_model_id[m]]) for m, _ in pairs}))
    return EvalSpace(
        tuple(names), bg_eval, model_lut, lut, offset, tuple(pairs), model_only, tuple(label_only), counted
    )


OTHER_LABEL = "(a class only the labels know)"


@dataclass(frozen=True)
class QualitySpace:
    """The classes of the label-quality evidence (segbatch.quality): the evaluation classes the
    model can predict, in evaluation order, plus one for every label class the model has no class
    for (its probability is 0: the model cannot vouch for such a label). Compact where the
    evaluation space is not: a PNG label space names all 255 ids.

    ``eval_to_q`` ``(num_eval,) int32`` maps evaluation ids to quality ids; ``model_to_q``
    ``(num_model,) int32`` model class ids.
    """

    names: tuple[str, ...]
    eval_to_q: np.ndarray
    model_to_q: np.ndarray

    @classmethod
    def of(cls, es: EvalSpace) -> QualitySpace:
        predicted = sorted({int(e) for e in es.model_lut})
        index = {e: q for q, e in enumerate(predicted)}
        other = len(predicted)
        eval_to_q = np.array([index.get(e, other) for e in range(es.num_classes)], dtype=np.int32)
        names = (*tuple(es.names[e] for e in predicted), OTHER_LABEL)
        return cls(names, eval_to_q, eval_to_q[es.model_lut])

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def probs(self, model_probs: np.ndarray) -> np.ndarray:
        """``(num_model, h, w)`` model class probabilities → ``(K, h, w)`` float32 (summed where
        several model classes share an evaluation class, 0 for the label-only class)."""
        out = np.zeros((self.num_classes, *model_probs.shape[1:]), dtype=np.float32)
        # One vectorised add per model class, in class order (the order np.add.at sums in, so
        # the same float32 values): np.add.at's unbuffered loop over every element took 4.7 ms
        # an image for 21 classes at 120×160 (this: 0.8 ms), most of the encode task's
        # label-quality work.
        for c, q in enumerate(self.model_to_q):
            out[q] += model_probs[c]
        return out

    def labels(self, eval_labels: np.ndarray) -> np.ndarray:
        """``(h, w)`` evaluation ids (IGNORE kept) → quality ids ``int32``."""
        return np.where(eval_labels == IGNORE, IGNORE, self.eval_to_q[np.maximum(eval_labels, 0)]).astype(np.int32)
