"""Classification, retrieval and dense probes: perfect features give perfect scores, random or shuffled
features about chance, and every probe learns a separable toy problem."""

import pytest
import torch
import torch.nn.functional as F

from open_tips.eval.depth import bin_centres, decode_expectation, depth_probe, depth_to_bin
from open_tips.eval.features import FeatureSet
from open_tips.eval.knn import knn_accuracy, knn_scores
from open_tips.eval.linear import linear_accuracy
from open_tips.eval.metrics import IGNORE
from open_tips.eval.normals import normals_from_depth, normals_probe
from open_tips.eval.retrieval import positives_from_captions, retrieval_metrics
from open_tips.eval.segmentation import segmentation_probe
from open_tips.eval.zeroshot import zeroshot_accuracy
from open_tips.eval.zeroshot_seg import zeroshot_segmentation
from tests.eval.conftest import OneHotTextModel, block_masks, oracle_features


def _clusters(n_per_class=30, classes=4, dim=32, spread=0.1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 5
    labels = torch.arange(classes).repeat(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=gen), labels


def test_knn_perfect_and_chance():
    feats, labels = _clusters()
    result = knn_accuracy(feats[:80], labels[:80], feats[80:], labels[80:], 4, k=5)
    assert result["top1"] == 1.0 and result["settings"] == {"k": 5, "temperature": 0.07}
    gen = torch.Generator().manual_seed(1)
    random_feats = torch.randn(2000, 32, generator=gen)
    random_labels = torch.randint(0, 4, (2000,), generator=gen)
    chance = knn_accuracy(
        random_feats[:1500], random_labels[:1500], random_feats[1500:], random_labels[1500:], 4
    )
    assert 0.15 < chance["top1"] < 0.35  # chance = 0.25


def test_knn_votes_are_temperature_weighted():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    scores = knn_scores(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]]), 2, k=3, temperature=0.07)
    # one neighbour at cosine 1 (class 0) outweighs two at cosine 0 (class 1)
    assert scores[0].tolist() == pytest.approx([torch.e ** (1 / 0.07), 2.0], rel=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw", "lbfgs"])
def test_linear_probe_separable_and_chance(optimizer):
    feats, labels = _clusters(spread=1.0)
    result = linear_accuracy(
        feats[:80], labels[:80], feats[80:], labels[80:], 4, optimizer=optimizer, epochs=50, progress=False
    )
    assert result["top1"] == 1.0 and result["settings"]["optimizer"] == optimizer
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    poor = linear_accuracy(
        feats[:80],
        shuffled[:80],
        feats[80:],
        shuffled[80:],
        4,
        optimizer=optimizer,
        epochs=50,
        progress=False,
    )
    assert poor["top1"] < 0.6


def test_zeroshot_perfect_with_matching_text():
    names = ["cat", "dog", "car"]
    model = OneHotTextModel(names, dim=3)
    labels = torch.tensor([0, 1, 2, 2, 1])
    cls = F.one_hot(labels, 3).float() + 0.05
    features = FeatureSet(cls, cls.flip(-1), torch.zeros(5, 1, 1, 3))
    result = zeroshot_accuracy(model, features, labels, names)
    assert result["web"]["top1"] == 1.0
    assert result["synthetic"]["top1"] < 1.0  # CLS2 was scrambled here
    assert zeroshot_accuracy(model, features, labels, names, which="web") == {"top1": 1.0, "top5": 1.0}


def test_retrieval_perfect_random_and_duplicate_captions():
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(50, 16, generator=gen), dim=-1)
    owner = torch.arange(50).repeat_interleave(2)
    texts = emb[owner] + 0.01 * torch.randn(100, 16, generator=gen)
    assert set(retrieval_metrics(emb, texts, owner).values()) == {1.0}
    random = retrieval_metrics(emb, torch.randn(100, 16, generator=gen), owner)
    assert random["t2i_R@1"] < 0.1 and random["i2t_R@10"] < 0.6  # chance: 0.02 and about 0.36
    # identical captions of different images are positives for both
    texts, owner, positives = positives_from_captions([["a red circle", "big"], ["A red  circle."], ["blue"]])
    assert texts == ["a red circle", "big", "A red  circle.", "blue"] and owner.tolist() == [0, 0, 1, 2]
    assert positives.tolist() == [
        [True, True, True, False],
        [True, False, True, False],
        [False, False, False, True],
    ]


def test_segmentation_probe_perfect_and_random_features():
    # masks at the patch grid: perfect features give a perfect score
    grid_masks = block_masks(48, grid=4, scale=1, classes=3)
    feats = oracle_features(grid_masks, 4)
    train, test = feats.subset(range(36)), feats.subset(range(36, 48))
    result = segmentation_probe(train, grid_masks[:36], test, grid_masks[36:], 3, epochs=40, progress=False)
    assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0
    # masks at 4x the grid: bilinear upsampling of the logits only blurs patch corners
    masks = block_masks(48, grid=4, scale=4, classes=3)
    result = segmentation_probe(train, masks[:36], test, masks[36:], 3, epochs=40, progress=False)
    assert result["miou"] > 0.9
    with_cls = segmentation_probe(
        train, masks[:36], test, masks[36:], 3, epochs=40, with_cls=True, progress=False
    )
    assert with_cls["miou"] > 0.9
    gen = torch.Generator().manual_seed(0)
    noise = FeatureSet(
        torch.randn(48, 8, generator=gen),
        torch.randn(48, 8, generator=gen),
        torch.randn(48, 4, 4, 8, generator=gen),
    )
    poor = segmentation_probe(
        noise.subset(range(36)),
        masks[:36],
        noise.subset(range(36, 48)),
        masks[36:],
        3,
        epochs=20,
        progress=False,
    )
    assert poor["miou"] < 0.5  # chance about 1/3 x 1/2


def test_segmentation_probe_ignores_ignore_label():
    masks = block_masks(40, grid=4, scale=1, classes=3)
    feats = oracle_features(masks, 4)
    noisy_truth = masks.clone()
    noisy_truth[:, :, :1] = IGNORE  # ignored training and test pixels: no effect on learning or scoring
    result = segmentation_probe(
        feats.subset(range(30)),
        noisy_truth[:30],
        feats.subset(range(30, 40)),
        noisy_truth[30:],
        3,
        epochs=40,
        progress=False,
    )
    assert result["miou"] == 1.0


def test_depth_bins_and_expectation_decoding():
    centres = bin_centres(256, 1e-3, 10.0)
    assert centres[0] == pytest.approx(1e-3) and centres[-1] == pytest.approx(10.0) and len(centres) == 256
    logs = bin_centres(256, 1e-3, 10.0, "log")
    assert float(logs[128] / logs[127]) == pytest.approx(float(logs[1] / logs[0]), rel=1e-4)
    depth = torch.tensor([0.0005, 1e-3, 5.0, 10.0, 50.0])
    assert depth_to_bin(depth, centres).tolist() == [0, 0, int((centres - 5.0).abs().argmin()), 255, 255]
    # a one-hot (very peaked) softmax decodes to the bin's centre; a two-bin tie to their mean
    logits = torch.full((1, 256, 1, 2), -1e4)
    logits[0, 10, 0, 0] = 0
    logits[0, 20, 0, 1] = logits[0, 30, 0, 1] = 0
    decoded = decode_expectation(logits, centres)[0, 0]
    assert decoded.tolist() == pytest.approx([float(centres[10]), float(centres[20] + centres[30]) / 2])


def test_depth_probe_learns_depth_classes():
    blocks = block_masks(40, grid=4, scale=1, classes=4)
    depth = blocks.float() * 2 + 1  # 1, 3, 5, 7 m
    feats = oracle_features(blocks, 4)
    result = depth_probe(
        feats.subset(range(30)),
        depth[:30],
        feats.subset(range(30, 40)),
        depth[30:],
        epochs=60,
        with_cls=False,
        progress=False,
    )
    assert result["rmse"] < 0.1 and result["delta1"] == 1.0
    fine = block_masks(40, grid=4, scale=4, classes=4).float() * 2 + 1  # upsampled: corners blur
    result = depth_probe(
        feats.subset(range(30)),
        fine[:30],
        feats.subset(range(30, 40)),
        fine[30:],
        epochs=60,
        with_cls=False,
        progress=False,
    )
    assert result["rmse"] < 1.0 and result["delta1"] > 0.75
    gen = torch.Generator().manual_seed(0)
    noise = FeatureSet(
        torch.randn(40, 8, generator=gen),
        torch.randn(40, 8, generator=gen),
        torch.randn(40, 4, 4, 8, generator=gen),
    )
    poor = depth_probe(
        noise.subset(range(30)),
        depth[:30],
        noise.subset(range(30, 40)),
        depth[30:],
        epochs=20,
        progress=False,
    )
    assert poor["rmse"] > 1.5  # the spread of the targets is about 2.2 m


def test_normals_from_depth_and_probe():
    flat = normals_from_depth(torch.full((1, 6, 6), 3.0))
    assert torch.allclose(flat, torch.tensor([0.0, 0.0, 1.0]).expand_as(flat))
    ramp = normals_from_depth(torch.arange(10.0).repeat(1, 10, 1))  # depth grows 1 per pixel to the right
    assert torch.allclose(ramp[0, 5, 5], F.normalize(torch.tensor([-1.0, 0.0, 1.0]), dim=0))  # 10 px / 10 = 1
    blocks = block_masks(40, grid=4, scale=1, classes=3)
    directions = F.normalize(torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 1.0], [0.0, -0.7, 1.0]]), dim=-1)
    normals = directions[blocks]
    feats = oracle_features(blocks, 4)
    result = normals_probe(
        feats.subset(range(30)),
        normals[:30],
        feats.subset(range(30, 40)),
        normals[30:],
        epochs=60,
        with_cls=False,
        progress=False,
    )
    assert result["angular_mean"] < 1.0 and result["within_11.25"] == 1.0


def test_zeroshot_segmentation_perfect_and_background_modes():
    names = ["background", "cat", "dog"]
    masks = block_masks(6, grid=4, scale=1, classes=3)
    value = oracle_features(masks, 4, dim=3).value_tokens
    model = OneHotTextModel(names, dim=3)
    result = zeroshot_segmentation(model, value, masks, names)
    assert result["miou"] == 1.0 and result["settings"]["background"] == "name"
    # objects only: background pixels are ignored, so object pixels still score 1
    assert zeroshot_segmentation(model, value, masks, names, background="ignore")["miou"] == 1.0
    # threshold: cat / dog prompted only; background patches (cosine 0 with both) fall below 0.5
    assert (
        zeroshot_segmentation(model, value, masks, names, background="threshold", threshold=0.5)["miou"]
        == 1.0
    )
    shuffled = value[:, torch.randperm(4, generator=torch.Generator().manual_seed(0))]
    assert zeroshot_segmentation(model, shuffled, masks, names)["miou"] < 0.6
    upsampled = block_masks(6, grid=4, scale=4, classes=3)
    assert zeroshot_segmentation(model, value, upsampled, names)["miou"] > 0.9
