"""The Parquet schemas of a run, defined once, here.

Part files (``parts/*.parquet``) hold one row per image in :data:`PART_SCHEMA`: the
``images.parquet`` columns plus the image's masks nested. Finalize splits them into
``images.parquet`` (:data:`IMAGES_SCHEMA`) and ``masks.parquet`` (:data:`MASKS_SCHEMA`).
"""

from __future__ import annotations

import pyarrow as pa

SEGMENTATION_TYPE = pa.struct(
    [
        pa.field("size", pa.list_(pa.int32())),  # [height, width]
        pa.field("counts", pa.string()),  # COCO compressed RLE
    ]
)

MASK_FIELDS = [
    pa.field("category_id", pa.int32()),
    pa.field("category", pa.string()),
    pa.field("score", pa.float32()),  # instance score; semantic: mean top-class probability
    pa.field("area", pa.int64()),
    pa.field("bbox", pa.list_(pa.float64(), 4)),  # [x, y, w, h]
    pa.field("segmentation", SEGMENTATION_TYPE),
]

CLASS_STATS_TYPE = pa.struct(
    [
        pa.field("category", pa.string()),  # evaluation class name (metrics.json "classes" key)
        pa.field("intersection", pa.int64()),  # null when the image has no label
        pa.field("pred_pixels", pa.int64()),
        pa.field("gt_pixels", pa.int64()),  # null when the image has no label
    ]
)

SWAP_TYPE = pa.struct(
    [
        pa.field("given", pa.string()),  # the label's class
        pa.field("predicted", pa.string()),  # the class the model believes instead
        pa.field("pixels", pa.int64()),
    ]
)

CONFUSION_TYPE = pa.struct(
    [
        pa.field("gt", pa.int32()),  # evaluation class ids (job.json "eval_classes")
        pa.field("pred", pa.int32()),
        pa.field("pixels", pa.int64()),
    ]
)

IMAGE_FIELDS = [
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("file_name", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("width", pa.int32()),  # after EXIF orientation; null if undecodable
    pa.field("height", pa.int32()),
    pa.field("status", pa.string(), nullable=False),  # "ok" | "error"
    pa.field("error", pa.string()),  # "<stage>: <message>", null when ok
    pa.field("labeled", pa.bool_(), nullable=False),
    pa.field("dice", pa.float64()),  # per-image Dice; null without label or foreground
    pa.field("num_masks", pa.int32(), nullable=False),
    pa.field("class_stats", pa.list_(CLASS_STATS_TYPE)),
    pa.field("confusion", pa.list_(CONFUSION_TYPE)),
    pa.field("t_read", pa.float64()),  # seconds: fetch + decode + resize
    pa.field("t_predict", pa.float64()),  # seconds: this image's share of its model batch
    pa.field("t_encode", pa.float64()),  # seconds: RLE + label + scoring
    pa.field("worker", pa.string()),  # where the model ran: "node=… pid=… device=cpu|cuda gpus=0"
    pa.field("conversion", pa.string()),  # how the file became 8-bit RGB ("CMYK → RGB", "I;16 range 3..235 → 0..255")
    # How sure the model was (null for error rows). Semantic: from the softmax of the coarse
    # logits, mean top-class probability over the image and the share of pixels whose top two
    # classes are within 0.1; instance: the mean instance score and the instances within 0.1
    # above the score threshold.
    pa.field("confidence", pa.float32()),
    pa.field("uncertain_share", pa.float32()),
    pa.field("near_threshold", pa.int32()),
    # Semantic: the top-class probability at the model's coarse resolution, as a grayscale
    # 8-bit PNG (0..255 ↔ 0..1), for the report's confidence panels; null otherwise.
    pa.field("confidence_map", pa.binary()),
    # Runs with labels, semantic models: how likely the label is wrong (segbatch.quality, cleanlab's
    # method): the softmin of the labeled pixels' self-confidences (0 worst .. 1 best), the pixels
    # flagged as likely label issues (counted on the grid of every quality_stride-th pixel) and
    # their share, the flagged pixels per (given, predicted) class pair, and the flagged mask
    # (each flag fills its stride × stride block). Filled by finalize, which needs the whole run.
    pa.field("label_quality", pa.float64()),
    pa.field("label_issue_pixels", pa.int64()),
    pa.field("label_issue_share", pa.float64()),
    pa.field("label_issue_swaps", pa.list_(SWAP_TYPE)),
    pa.field("label_issue_mask", SEGMENTATION_TYPE),
]

IMAGES_SCHEMA = pa.schema(IMAGE_FIELDS)
PART_SCHEMA = pa.schema(
    [
        *IMAGE_FIELDS,
        pa.field("masks", pa.list_(pa.struct(MASK_FIELDS))),
        # segbatch.quality.ImageEvidence bytes, read back by finalize's label-quality passes.
        pa.field("quality_evidence", pa.binary()),
    ]
)
MASKS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),  # COCO annotation id
        pa.field("image_id", pa.int64(), nullable=False),
        *MASK_FIELDS,
    ]
)
