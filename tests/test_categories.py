"""categories.py: matching model and label categories into one evaluation space."""

from __future__ import annotations

import numpy as np
import pytest

from segbatch.categories import UNLABELED, QualitySpace, build_eval_space, parse_label_map
from segbatch.errors import JobError
from segbatch.metrics import IGNORE

VOCISH = ("__background__", "cat", "diningtable", "sofa", "tvmonitor")


def test_png_ids_default_to_the_model_ids_and_255_is_ignored():
    es = build_eval_space(VOCISH, 0, "png")
    raw = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    np.testing.assert_array_equal(es.labels(raw), [[0, 1, 2], [3, 4, IGNORE]])
    np.testing.assert_array_equal(es.predictions(np.array([4, 0])), [4, 0])
    assert es.model_only == () and es.label_only == ()


def test_png_ids_beyond_the_model_are_label_only_classes():
    es = build_eval_space(VOCISH, 0, "png")
    e = es.labels(np.array([[7]], np.uint8))[0, 0]
    assert es.names[e] == "label_7"


def test_coco_names_match_ignoring_case_spaces_and_underscores():
    es = build_eval_space(
        VOCISH, 0, "coco", {3: "Dining Table", 8: "Cat", 9: "couch", 11: "zebra"}, overrides={"sofa": "couch"}
    )
    raw = np.array([[3, 8, 9, 11, UNLABELED]])
    names = [es.names[i] for i in es.labels(raw)[0]]
    assert names == ["diningtable", "cat", "sofa", "zebra", "__background__"]
    assert ("sofa", "couch") in es.pairs
    assert es.model_only == ("tvmonitor",)  # background is matched by the unlabeled pixels
    assert es.label_only == ("zebra",)


def test_png_names_from_a_label_map_file():
    lm = parse_label_map(b"categories: {0: background, 1: kitty, 2: table}\nmatch: {cat: kitty}\n", "map.yaml")
    es = build_eval_space(VOCISH, 0, "png", lm.categories, lm.match)
    names = [es.names[i] for i in es.labels(np.array([[0, 1, 2]], np.uint8))[0]]
    assert names == ["__background__", "cat", "table"]
    assert es.label_only == ("table",)
    assert set(es.model_only) == {"diningtable", "sofa", "tvmonitor"}


def test_flat_label_map_file_is_the_match_table():
    assert parse_label_map(b'{"sofa": "couch"}', "m.json").match == {"sofa": "couch"}


def test_torchvision_placeholders_are_not_classes():
    es = build_eval_space(("__background__", "person", "N/A", "car"), 0, None)
    assert es.names == ("__background__", "person", "car")
    assert es.predictions(np.array([2]))[0] == 0  # an N/A prediction counts as background


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"unicorn": "cat"},
            r"label map: model categories \['unicorn'\] are unknown; valid: __background__, cat, diningtable",
        ),
        ({"cat": "unicorn"}, r"label map \('cat'\): label categories \['unicorn'\] are unknown; valid: cat"),
    ],
)
def test_bad_overrides_name_the_bad_value(overrides, message):
    with pytest.raises(JobError, match=message):
        build_eval_space(VOCISH, 0, "coco", {1: "cat"}, overrides)


def test_overrides_match_names_as_everywhere_else():
    """``TV/Monitor`` in a label map is the model's ``tvmonitor``, as run-time matching has it."""
    space = build_eval_space(("background", "tvmonitor"), 0, "coco", {5: "screen"}, {"TV/Monitor": "Screen"})
    assert space.pairs == (("tvmonitor", "screen"),)


def test_label_ids_the_model_does_not_know_are_left_out_of_the_means():
    """A stray PNG id 7 for a 3-class model: its class counts nowhere in the means, and is reported."""
    from segbatch.metrics import DiceEvaluator, confusion

    space = build_eval_space(("background", "cat", "dog"), 0, "png")
    gt = np.zeros((10, 10), np.uint8)
    gt[:5] = 1
    gt[0, :5] = 7  # 5 pixels of an id the model has no class for
    pred = np.zeros((10, 10), np.int32)
    pred[:5] = 1
    ev = DiceEvaluator(space.num_classes)
    ev.process(confusion(space.labels(gt), space.predictions(pred), space.num_classes))
    result = ev.evaluate(list(space.names), space.background, space.counted_mask())
    assert result["classes"]["label_7"]["gt_pixels"] == 5
    assert result["mean_over"] == ["cat"]  # not label_7, not background
    assert result["mean_dice"] == pytest.approx(result["classes"]["cat"]["dice"])


def test_unknown_label_map_keys_are_refused():
    with pytest.raises(JobError, match="unknown keys"):
        parse_label_map(b"categories: {}\nmatches: {}\n", "m.yaml")


def test_quality_probs_sum_model_classes_into_quality_classes_in_class_order():
    """Several model classes into one quality class, one class only the labels know (0): the
    same float32 values as np.add.at, which sums in model class order."""
    qs = QualitySpace(("a", "b", "label-only"), np.array([0, 1, 2], np.int32), np.array([0, 1, 0, 0, 1], np.int32))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=(30, 40)).transpose(2, 0, 1).astype(np.float16)
    expected = np.zeros((3, 30, 40), np.float32)
    np.add.at(expected, qs.model_to_q, probs.astype(np.float32))
    got = qs.probs(probs)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert not got[2].any() and np.allclose(got.sum(axis=0), 1.0, atol=5e-3)
