"""``Context``: what a task runs on: the model, the loaded data, the options, and shared, memoised pieces
(features per split, targets resized for the probes, class text embeddings) so that tasks of one run
share the model's forward passes."""

from __future__ import annotations

import torch

from open_tips.eval.dataset import EvalData, Split
from open_tips.eval.depth import resize_depth
from open_tips.eval.features import FeatureSet, extract_features, has_text, patch_aligned
from open_tips.eval.normals import resize_normals
from open_tips.eval.options import EvalOptions
from open_tips.eval.segmentation import resize_mask
from open_tips.inference.zeroshot import class_embeddings

# What feature extraction does to an image (features.to_pixels): recorded with every result.
FEATURE_PREPROCESSING = {
    "resize": "square (aspect ratio not kept)",
    "resample": "bilinear, antialiased (torchvision), clamped to [0, 1]",
    "pixels": "RGB in [0, 1], no mean/std normalisation",
}


class Context:
    def __init__(self, model, data: EvalData, options: EvalOptions) -> None:
        self.model, self.data, self.options = model, data, options
        self.device = torch.device(options.device) if options.device else next(model.parameters()).device
        self.size = patch_aligned(options.image_size or model.cfg.image_size, model.vision.patch_size)
        self.text = has_text(model)
        self._features: dict[tuple[str, bool], FeatureSet] = {}
        self._targets: dict[tuple[str, str], torch.Tensor] = {}
        self._classes: dict[tuple, torch.Tensor] = {}
        self.seconds: dict[str, float] = {}

    def split(self, name: str) -> Split:
        split = getattr(self.data, name)
        if split is None:
            raise ValueError(f"{self.data.suite}: no {name} split")
        return split

    # -- features -------------------------------------------------------------------------------------

    def features(self, name: str, patches: bool = False) -> FeatureSet:
        """Features of split ``name`` ("train" / "test") at the run's size; ``patches`` keeps patch tokens
        (dense probes), otherwise CLS only. Patch features already in memory serve CLS requests too."""
        if (name, True) in self._features:
            return self._features[(name, True)]
        if not patches and (name, False) in self._features:
            return self._features[(name, False)]
        split, o = self.split(name), self.options
        import time

        start = time.perf_counter()
        result = extract_features(
            self.model,
            split.images,
            self.size,
            batch_size=o.batch_size,
            device=self.device,
            patches=patches,
            cache_dir=o.cache_dir,
            model_key=o.model_key,
            dataset_key=split.key,
            workers=o.workers,
            amp=o.amp,
            desc=f"{self.data.suite} {name}",
            progress=o.progress,
        )
        self.seconds["features"] = round(self.seconds.get("features", 0.0) + time.perf_counter() - start, 3)
        self._features[(name, patches)] = result
        return result

    # -- targets for the dense probes -----------------------------------------------------------------

    def targets(self, name: str, kind: str) -> torch.Tensor:
        """``masks`` [N, S, S] int64, ``depth`` [N, S, S] metres (0 where invalid: outside the evaluation
        crop or the depth range) or ``normals`` [N, S, S, 3] of split ``name``, resized (nearest) to the
        run's square size S, as the probes are trained and scored."""
        key = (name, kind)
        if key not in self._targets:
            split, size, o = self.split(name), self.size, self.options
            if kind == "masks":
                value = torch.stack([resize_mask(m, size) for m in split.masks])
            elif kind == "depth":
                value = torch.stack([resize_depth(d, size) for d in split.depth])
                value = torch.where((value > o.depth_max) | ~torch.isfinite(value), 0.0, value)
                if split.valid is not None:
                    crop = torch.stack([resize_mask(v.astype("uint8"), size) for v in split.valid]).bool()
                    value = torch.where(crop, value, 0.0)
            elif kind == "normals":
                value = torch.stack([resize_normals(n, size) for n in split.normals])
            else:
                raise ValueError(f"unknown target kind {kind!r}")
            self._targets[key] = value
        return self._targets[key]

    # -- text -----------------------------------------------------------------------------------------

    def classes(self, names: list[str]) -> torch.Tensor:
        """[C, D] unit class embeddings: the mean of the normalised embeddings of the templates."""
        key = tuple(names)
        if key not in self._classes:
            with torch.no_grad():
                self._classes[key] = class_embeddings(self.model, names, self.options.templates).float().cpu()
        return self._classes[key]

    # -- what to record -------------------------------------------------------------------------------

    def protocol(self, task: str, **extra) -> dict:
        """The preprocessing of the cached features and ``extra`` task settings, for results.json."""
        return {"task": task, "resolution": self.size, **FEATURE_PREPROCESSING, **extra}

    def templates_protocol(self) -> dict:
        return {"templates": self.options.templates_name, "num_templates": len(self.options.templates)}

    def probe_kwargs(self) -> dict:
        o = self.options
        return {"epochs": o.probe_epochs, "lr": o.probe_lr, "device": self.device, "progress": o.progress}
