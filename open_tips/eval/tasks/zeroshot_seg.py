"""Zero-shot segmentation in the official notebook protocol, through the same code as
``open-tips zeroshot-seg`` (``open_tips.inference.dense``): value-trick patch tokens, prompt-averaged class
text, whole image or sliding window, labels at each image's original resolution."""

from __future__ import annotations

from open_tips.eval.registry import Task, register_task
from open_tips.eval.zeroshot_seg import zeroshot_segmentation_images


def run_zeroshot_seg(ctx) -> dict:
    o, data = ctx.options, ctx.data
    test = ctx.split("test")
    names = data.seg_names
    size = o.zeroshot_size or ctx.size
    window = o.zeroshot_window or size
    stride = o.zeroshot_stride or max(1, window * 3 // 4)
    variants = [("zeroshot_seg", o.zeroshot_background)]
    if data.background and o.zeroshot_background != "ignore":
        variants.append(("zeroshot_seg_objects", "ignore"))  # VOC20 / Context59 style
    out = {}
    for key, background in variants:
        prompted = names if background == "name" else names[1:]
        result = zeroshot_segmentation_images(
            ctx.model,
            test.images,
            test.masks,
            names,
            ctx.classes(prompted),
            mode=o.zeroshot_mode,
            size=size,
            window=window,
            stride=stride,
            background=background,
            threshold=o.zeroshot_threshold,
            device=ctx.device,
            progress=o.progress,
        )
        result["protocol"] = ctx.protocol(
            "zeroshot-seg",
            resize=f"short side {size} px, long side truncated (the notebook's ShortSideResize)",
            resample="PIL bicubic",
            resolution=size,
            mode=o.zeroshot_mode
            + (
                f" (window {window}, stride {stride}, softmax averaged)" if o.zeroshot_mode == "slide" else ""
            ),
            features="value-trick patch tokens of the last block (MaskCLIP)",
            labels="cosine per patch, bilinear upsampling to the mask's resolution, argmax",
            background=background,
            classes=len(prompted),
            **ctx.templates_protocol(),
        )
        out[key] = result
    return out


register_task(
    Task(
        "zeroshot-seg",
        run_zeroshot_seg,
        needs=("masks", "seg_names"),
        text=True,
        order=80,
        summary="zero-shot segmentation, notebook protocol (whole or sliding window)",
    )
)
