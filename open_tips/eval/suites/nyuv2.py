"""NYU Depth v2 (and any folder of the same shape): depth linear probe (RMSE, delta1, AbsRel) and, when
normal maps are given, the surface-normal probe.

Layout: ``{train,test}/{rgb|images}/<stem>.<jpg|png>`` + ``{train,test}/depth/<stem>.png`` (16-bit, depth
x ``--depth-scale`` per metre, 1000 = millimetres) or ``<stem>.npy`` (metres), 0 = invalid; optional
``{train,test}/normals/<stem>.png`` (RGB = (n + 1) / 2 * 255) or ``.npy``. The 795 / 654 split of the
labelled set is the standard one (``nyu_depth_v2_labeled.mat`` + ``splits.mat``; see docs/eval.md for a
conversion script).

Evaluation: pixels with 0 < depth <= ``--depth-range`` max (10 m) inside the standard crop
(``--depth-crop eigen``: rows 45..470, columns 41..600 of the 480 x 640 frame, Eigen et al.); ``auto``
applies it to 480 x 640 test maps only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from open_tips.eval.dataset import EvalData, Lazy, Split
from open_tips.eval.depth import find_depth_layout, read_depth
from open_tips.eval.features import dataset_fingerprint
from open_tips.eval.normals import read_normals
from open_tips.eval.registry import Suite, register_suite

EIGEN_CROP = (45, 471, 41, 601)  # top, bottom, left, right (exclusive) on 480 x 640
NYU_SHAPE = (480, 640)


def eigen_valid(shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: the Eigen crop, scaled to ``shape`` when it is not 480 x 640."""
    height, width = shape
    top, bottom, left, right = EIGEN_CROP
    sy, sx = height / NYU_SHAPE[0], width / NYU_SHAPE[1]
    valid = np.zeros(shape, bool)
    valid[round(top * sy) : round(bottom * sy), round(left * sx) : round(right * sx)] = True
    return valid


def load(root: Path, options) -> EvalData:
    layout = find_depth_layout(root)
    if layout is None:
        raise FileNotFoundError(f"no train/ and test/ folders with rgb/ (or images/) and depth/ in {root}")
    scale = options.depth_scale
    if options.depth_crop not in ("auto", "eigen", "none"):
        raise ValueError(f"depth_crop must be auto, eigen or none, got {options.depth_crop!r}")
    splits, crop_used = {}, None
    for ours, dense in layout.items():
        count = len(dense.images[: options.max_images])
        images, depths = dense.images[:count], dense.depths[:count]
        normals = dense.normals[:count] if dense.normals is not None else None
        depth = Lazy(depths, lambda path: read_depth(path, scale))
        valid = None
        if ours == "test" and options.depth_crop != "none":
            first = read_depth(depths[0], scale).shape
            if options.depth_crop == "eigen" or first == NYU_SHAPE:
                valid = Lazy(depths, lambda path: eigen_valid(read_depth(path, scale).shape))
                crop_used = "eigen (rows 45:471, cols 41:601 of 480x640)"
        splits[ours] = Split(
            images=images,
            key=dataset_fingerprint("nyuv2", ours, files=images),
            depth=depth,
            normals=Lazy(normals, read_normals) if normals is not None else None,
            valid=valid,
        )
    return EvalData(
        suite="nyuv2",
        train=splits["train"],
        test=splits["test"],
        info={
            "layout": "{train,test}/{rgb|images,depth,normals}",
            "depth_scale": scale,
            "depth_crop": crop_used,
            "normals": "the dataset's normal maps" if splits["test"].normals is not None else None,
        },
    )


register_suite(
    Suite(
        "nyuv2",
        load,
        ("depth", "normals"),
        summary="NYU Depth v2: depth probe (RMSE, delta1, AbsRel, Eigen crop); normals when given",
        layout="{train,test}/{rgb|images}/ + depth/ (16-bit PNG mm or .npy m) [+ normals/]",
        source="https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html (nyu_depth_v2_labeled.mat + splits.mat)",
        detect=lambda p: p.is_dir() and find_depth_layout(p) is not None,
        priority=20,
    )
)
