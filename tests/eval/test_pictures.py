"""Report pictures a person can read: 256-px panels, column titles, a legend of the classes shown."""

import numpy as np
import torch

from open_tips.data.builtin import SHAPE_CLASSES, make_sample
from open_tips.eval.features import FeatureSet
from open_tips.eval.pictures import HEADER, TILE, pca_picture, segmentation_picture


def _samples(n: int = 3) -> list[dict]:
    return [make_sample(i, seed=1, image_size=56) for i in range(n)]


def _ink(region: np.ndarray) -> int:
    return int((region.min(axis=-1) < 128).sum())  # dark pixels: text or swatch outlines


def test_segmentation_picture_has_titled_large_panels_and_a_legend():
    samples = _samples()
    names = ["background", *SHAPE_CLASSES]
    truth = [s["segmentation"] for s in samples]
    picture = np.asarray(
        segmentation_picture([s["image"] for s in samples], truth, truth, names).convert("RGB")
    )
    assert picture.shape[1] == 3 * TILE and TILE >= 256
    legend_top = HEADER + 3 * TILE
    assert picture.shape[0] > legend_top
    for column in range(3):  # each column has a title
        assert _ink(picture[:HEADER, column * TILE : (column + 1) * TILE]) > 20
    present = sorted({int(v) for gt in truth for v in np.unique(gt)})
    assert _ink(picture[legend_top:]) > 20 * len(present)  # a swatch and a name per class shown
    # ground truth given as prediction: the two overlay columns are identical
    body = picture[HEADER:legend_top]
    assert np.array_equal(body[:, TILE : 2 * TILE], body[:, 2 * TILE :])


def test_pca_picture_panels_and_titles():
    samples = _samples(2)
    features = FeatureSet(torch.randn(2, 8), torch.randn(2, 8), patch_tokens=torch.randn(2, 4, 4, 8))
    picture = np.asarray(pca_picture([s["image"] for s in samples], features).convert("RGB"))
    assert picture.shape == (HEADER + 2 * TILE, 2 * TILE, 3)
    assert _ink(picture[:HEADER, :TILE]) > 10 and _ink(picture[:HEADER, TILE:]) > 10
