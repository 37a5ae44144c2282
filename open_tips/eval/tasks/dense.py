"""Linear probes on frozen patch tokens: semantic segmentation (mIoU), depth (256 bins; RMSE, delta1,
AbsRel) and surface normals (angular errors). Trained and scored at the run's square size (masks, depth
and normals resized nearest), on the features cached for the split."""

from __future__ import annotations

from open_tips.eval.depth import depth_probe
from open_tips.eval.normals import normals_probe
from open_tips.eval.registry import Task, register_task
from open_tips.eval.segmentation import segmentation_probe

TARGET_RESIZE = "targets resized (nearest) to the square input size; metrics at that size"


def run_seg(ctx) -> dict:
    o, data = ctx.options, ctx.data
    num_classes = data.num_seg_classes or len(data.seg_names or ())
    if not num_classes:
        train_m, test_m = ctx.targets("train", "masks"), ctx.targets("test", "masks")
        labelled = [m[m != 255] for m in (train_m, test_m)]
        num_classes = int(max(int(t.max()) if t.numel() else 0 for t in labelled)) + 1
    result = segmentation_probe(
        ctx.features("train", patches=True),
        ctx.targets("train", "masks"),
        ctx.features("test", patches=True),
        ctx.targets("test", "masks"),
        num_classes,
        with_cls=o.seg_with_cls,
        **ctx.probe_kwargs(),
    )
    result["protocol"] = ctx.protocol(
        "seg",
        features="patch tokens" + (" + CLS1" if o.seg_with_cls else ""),
        head="1x1 linear on standardised features, logits upsampled bilinearly",
        num_classes=num_classes,
        ignore=255,
        targets=TARGET_RESIZE,
        epochs=o.probe_epochs,
        lr=o.probe_lr,
    )
    return {"seg": result}


def run_depth(ctx) -> dict:
    o = ctx.options
    result = depth_probe(
        ctx.features("train", patches=True),
        ctx.targets("train", "depth"),
        ctx.features("test", patches=True),
        ctx.targets("test", "depth"),
        num_bins=o.depth_bins,
        min_depth=o.depth_min,
        max_depth=o.depth_max,
        spacing=o.depth_spacing,
        **ctx.probe_kwargs(),
    )
    crop = ctx.data.info.get("depth_crop")
    result["protocol"] = ctx.protocol(
        "depth",
        features="patch tokens + CLS1",
        head=f"{o.depth_bins} bins ({o.depth_spacing}) over [{o.depth_min}, {o.depth_max}] m, expectation decoding",
        valid=f"0 < depth <= {o.depth_max} m" + (f", evaluation crop {crop}" if crop else ""),
        targets=TARGET_RESIZE,
        epochs=o.probe_epochs,
        lr=o.probe_lr,
    )
    return {"depth": result}


def run_normals(ctx) -> dict:
    o = ctx.options
    result = normals_probe(
        ctx.features("train", patches=True),
        ctx.targets("train", "normals"),
        ctx.features("test", patches=True),
        ctx.targets("test", "normals"),
        **ctx.probe_kwargs(),
    )
    result["protocol"] = ctx.protocol(
        "normals",
        features="patch tokens + CLS1",
        head="1x1 linear to a 3-vector, cosine loss",
        source=ctx.data.info.get("normals", "the dataset's normal maps"),
        targets=TARGET_RESIZE,
        epochs=o.probe_epochs,
        lr=o.probe_lr,
    )
    return {"normals": result}


register_task(
    Task("seg", run_seg, needs=("masks", "train_masks"), order=50, summary="linear segmentation probe (mIoU)")
)
register_task(
    Task(
        "depth", run_depth, needs=("depth",), order=60, summary="linear depth probe, 256 bins (RMSE, delta1)"
    )
)
register_task(
    Task("normals", run_normals, needs=("normals",), order=70, summary="linear surface-normal probe (angles)")
)
