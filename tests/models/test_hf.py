"""Hugging Face transformers models (``hf:``) against transformers' own recipe, on real photographs.

The recipe: image processor → model → ``post_process_semantic_segmentation`` /
``post_process_instance_segmentation`` with the original size. segbatch runs the same
model through its read stage (uint8 resize as the processor does) and predictor (normalize
on the device, BatchNorm folded, exact class map).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbatch.errors import JobError
from segbatch.models.bundle import ModelOptions
from segbatch.models.resolve import load_bundle, resolve_model
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from segbatch.stages.tiled import TiledRead, join_strips
from segbatch.stages.tiling import TileSpec
from tests.models import tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    tiny.segformer(root / "segformer")
    tiny.mask2former(root / "mask2former")
    tiny.upernet(root / "upernet")
    return {p.name: p for p in root.iterdir()}


def run_segbatch(ref: str, options: ModelOptions | None = None, **kwargs) -> tuple[Predictor, dict]:
    predictor = Predictor(model=resolve_model(ref, **kwargs), options=options or ModelOptions())
    batch = read_batch({"uri": np.array(tiny.photos(), dtype=object)}, predictor.preprocess)
    out = predictor(batch)
    assert list(out["status"]) == ["ok"] * len(tiny.photos()), out["error"]
    return predictor, out


def recipe(folder: Path, path: str, task: str = "semantic", threshold: float = 0.5, backend: str | None = None):
    """transformers' own recipe, as its model cards show it (``backend``: the processor's, default transformers')."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation

    processor = AutoImageProcessor.from_pretrained(folder, **({"backend": backend} if backend else {}))
    universal = (folder / "config.json").read_text().count('"mask2former"') > 0
    model = (AutoModelForUniversalSegmentation if universal else AutoModelForSemanticSegmentation).from_pretrained(
        folder
    )
    image = Image.open(path).convert("RGB")
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    if task == "semantic":
        return processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()
    return processor.post_process_instance_segmentation(
        outputs, threshold=threshold, target_sizes=[image.size[::-1]], return_binary_maps=True
    )[0]


@pytest.mark.parametrize(
    ("name", "backend", "resample"),
    [
        ("segformer", None, "torch-antialias-uint8"),  # transformers 5's default: the torchvision backend
        ("segformer", "pil", "pillow-bilinear"),  # its PIL backend (transformers 4's default), chosen by a card
        ("upernet", None, "torch-antialias-uint8"),
    ],
)
def test_semantic_heads_agree_with_the_transformers_recipe(models, tmp_path, name, backend, resample):
    kwargs = {}
    if backend == "pil":
        (tmp_path / "card.yaml").write_text("preprocessing: {resample: pillow-bilinear}\n")
        kwargs = {"model_card": str(tmp_path / "card.yaml")}
    predictor, out = run_segbatch(f"hf:{models[name]}", **kwargs)
    assert predictor.preprocess.resample == resample
    assert predictor.folded > 0  # decode-head BatchNorm folded into its convolution
    same = total = 0
    classes = []
    for path, ours in zip(tiny.photos(), out["label_map"], strict=True):
        ref = recipe(models[name], path, backend=backend)
        assert ours.shape == ref.shape
        same += int((ours == ref).sum())
        total += ref.size
        classes.append(len(np.unique(ref)))
    ratio = same / total
    print(
        f"\nhf {name} ({resample}): pixel agreement with transformers' recipe {ratio:.6f} "
        f"({total - same} of {total} pixels differ), classes per photo {classes}"
    )
    assert min(classes) >= 2, "the fitted head must predict several classes for this test to mean anything"
    assert ratio >= 0.999


def test_an_images_result_does_not_depend_on_its_batch(models):
    """transformers models run ``cpu_batch`` (2) images per pass on a CPU, and a model's output
    changes in its last bits with the pass's size: a short pass is padded, so that one image
    alone, with others, or after a failed neighbour gives the very same probabilities."""
    predictor = Predictor(model=resolve_model(f"hf:{models['segformer']}"), device="cpu")
    assert predictor.bundle.cpu_batch == 2
    batch = read_batch({"uri": np.array(tiny.photos(), dtype=object)}, predictor.preprocess)
    together = predictor(batch)
    for i in range(len(tiny.photos())):
        alone = predictor({k: v[i : i + 1] for k, v in batch.items()})
        assert np.array_equal(alone["label_map"][0], together["label_map"][i])
        assert alone["confidence"][0] == together["confidence"][i]
        assert np.array_equal(alone["class_scores"][0], together["class_scores"][i])


def test_a_tiled_image_runs_cpu_batch_tiles_a_pass_and_its_strips_join_exactly(models):
    """Tiled, a transformers model runs its ``cpu_batch`` tiles per pass on a CPU, a short pass
    padded: strips (whose passes end elsewhere than the whole image's) join into the same map."""
    spec = TileSpec((40, 64), 8)
    predictor = Predictor(model=resolve_model(f"hf:{models['segformer']}"), device="cpu",
                          tiling=TiledRead(spec, tiles_per_pass=None))  # fmt: skip
    assert predictor.tiling is not None and predictor.tiling.tiles_per_pass == 2
    uri = tiny.photos()[0]
    whole = predictor._tiled(uri)[0]
    parts = [predictor._tiled(uri, (k, 4))[0] for k in range(4)]
    assert any(p.tiles % 2 for p in parts)  # a strip whose last pass was short, hence padded
    joined = join_strips(parts)
    assert np.array_equal(joined.label_map, whole.label_map)
    assert joined.confidence == pytest.approx(whole.confidence, rel=1e-12)


def test_upernet_coarse_logits_are_its_forward_before_the_final_upsampling(models):
    from segbatch.models.hf import upernet_coarse

    bundle = load_bundle(resolve_model(f"hf:{models['upernet']}"), ModelOptions())
    x = torch.rand(1, 3, 67, 90)
    with torch.inference_mode():
        coarse, via = upernet_coarse(bundle.module, x)
        assert via == (67, 90) and coarse.shape[-1] < 90
        up = torch.nn.functional.interpolate(coarse, size=via, mode="bilinear", align_corners=False)
        assert torch.equal(up, bundle.module(pixel_values=x).logits)


def test_mask2former_semantic_agrees_with_the_recipe(models):
    _, out = run_segbatch(f"hf:{models['mask2former']}", task="semantic")
    maps = zip(tiny.photos(), out["label_map"], strict=True)
    ratios = [float((ours == recipe(models["mask2former"], p)).mean()) for p, ours in maps]
    print(f"\nhf mask2former semantic: pixel agreement per photo {ratios}")
    assert min(ratios) >= 0.999


def test_mask2former_instances_match_the_recipe(models):
    predictor, out = run_segbatch(f"hf:{models['mask2former']}", ModelOptions(score_threshold=0.05), task="instance")
    assert predictor.bundle.categories[0] == "__background__"  # prepended: labels shift by one
    assert predictor.preprocess.size_divisor == 32 and predictor.preprocess.longest_edge == 224
    matched = 0
    for path, masks, labels, scores in zip(
        tiny.photos(), out["inst_masks"], out["inst_labels"], out["inst_scores"], strict=True
    ):
        ref = recipe(models["mask2former"], path, task="instance", threshold=0.05)
        ref_masks = ref["segmentation"].numpy().astype(bool) if ref["segments_info"] else np.zeros((0,))
        info = ref["segments_info"]
        assert len(masks) == len(info) > 0
        for k, seg in enumerate(info):
            # The recipe's top-k is unsorted; match each of its instances by label, score and mask.
            ious = [
                (m.astype(bool) & ref_masks[k]).sum() / max((m.astype(bool) | ref_masks[k]).sum(), 1)
                if labels[j] - 1 == seg["label_id"] and abs(scores[j] - seg["score"]) < 1e-4
                else 0.0
                for j, m in enumerate(masks)
            ]
            assert max(ious) >= 0.99, (k, seg, max(ious))
            matched += 1
    print(f"\nhf mask2former instance: {matched} instances matched with mask IoU >= 0.99")


def _hub_cache(home: Path, repo: str, folder: Path) -> str:
    """The layout huggingface_hub writes: blobs by hash, a snapshot of links, refs/main."""
    repo_dir = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return commit


def test_hub_ids_resolve_offline_through_the_standard_cache(models, tmp_path, monkeypatch):
    commit = _hub_cache(tmp_path, "acme/tiny-segformer", models["segformer"])
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    resolved = resolve_model("hf:acme/tiny-segformer")
    local = resolve_model(f"hf:{models['segformer']}")
    assert resolved.source == f"hf:acme/tiny-segformer@{commit}"
    assert resolved.sha256 == local.sha256 and resolved.categories == local.categories
    assert resolve_model("hf:acme/tiny-segformer", revision=commit).sha256 == local.sha256
    with pytest.raises(JobError, match=r"hub id 'acme/tiny-segformer' at revision 'v2' is not in the Hugging Face "
                       r"cache \(.*hub\) and HF_HUB_OFFLINE is set"):  # fmt: skip
        resolve_model("hf:acme/tiny-segformer", revision="v2")
    with pytest.raises(JobError, match=r"hub id 'acme/other' is not in the Hugging Face cache"):
        resolve_model("hf:acme/other")


def test_the_model_travels_as_bytes_no_folder_needed(models, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(models["segformer"], folder)
    resolved = resolve_model(f"hf:{folder}")
    shutil.rmtree(folder)  # an actor has no access to the driver's files
    bundle = load_bundle(resolved, ModelOptions())
    assert bundle.categories == tuple(tiny.SEMANTIC_LABELS) and bundle.background == 0
    assert sorted(resolved.files) == ["config.json", "model.safetensors", "preprocessor_config.json"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"Hugging Face model folder '.*nope' is not a folder \(it does not exist\)"),
        ("pickled", r"has no \*.safetensors weights \(it holds pytorch_model.bin: pickled weights"),
        ("no-task", r"is a universal mask2former model: pass --task semantic or --task instance"),
        ("card", r"names 3 categories but hf:.* has 6 output classes"),
        ("weights", r"--weights 'w.pt' applies to built-in models and plugins"),
        ("instance-on-semantic", r"is a semantic segmentation model; --task 'instance' does not apply"),
        ("no-processor", r"has no preprocessor_config.json"),
    ],
)
def test_bad_hf_models_are_job_errors(models, tmp_path, case, message):
    ref, kwargs = f"hf:{models['segformer']}", {}
    if case == "missing":
        ref = f"hf:{tmp_path / 'nope'}"
    elif case == "pickled":
        (tmp_path / "m").mkdir()
        shutil.copy(models["segformer"] / "config.json", tmp_path / "m")
        (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"pickle")
        ref = f"hf:{tmp_path / 'm'}"
    elif case == "no-task":
        ref = f"hf:{models['mask2former']}"
    elif case == "card":
        (tmp_path / "card.yaml").write_text("categories: [a, b, c]\n")
        kwargs = {"model_card": str(tmp_path / "card.yaml")}
    elif case == "weights":
        kwargs = {"weights": "w.pt"}
    elif case == "instance-on-semantic":
        kwargs = {"task": "instance"}
    elif case == "no-processor":
        shutil.copytree(models["segformer"], tmp_path / "m")
        (tmp_path / "m" / "preprocessor_config.json").unlink()
        ref = f"hf:{tmp_path / 'm'}"
    with pytest.raises(JobError, match=message):
        resolve_model(ref, **kwargs)


def test_a_card_overrides_categories_and_preprocessing(models, tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text(
        "categories: [bg, a, b, c, d, e]\nbackground: bg\n"
        "preprocessing: {resample: pillow-bilinear, resize: [64, 80]}\n"
    )
    resolved = resolve_model(f"hf:{models['segformer']}", model_card=str(card))
    assert resolved.categories == ("bg", "a", "b", "c", "d", "e")
    assert resolved.preprocess.resize == (64, 80) and resolved.preprocess.resample == "pillow-bilinear"
    assert resolved.identity_options()["model_card_sha256"] == hashlib.sha256(card.read_bytes()).hexdigest()
    assert load_bundle(resolved, ModelOptions()).background == 0


PROCESSORS = [
    ("segformer", "SegformerImageProcessor"),
    ("mobilevit", "MobileViTImageProcessor"),  # shortest edge, centre crop, bicubic, BGR, no normalization
    ("mask2former", "Mask2FormerImageProcessor"),  # shortest/longest edge, size divisor
    ("maskformer", "MaskFormerImageProcessor"),
    ("beit", "BeitImageProcessor"),
    ("dpt", "DPTImageProcessor"),
]


@pytest.mark.parametrize("backend", ["", "Pil"])
@pytest.mark.parametrize(("model_type", "name"), PROCESSORS)
def test_every_processor_family_is_reproduced_on_both_backends(model_type, name, backend):
    """Each processor's defaults, read into a Preprocess, give the processor's own pixel values
    (verify_against_processor raises otherwise) with the filter of its backend."""
    import importlib

    from segbatch.models.hf import processor_to_preprocess, verify_against_processor

    module = importlib.import_module(
        f"transformers.models.{model_type}.image_processing_{'pil_' if backend else ''}{model_type}"
    )
    processor = getattr(module, name + backend)()
    pre = processor_to_preprocess(processor, model_type, name)
    assert pre.resample.startswith("pillow-" if backend else "torch-")
    verify_against_processor(pre, processor, name)


def test_a_processor_rule_segbatch_does_not_reproduce_is_a_job_error():
    from transformers import DPTImageProcessor

    from segbatch.models.hf import processor_to_preprocess

    with pytest.raises(JobError, match=r"its DPTImageProcessor uses keep_aspect_ratio, ensure_multiple_of, which "
                       r"segbatch does not reproduce; give the preprocessing in a --model-card"):  # fmt: skip
        processor_to_preprocess(DPTImageProcessor(keep_aspect_ratio=True, ensure_multiple_of=32), "dpt", "hf:dpt")


@pytest.mark.parametrize(
    ("name", "task"), [("segformer", None), ("upernet", None), ("mask2former", "semantic"), ("mask2former", "instance")]
)
def test_the_driver_plans_what_the_actors_build_without_loading_the_weights(models, name, task):
    """``describe`` takes an hf: model's task, categories, background and preprocessing from its
    config and image processor (the weights are loaded by the actors only): the same as the built bundle."""
    from segbatch.models.info import ModelInfo, describe

    resolved = resolve_model(f"hf:{models[name]}", task=task)
    assert describe(resolved, ModelOptions()) == ModelInfo.of(load_bundle(resolved, ModelOptions()))
