"""io/listing.py: listing, label pairing, stable image ids, and job-level input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segbatch.config import IMAGE_EXTENSIONS
from segbatch.errors import JobError
from segbatch.io import fs as fsio
from segbatch.io.listing import build_plan, open_labels


def touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_images_sorted_with_relative_names_and_masks_paired(tmp_path):
    for rel in ["b/2.JPG", "a/1.png", "a/sub/3.jpeg", "notes.txt", "c/4.jpg"]:
        touch(tmp_path / "in" / rel)
    for rel in ["a/1.png", "a/sub/3.png", "4.png", "orphan.png"]:
        touch(tmp_path / "masks" / rel)
    labels = open_labels(str(tmp_path / "masks"))
    assert labels.kind == "png"
    plan = build_plan(str(tmp_path / "in"), labels, IMAGE_EXTENSIONS)
    rows = plan.manifest.to_pylist()
    assert [r["file_name"] for r in rows] == ["a/1.png", "a/sub/3.jpeg", "b/2.JPG", "c/4.jpg"]
    assert [r["image_id"] for r in rows] == [1, 2, 3, 4]
    labels = [r["label_uri"] and Path(r["label_uri"]).relative_to(tmp_path / "masks").as_posix() for r in rows]
    # by relative path, then by unique stem ("4"); "2" has no mask
    assert labels == ["a/1.png", "a/sub/3.png", None, "4.png"]
    assert plan.unmatched_labels == 1


def test_masks_inside_the_input_folder_are_not_listed_as_images(tmp_path):
    touch(tmp_path / "ds" / "img" / "1.jpg")
    touch(tmp_path / "ds" / "masks" / "1.png")
    plan = build_plan(str(tmp_path / "ds"), open_labels(str(tmp_path / "ds" / "masks")), IMAGE_EXTENSIONS)
    assert plan.manifest.column("file_name").to_pylist() == ["img/1.jpg"]


def test_coco_labels_give_coco_ids_and_records(tmp_path):
    for rel in ["x/a.jpg", "b.jpg", "z.jpg"]:
        touch(tmp_path / "in" / rel)
    doc = {
        "images": [
            {"id": 40, "file_name": "x/a.jpg", "width": 2, "height": 2},
            {"id": 41, "file_name": "other/b.jpg", "width": 2, "height": 2},
        ],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 40, "category_id": 1, "segmentation": [[0, 0, 1, 0, 1, 1]]}],
    }
    (tmp_path / "labels.json").write_text(json.dumps(doc))
    labels = open_labels(str(tmp_path / "labels.json"))
    plan = build_plan(str(tmp_path / "in"), labels, IMAGE_EXTENSIONS)
    rows = {r["file_name"]: r for r in plan.manifest.to_pylist()}
    assert rows["x/a.jpg"]["image_id"] == 40
    assert rows["b.jpg"]["image_id"] == 41  # matched by its unique basename
    assert rows["z.jpg"]["image_id"] == 42 and rows["z.jpg"]["label_record"] is None
    assert json.loads(rows["x/a.jpg"]["label_record"])["annotations"][0]["category_id"] == 1
    assert labels.kind == "coco" and labels.coco.categories == {1: "cat"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: touch(p / "in" / "readme.txt"), "holds no images"),
        (lambda p: touch(p / "in"), "is a file"),
    ],
)
def test_input_problems_are_job_errors_naming_the_input(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(JobError, match=message) as info:
        build_plan(str(tmp_path / "in"), None, IMAGE_EXTENSIONS)
    assert str(tmp_path / "in") in str(info.value)


def test_missing_labels_and_non_json_label_files_are_job_errors(tmp_path):
    touch(tmp_path / "in" / "a.jpg")
    with pytest.raises(JobError, match=r"labels .* do not exist"):
        open_labels(str(tmp_path / "nope"))
    touch(tmp_path / "labels.csv")
    with pytest.raises(JobError, match=r"not a COCO \.json"):
        open_labels(str(tmp_path / "labels.csv"))


def test_folders_workers_cannot_see_are_refused_single_files_are_not(tmp_path):
    import fsspec

    mem = fsspec.filesystem("memory")
    mem.pipe("/lst/imgs/a.png", b"x")
    mem.pipe("/lst/masks/a.png", b"m")
    # The memory filesystem lives in this process: Ray workers would list it empty.
    with pytest.raises(JobError, match=r"input 'memory://lst/imgs' is on fsspec's in-process memory filesystem"):
        build_plan("memory://lst/imgs", None, IMAGE_EXTENSIONS)
    with pytest.raises(JobError, match=r"labels 'memory://lst/masks' is on fsspec's in-process memory"):
        open_labels("memory://lst/masks")
    with pytest.raises(JobError, match=r"input 'https://example.invalid/imgs' is an http\(s\) URL"):
        build_plan("https://example.invalid/imgs", None, IMAGE_EXTENSIONS)
    assert fsio.read_bytes("memory://lst/imgs/a.png") == b"x"  # single files the driver reads are fine


# Measured in a fresh interpreter: the test process is a Ray driver once the shared cluster is
# up, and Ray's background threads (Ray Data usage reporting, gRPC) allocate Python objects
# that tracemalloc would count as the listing's peak.
_PEAKS = """
import json, sys, tracemalloc
from pathlib import Path
from segbatch.config import IMAGE_EXTENSIONS
from segbatch.io import listing
from segbatch.io.listing import build_plan, open_labels

listing.PAGE = 500
out = []
for folder, n in json.loads(sys.argv[1]):
    root = Path(folder)
    for i in range(n):
        for sub, ext in (("in", "jpg"), ("masks", "png")):
            path = root / sub / f"d{i % 10}" / f"{i:06d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    labels = open_labels(str(root / "masks"))
    tracemalloc.start()
    plan = build_plan(str(root / "in"), labels, IMAGE_EXTENSIONS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out.append([peak, plan.manifest.num_rows, plan.manifest.column("label_uri").null_count])
print(json.dumps(out))
"""


def test_listing_holds_one_page_of_paths_in_python_not_all_of_them(tmp_path):
    # tracemalloc sees Python objects only: the manifest itself is Arrow memory. With pages
    # of 500 paths, planning 8000 images must not hold much more Python than planning 1000
    # (holding every path would be ~8x: three strings of ~100 bytes per image).
    runs = [
        [str(tmp_path / "warm-up"), 10],  # first-call imports and caches are not the listing's
        [str(tmp_path / "small"), 1000],
        [str(tmp_path / "large"), 8000],
    ]
    done = subprocess.run([sys.executable, "-c", _PEAKS, json.dumps(runs)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _, (small, n_small, missing_small), (large, n_large, missing_large) = json.loads(done.stdout)
    assert (n_small, n_large, missing_small, missing_large) == (1000, 8000, 0, 0)
    assert large < 1.5 * small, (small, large)


def test_a_stem_shared_by_several_images_pairs_none_of_them(tmp_path):
    """a/dup.jpg and b/dup.jpg with one dup.png: neither is scored against it, and each says why."""
    for rel in ["a/dup.jpg", "b/dup.jpg", "solo.jpg", "twin.jpg"]:
        touch(tmp_path / "in" / rel)
    for rel in ["dup.png", "x/solo.png", "p/twin.png", "q/twin.png"]:
        touch(tmp_path / "masks" / rel)
    plan = build_plan(str(tmp_path / "in"), open_labels(str(tmp_path / "masks")), IMAGE_EXTENSIONS)
    rows = {r["file_name"]: r for r in plan.manifest.to_pylist()}
    assert rows["a/dup.jpg"]["label_uri"] is None and rows["b/dup.jpg"]["label_uri"] is None
    assert "stem 'dup' is shared by 2 images" in rows["a/dup.jpg"]["label_note"]
    assert rows["solo.jpg"]["label_uri"].endswith("x/solo.png") and rows["solo.jpg"]["label_note"] is None
    assert rows["twin.jpg"]["label_uri"] is None
    assert "stem 'twin' matches 2 mask PNGs" in rows["twin.jpg"]["label_note"]
    assert plan.ambiguous == 3
    assert plan.unmatched_labels == 3  # dup.png and both twins


def test_a_coco_basename_shared_by_several_images_pairs_none_of_them(tmp_path):
    for rel in ["a/dup.jpg", "b/dup.jpg", "c/one.jpg"]:
        touch(tmp_path / "in" / rel)
    doc = {
        "images": [
            {"id": 7, "file_name": "dup.jpg", "width": 2, "height": 2},
            {"id": 8, "file_name": "elsewhere/one.jpg", "width": 2, "height": 2},
        ],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [],
    }
    (tmp_path / "labels.json").write_text(json.dumps(doc))
    plan = build_plan(str(tmp_path / "in"), open_labels(str(tmp_path / "labels.json")), IMAGE_EXTENSIONS)
    rows = {r["file_name"]: r for r in plan.manifest.to_pylist()}
    assert rows["c/one.jpg"]["image_id"] == 8
    assert rows["a/dup.jpg"]["label_record"] is None and rows["b/dup.jpg"]["label_record"] is None
    assert "shared by several listed images" in rows["a/dup.jpg"]["label_note"]
    ids = [r["image_id"] for r in plan.manifest.to_pylist()]
    assert len(set(ids)) == len(ids) == 3 and 7 not in ids


def test_hidden_entries_are_skipped_everywhere_and_counted(tmp_path):
    for rel in ["a.jpg", ".DS_Store", "._a.jpg", ".thumbs/a.jpg", "sub/.hidden.png", "notes.txt"]:
        touch(tmp_path / "in" / rel)
    for rel in ["a.png", "._a.png"]:
        touch(tmp_path / "masks" / rel)
    plan = build_plan(str(tmp_path / "in"), open_labels(str(tmp_path / "masks")), IMAGE_EXTENSIONS)
    assert plan.manifest.column("file_name").to_pylist() == ["a.jpg"]
    assert plan.manifest.column("label_uri").to_pylist()[0].endswith("/a.png")
    assert plan.unmatched_labels == 0  # ._a.png is hidden, not an unused mask
    s = plan.skipped
    assert (s.hidden, s.other_extension) == (4, 1)  # .DS_Store, ._a.jpg, .thumbs/, sub/.hidden.png; notes.txt
    assert ".thumbs/" in s.examples["hidden"] and "4 hidden" in s.describe() and ".txt ×1" in s.describe()


def test_a_symlink_loop_in_the_input_is_a_job_error_naming_the_link(tmp_path):
    touch(tmp_path / "in" / "a.jpg")
    (tmp_path / "in" / "sub").mkdir()
    (tmp_path / "in" / "sub" / "up").symlink_to("..")
    with pytest.raises(JobError, match=r"symbolic link 'sub/up' leads back to '\.'.*remove the link"):
        build_plan(str(tmp_path / "in"), None, IMAGE_EXTENSIONS)
    (tmp_path / "in" / "sub" / "up").unlink()
    (tmp_path / "in" / "self.jpg").symlink_to("self.jpg")
    with pytest.raises(JobError, match=r"cannot follow the symbolic link 'self\.jpg' .*loops"):
        build_plan(str(tmp_path / "in"), None, IMAGE_EXTENSIONS)
    (tmp_path / "in" / "self.jpg").unlink()
    (tmp_path / "in" / "gone.jpg").symlink_to("nowhere.jpg")  # a broken link is skipped and counted
    plan = build_plan(str(tmp_path / "in"), None, IMAGE_EXTENSIONS)
    assert plan.manifest.column("file_name").to_pylist() == ["a.jpg"] and plan.skipped.broken_links == 1
