"""quality.py: cleanlab's segmentation label-quality scores and issues, streamed.

cleanlab itself (a test extra) is the oracle: it gets the whole dataset in memory, as it
requires; segbatch gets one image at a time. The "model" makes its probabilities from the
true labels (blurred one-hot plus smooth noise, so it errs too); the labels under test are
the true ones corrupted on purpose in half of the images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cleanlab.segmentation.filter import find_label_issues
from cleanlab.segmentation.rank import get_label_quality_scores
from cleanlab.segmentation.summary import common_label_issues
from scipy import ndimage
from scipy.stats import spearmanr

from segbatch.masks import decode_rle
from segbatch.metrics import IGNORE
from segbatch.quality import (
    IssueTotals,
    QualityReducer,
    evidence_bound,
    image_evidence,
    image_evidence_from_maps,
    softmin,
)
from segbatch.sample import IGNORE as SAMPLE_IGNORE
from segbatch.sample import render_sample

K = 5  # the 4 scene classes, and one that only corrupted labels use
NAMES = ["background", "circle", "square", "triangle", "other"]
CORRUPTIONS = ["swap", None, "erase", None, "shift", None, "relabel", None] * 2


def _fill_ignore(label: np.ndarray) -> np.ndarray:
    """The VOC-style ignore band replaced by the nearest class: the true label everywhere."""
    _, (iy, ix) = ndimage.distance_transform_edt(label == SAMPLE_IGNORE, return_indices=True)
    return label[iy, ix].astype(np.int32)


def _model_probs(rng: np.random.Generator, true: np.ndarray) -> np.ndarray:
    """``(K, H, W) float32``: softmax of 6·(blurred one-hot of the true label) + smooth noise."""
    onehot = (np.arange(K)[:, None, None] == true[None]).astype(np.float64)
    blurred = np.stack([ndimage.gaussian_filter(o, 1.5) for o in onehot])
    noise = np.stack([ndimage.gaussian_filter(rng.normal(size=true.shape), 3.0) for _ in range(K)])
    logits = 6.0 * blurred + 9.6 * noise
    logits[4] -= 3.0
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def _corrupt(label: np.ndarray, kind: str) -> np.ndarray:
    objects = [int(c) for c in np.unique(label) if c != 0]
    out = label.copy()
    if kind == "swap":  # one class annotated as another
        out[label == objects[0]] = {1: 2, 2: 3, 3: 1}[objects[0]]
    elif kind == "erase":  # an object left out
        out[label == objects[-1]] = 0
    elif kind == "shift":  # the whole mask misplaced
        out = np.roll(label, (6, 8), axis=(0, 1))
    elif kind == "relabel":  # a class the dataset otherwise never uses
        out[label == objects[0]] = 4
    return out


def _dataset(seed: int = 0, n: int = 16, h: int = 96, w: int = 128, keep_ignore: bool = False):
    rng = np.random.default_rng(seed)
    probs, labels, corrupted = [], [], []
    for i in range(n):
        _, raw = render_sample(rng, h, w)
        true = _fill_ignore(raw)
        probs.append(_model_probs(rng, true))
        kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        label = true if kind is None else _corrupt(true, kind)
        if keep_ignore:
            label = np.where(raw == SAMPLE_IGNORE, IGNORE, label).astype(np.int32)
        labels.append(label)
        corrupted.append(kind is not None)
    return np.stack(probs), np.stack(labels), np.array(corrupted)


def _run(evidence, order=None):
    reducer = QualityReducer(K)
    for i in order if order is not None else range(len(evidence)):
        reducer.add(evidence[i])
    cut = reducer.finish()
    return reducer, cut, [cut.flag(ev) for ev in evidence]


@pytest.fixture(scope="module")
def oracle():
    probs, labels, corrupted = _dataset()
    evidence = [image_evidence(p, lab) for p, lab in zip(probs, labels, strict=True)]
    reducer, cut, issues = _run(evidence)
    cl_scores, _ = get_label_quality_scores(labels, probs, verbose=False)
    # n_jobs=1: the same count as cleanlab's default multiprocessing path, without forking here.
    cl_issues = find_label_issues(labels, probs, verbose=False, n_jobs=1)
    return {
        "probs": probs,
        "labels": labels,
        "corrupted": corrupted,
        "evidence": evidence,
        "reducer": reducer,
        "cut": cut,
        "issues": issues,
        "cl_scores": cl_scores,
        "cl_issues": cl_issues,
    }


# --- hand-computed cases -------------------------------------------------------------------


def test_softmin_of_known_vectors():
    # weights e^{(1-s)/0.1} relative to the lowest score: [1, 0] → weights [1, e^10] → 1/(1 + e^10)
    assert softmin(np.array([1.0, 0.0])) == pytest.approx(1 / (1 + math.exp(10)), rel=1e-12)
    assert softmin(np.array([0.2, 0.9])) == pytest.approx((0.2 + 0.9 * math.exp(-7)) / (1 + math.exp(-7)), rel=1e-12)
    assert softmin(np.full(7, 0.5)) == pytest.approx(0.5, rel=1e-12)
    assert math.isnan(softmin(np.array([])))


def _toy(p: list[list[float]], label: list[int]):
    """Pixels in a row: probabilities ``(n, K)`` → ``(K, 1, n)``."""
    probs = np.array(p, dtype=np.float32).T[:, None, :]
    return probs, np.array([label], dtype=np.int32)


def test_two_class_toy_thresholds_count_and_flags():
    p0 = [0.9, 0.8, 0.1, 0.2, 0.95, 0.4, 0.55]
    probs, label = _toy([[a, 1 - a] for a in p0], [0, 0, 0, 1, 1, 1, 1])
    reducer = QualityReducer(2)
    ev = image_evidence(probs, label)
    reducer.add(ev)
    cut = reducer.finish()
    # t0 = mean(.9, .8, .1) = .6; t1 = mean(.8, .05, .6, .45) = .475
    np.testing.assert_allclose(cut.thresholds, [0.6, 0.475], rtol=1e-6)
    # Disagreeing: pixel 2 (0 → 1, max .9 ≥ t1), 4 (1 → 0, max .95 ≥ t0), 6 (1 → 0, max .55 < t0): T = 2.
    assert cut.num_issues == 2
    # The 2 lowest self-confidences are pixels 4 (.05) and 2 (.1); pixel 6 (.45) is not flagged.
    issues = cut.flag(ev)
    assert issues.mask[0].tolist() == [False, False, True, False, True, False, False]
    assert issues.swap_list() == [(0, 1, 1), (1, 0, 1)]
    assert issues.flagged == 2 and issues.share == pytest.approx(2 / 7)


def test_an_agreeing_pixel_takes_its_ranking_slot_unflagged():
    # a (label 0) agrees with the model but is unsure (s = .36); b (1 → 0, s = .25) and
    # f (2 → 1, s = .38) disagree confidently: T = 2, the two lowest are b and a, so only b
    # is flagged (cleanlab drops agreeing pixels after ranking, it does not skip them).
    pixels = {
        "a": ([0.36, 0.32, 0.32], 0),
        "b": ([0.70, 0.25, 0.05], 1),
        "f": ([0.02, 0.60, 0.38], 2),
        "d": ([0.94, 0.03, 0.03], 0),
        "e": ([0.05, 0.90, 0.05], 1),
        "c": ([0.02, 0.08, 0.90], 2),
    }
    probs, label = _toy([v[0] for v in pixels.values()], [v[1] for v in pixels.values()])
    reducer = QualityReducer(3)
    ev = image_evidence(probs, label)
    reducer.add(ev)
    cut = reducer.finish()
    np.testing.assert_allclose(cut.thresholds, [0.65, 0.575, 0.64], rtol=1e-6)
    assert cut.num_issues == 2
    assert cut.flag(ev).mask[0].tolist() == [False, True, False, False, False, False]
    oracle_mask = find_label_issues(label[None], probs[None], verbose=False, n_jobs=1)[0]
    assert oracle_mask[0].tolist() == [False, True, False, False, False, False]


def test_a_tie_for_the_maximum_goes_to_the_first_class_as_argmax_does():
    probs, label = _toy([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]], [1, 0, 0])
    ev = image_evidence(probs, label)
    assert ev.off_index.tolist() == [0] and ev.off_pred.tolist() == [0] and ev.off_label.tolist() == [1]


def test_a_class_never_labeled_gets_cleanlabs_floor_threshold():
    probs, label = _toy([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]], [0, 1])
    reducer = QualityReducer(3)
    reducer.add(image_evidence(probs, label))
    assert reducer.thresholds()[2] == pytest.approx(2e-6)


# --- against cleanlab -----------------------------------------------------------------------


def test_image_scores_match_cleanlab(oracle):
    ours = np.array([ev.score for ev in oracle["evidence"]])
    assert spearmanr(ours, oracle["cl_scores"]).statistic >= 0.99
    np.testing.assert_allclose(ours, oracle["cl_scores"], rtol=1e-9)


def test_flagged_pixels_match_cleanlab(oracle):
    ours = np.stack([i.mask for i in oracle["issues"]])
    theirs = oracle["cl_issues"]
    assert theirs.sum() > 1000  # the corruptions are found at all
    iou = (ours & theirs).sum() / (ours | theirs).sum()
    assert iou >= 0.95
    # The documented error bound holds.
    assert (ours ^ theirs).sum() <= oracle["cut"].uncertain_pixels


def test_swap_counts_match_cleanlab(oracle):
    table = common_label_issues(
        oracle["cl_issues"], oracle["labels"], oracle["probs"], class_names=NAMES, top=K * K, verbose=False
    )
    theirs = {(r.given_label, r.predicted_label): r.num_pixel_issues for r in table.itertuples()}
    totals = IssueTotals(K)
    for issues in oracle["issues"]:
        totals.add(issues)
    metrics = totals.metrics(oracle["cut"], NAMES, top=K * K)
    ours = {(r["given_label"], r["predicted_label"]): r["num_pixel_issues"] for r in metrics["common_label_issues"]}
    mismatched = int((np.stack([i.mask for i in oracle["issues"]]) ^ oracle["cl_issues"]).sum())
    assert set(ours) == set(theirs)
    assert sum(abs(ours[k] - theirs[k]) for k in ours) <= mismatched
    # The planted swap (circle ↔ square ↔ triangle) and relabel (→ "other") show up.
    assert any(g == "other" for g, _ in ours)
    assert metrics["flagged_pixels"] == sum(ours.values())
    assert metrics["classes"]["other"]["threshold"] == pytest.approx(oracle["cut"].thresholds[4])


def test_corrupted_images_rank_above_clean_ones(oracle):
    scores = np.array([ev.score for ev in oracle["evidence"]])
    shares = np.array([i.share for i in oracle["issues"]])
    corrupted = oracle["corrupted"]
    assert scores[corrupted].max() < scores[~corrupted].min()
    assert shares[corrupted].min() > shares[~corrupted].max()


def test_ignored_pixels_count_nowhere():
    probs, labels, _ = _dataset(seed=1, n=6, keep_ignore=True)
    assert (labels == IGNORE).any()
    evidence = [image_evidence(p, lab) for p, lab in zip(probs, labels, strict=True)]
    _, _, issues = _run(evidence)
    # cleanlab on the labeled pixels alone, all images in one row: the same dataset for it.
    keep = labels != IGNORE
    flat_probs = np.moveaxis(probs, 1, -1)[keep].T[None, :, None, :]
    flat_labels = labels[keep][None, None, :]
    theirs = find_label_issues(flat_labels, flat_probs, verbose=False, n_jobs=1)[0, 0]
    ours = np.stack([i.mask for i in issues])[keep]
    assert theirs.sum() > 0 and (ours & theirs).sum() / (ours | theirs).sum() >= 0.95
    assert not np.stack([i.mask for i in issues])[~keep].any()
    for ev, p, lab in zip(evidence, probs, labels, strict=True):
        k = lab != IGNORE
        score, _ = get_label_quality_scores(lab[k][None, None, :], p[:, k][None, :, None, :], verbose=False)
        assert ev.score == pytest.approx(score[0], rel=1e-9)
        assert ev.labeled == k.sum()


def test_stride_is_cleanlab_on_the_sampled_pixels(oracle):
    probs, labels = oracle["probs"], oracle["labels"]
    evidence = [image_evidence(p, lab, stride=2) for p, lab in zip(probs, labels, strict=True)]
    _, _, issues = _run(evidence)
    assert issues[0].mask.shape == labels.shape[1:]
    sampled = np.stack([i.mask[::2, ::2] for i in issues])
    theirs = find_label_issues(labels[:, ::2, ::2], probs[:, :, ::2, ::2], verbose=False, n_jobs=1)
    assert (sampled & theirs).sum() / (sampled | theirs).sum() >= 0.95
    # Each flag fills its 2×2 block.
    np.testing.assert_array_equal(issues[0].mask, sampled[0].repeat(2, 0).repeat(2, 1))


# --- streaming properties -----------------------------------------------------------------------


def test_image_order_does_not_matter(oracle):
    order = np.random.default_rng(5).permutation(len(oracle["evidence"]))
    _, cut, issues = _run(oracle["evidence"], order)
    assert np.array_equal(cut.thresholds, oracle["cut"].thresholds)  # exactly, not approximately
    assert (cut.num_issues, cut.cut_bin, cut.cut_inclusive) == (
        oracle["cut"].num_issues,
        oracle["cut"].cut_bin,
        oracle["cut"].cut_inclusive,
    )
    for a, b in zip(issues, oracle["issues"], strict=True):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.swaps, b.swaps)


def test_merged_reducers_equal_one(oracle):
    evidence = oracle["evidence"]
    halves = QualityReducer(K), QualityReducer(K)
    for i, ev in enumerate(evidence):
        halves[i % 2].add(ev)
    halves[1].merge(halves[0])
    cut = halves[1].finish()
    assert np.array_equal(cut.thresholds, oracle["cut"].thresholds)
    assert (cut.num_issues, cut.cut_bin) == (oracle["cut"].num_issues, oracle["cut"].cut_bin)


def test_evidence_round_trips_within_its_bound(oracle):
    for ev in oracle["evidence"]:
        data = ev.to_bytes()
        assert len(data) <= evidence_bound(ev.height, ev.width, K)
        back = type(ev).from_bytes(data)
        assert back.to_bytes() == data
        assert (back.score, back.labeled) == (ev.score, ev.labeled)
        for name in ("class_pixels", "class_confidence", "off_index", "off_label", "off_pred", "off_conf", "off_top"):
            np.testing.assert_array_equal(getattr(back, name), getattr(ev, name))


@pytest.mark.parametrize("num_classes", [3, 300])
def test_the_bound_holds_when_every_pixel_disagrees(num_classes):
    rng = np.random.default_rng(num_classes)
    logits = rng.normal(size=(num_classes, 30, 40)).astype(np.float32) * 4
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    label = np.where(probs.argmax(axis=0) == 0, 1, 0).astype(np.int32)  # never the argmax
    ev = image_evidence(probs, label)
    assert len(ev.off_index) == 30 * 40
    data = ev.to_bytes()
    assert len(data) <= evidence_bound(30, 40, num_classes)
    assert type(ev).from_bytes(data).to_bytes() == data


def test_maps_give_the_same_evidence(oracle):
    p, lab = oracle["probs"][0], oracle["labels"][0].copy()
    lab[:5] = IGNORE
    sc = np.take_along_axis(p, np.maximum(lab, 0)[None], axis=0)[0]
    ev = image_evidence_from_maps(sc, p.max(axis=0), p.argmax(axis=0), lab, num_classes=K)
    assert ev.to_bytes() == image_evidence(p, lab).to_bytes()


def test_flagged_mask_as_rle(oracle):
    issues = max(oracle["issues"], key=lambda i: i.flagged)
    np.testing.assert_array_equal(decode_rle(issues.rle()).astype(bool), issues.mask)


def test_bad_inputs_name_the_bad_value():
    probs = np.full((3, 2, 2), 1 / 3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"label ids \[3\] outside \[0, 3\)"):
        image_evidence(probs, np.array([[0, 1], [2, 3]]))
    with pytest.raises(ValueError, match=r"\(3, 2, 2\) and \(2, 3\)"):
        image_evidence(probs, np.zeros((2, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        image_evidence(probs, np.zeros((2, 2), dtype=np.int32), stride=0)
    with pytest.raises(ValueError, match="evidence has 3 classes, the reducer 4"):
        QualityReducer(4).add(image_evidence(probs, np.zeros((2, 2), dtype=np.int32)))
    with pytest.raises(ValueError, match="not segbatch label-quality evidence"):
        type(image_evidence(probs, np.zeros((2, 2), dtype=np.int32))).from_bytes(b"x" * 64)
