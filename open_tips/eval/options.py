"""``EvalOptions``: every setting of an evaluation run, each with the protocol's default."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from open_tips.inference.zeroshot import TIPS_TEMPLATES


@dataclass
class EvalOptions:
    image_size: int | None = None  # model input side; None = the model's training resolution
    device: str | None = None  # None = where the model's parameters are
    batch_size: int = 64  # images per forward pass
    workers: int = 0  # image-decoding processes for datasets on disk
    amp: bool = False  # bfloat16 autocast for feature extraction on CUDA
    cache_dir: str | None = None  # feature cache; used only together with model_key
    model_key: str | None = None  # identity of the checkpoint (features.model_fingerprint)
    checkpoint: str | None = None  # recorded in results.json as the model's name
    config: str | None = None  # the config name the checkpoint was loaded with, recorded
    # data sizes
    num_train: int = 300  # built-in suite
    num_test: int = 200
    seed: int = 0
    sample_size: int | None = None  # built-in suite: side the samples are generated at
    caption_noise: float = 0.5  # built-in suite
    max_images: int | None = None  # datasets on disk: images per split (evenly spaced for ImageFolders)
    split: str = "test"  # Karpathy JSON split
    # classification
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_optimizer: str = "adamw"  # or "lbfgs"
    linear_epochs: int = 100
    # dense probes
    probe_epochs: int = 30
    probe_lr: float = 5e-2
    seg_with_cls: bool = False  # seg probe on patch tokens + CLS1 (depth and normals always use CLS)
    depth_bins: int = 256
    depth_min: float = 1e-3
    depth_max: float = 10.0
    depth_spacing: str = "linear"  # or "log"
    depth_scale: float = 1000.0  # PNG depth units per metre (NYUv2: millimetres)
    depth_crop: str = "auto"  # nyuv2: "eigen" (the standard crop), "none", "auto" (eigen at 480x640)
    # zero-shot
    templates: list[str] = field(default_factory=lambda: list(TIPS_TEMPLATES))
    templates_name: str = "tips"  # recorded: which set (or file) the templates came from
    zeroshot_background: str = "name"  # or "threshold" / "ignore"
    zeroshot_threshold: float = 0.0
    zeroshot_mode: str = "whole"  # zero-shot segmentation: "whole" or "slide" (notebook protocol)
    zeroshot_size: int | None = None  # short side for zero-shot segmentation (default: image size)
    zeroshot_window: int | None = None  # slide: window side (default: the short side)
    zeroshot_stride: int | None = None  # slide: stride (default: 3/4 of the window)
    # report
    pictures: bool = True  # pca.png / zeroshot_seg.png in output_dir
    num_pictures: int = 4
    progress: bool = True
    merge: bool = True  # merge into an existing results.json of the same model, suite and data


def make_options(options: EvalOptions | None, overrides: dict) -> EvalOptions:
    """``options`` (or the defaults) with the non-None ``overrides`` applied; unknown names are an error."""
    options = options or EvalOptions()
    known = {f.name for f in fields(EvalOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown evaluation options: {', '.join(sorted(unknown))}")
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})
