"""Dataset readers: COCO instance rasterisation (polygons, both RLE forms), caption files, mask / depth /
normal folders and the layout detection behind `open-tips eval --data`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from open_tips.eval.depth import find_depth_layout, read_depth, resize_depth
from open_tips.eval.metrics import IGNORE
from open_tips.eval.normals import read_normals
from open_tips.eval.retrieval import is_karpathy, read_coco_captions, read_karpathy
from open_tips.eval.segmentation import (
    annotation_mask,
    convert_mask,
    find_segmentation_layout,
    rasterise_coco,
    resize_mask,
)


def column_major_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a bool mask, written here from the definition (column-major runs, 0s first)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return counts


def rle_string(counts: list[int]) -> str:
    """pycocotools' rleToString, written independently."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_both_forms_match_pycocotools(seed):
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(seed)
    height, width = 37, 53
    truth = np.zeros((height, width), bool)
    for _ in range(4):  # a few random rectangles: long runs and short ones
        top, left = rng.integers(0, height - 5), rng.integers(0, width - 5)
        truth[top : top + rng.integers(1, 20), left : left + rng.integers(1, 30)] = True
    truth[0, 0] = bool(seed % 2)  # a mask starting with a 1 (leading zero-length run)
    encoded = coco_mask.encode(np.asfortranarray(truth.astype(np.uint8)))
    reference = coco_mask.decode(encoded).astype(bool)
    assert (reference == truth).all()
    compressed = {"size": [height, width], "counts": encoded["counts"].decode()}
    assert (annotation_mask(compressed, height, width) == truth).all()
    counts = column_major_counts(truth)
    assert rle_string(counts) == encoded["counts"].decode()  # the two forms describe the same mask
    assert (annotation_mask({"size": [height, width], "counts": counts}, height, width) == truth).all()
    # an RLE stored at another size than the image is fitted to the image (nearest)
    assert annotation_mask(compressed, height * 2, width * 2).shape == (height * 2, width * 2)


def test_polygons_match_pycocotools():
    from pycocotools import mask as coco_mask

    polygons = [[2.5, 3.0, 30.2, 4.1, 25.0, 20.7, 4.0, 18.0], [35, 2, 40, 2, 40, 9]]
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, 24, 44))).astype(bool)
    got = annotation_mask(polygons, 24, 44)
    assert got.sum() > 100 and (got == expected).all()


def test_coco_rasterisation_polygons_rle_and_crowd(tmp_path):
    crowd_counts = [7 * 8 + 5, 2, 6, 2, 9]  # column-major: rows 5-6 of columns 7-8 (80 pixels in all)
    annotation = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 10, "height": 8},
            {"id": 2, "file_name": "b.jpg", "width": 4, "height": 3},
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
        "annotations": [
            {
                "image_id": 1,
                "category_id": 9,
                "iscrowd": 0,
                "area": 30,
                "bbox": [0, 0, 6, 6],
                "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]],
            },
            {
                "image_id": 1,
                "category_id": 5,
                "iscrowd": 0,
                "area": 4,
                "bbox": [2, 2, 2, 2],
                "segmentation": [[2, 2, 3, 2, 3, 3, 2, 3]],
            },
            {
                "image_id": 1,
                "category_id": 5,
                "iscrowd": 1,
                "area": 4,
                "bbox": [7, 5, 2, 2],
                "segmentation": {"size": [8, 10], "counts": crowd_counts},
            },
            {
                "image_id": 2,
                "category_id": 9,
                "iscrowd": 0,
                "area": 3,
                "bbox": [0, 0, 4, 1],
                "segmentation": {"size": [3, 4], "counts": rle_string([0, 1, 2, 1, 2, 1, 2, 1, 2])},
            },
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotation))
    pairs, names = rasterise_coco(path, tmp_path)
    assert names == ["background", "cat", "dog"]  # category ids in order: 5 -> 1, 9 -> 2
    assert pairs[0][0] == tmp_path / "a.jpg"
    mask = pairs[0][1]
    assert mask.shape == (8, 10) and mask.dtype == np.uint8
    dog = annotation_mask([[0, 0, 5, 0, 5, 5, 0, 5]], 8, 10)
    cat = annotation_mask([[2, 2, 3, 2, 3, 3, 2, 3]], 8, 10)
    assert dog.sum() > cat.sum() > 0 and (cat <= dog).all()
    assert ((mask == 1) == cat).all()  # the small cat drawn over the large dog
    assert ((mask == 2) == (dog & ~cat)).all()
    assert (mask == IGNORE).sum() == 4 and (mask[5:7, 7:9] == IGNORE).all()  # crowd RLE -> ignore
    assert mask[7, 0] == 0  # background
    # compressed RLE, not crowd: the top row of the second image
    assert pairs[1][1].tolist() == [[2, 2, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]]
    as_class, _ = rasterise_coco(path, tmp_path, crowd="class")
    assert (as_class[0][1][5:7, 7:9] == 1).all()
    only_dogs, dog_names = rasterise_coco(path, tmp_path, categories=[9])
    assert dog_names == ["background", "dog"] and set(np.unique(only_dogs[0][1])) == {0, 1, IGNORE}


def test_caption_readers(tmp_path):
    coco = {
        "images": [{"id": 3, "file_name": "x.jpg"}, {"id": 4, "file_name": "y.jpg"}],
        "annotations": [{"image_id": 3, "caption": " A cat.\n"}, {"image_id": 3, "caption": "a  feline"}],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    assert read_coco_captions(tmp_path / "captions.json") == [("x.jpg", ["A cat.", "a feline"])]
    karpathy = {
        "images": [
            {
                "filepath": "val2014",
                "filename": "a.jpg",
                "split": "test",
                "sentences": [{"raw": "one"}, {"raw": "two"}],
            },
            {"filepath": "train2014", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "three"}]},
            {"filename": "c.jpg", "split": "test", "sentences": [{"raw": "four "}]},
        ]
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    assert is_karpathy(tmp_path / "dataset_coco.json") and not is_karpathy(tmp_path / "captions.json")
    assert read_karpathy(tmp_path / "dataset_coco.json") == [
        ("val2014/a.jpg", ["one", "two"]),
        ("c.jpg", ["four"]),
    ]
    assert read_karpathy(tmp_path / "dataset_coco.json", "train") == [("train2014/b.jpg", ["three"])]


def _write_pairs(images_dir, masks_dir, stems, value=1, mask_suffix=""):
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        Image.new("RGB", (8, 8), (100, 50, 0)).save(images_dir / f"{stem}.jpg")
        mask = np.full((8, 8), value, np.uint8)
        mask[0, 0] = 255
        Image.fromarray(mask).save(masks_dir / f"{stem}{mask_suffix}.png")


def test_segmentation_layouts(tmp_path):
    voc = tmp_path / "voc"
    _write_pairs(voc / "JPEGImages", voc / "SegmentationClass", ["a", "b", "c"])
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")
    name, splits, names = find_segmentation_layout(voc)
    assert name == "voc" and len(names) == 21 and names[0] == "background"
    assert [p.name for p in splits["train"].images] == ["a.jpg", "b.jpg"] and len(splits["test"].images) == 1

    ade = tmp_path / "ade"
    for theirs in ("training", "validation"):
        _write_pairs(ade / "images" / theirs, ade / "annotations" / theirs, ["x"], value=3)
    (ade / "classes.txt").write_text("wall\nbuilding\nsky\n")
    name, splits, names = find_segmentation_layout(ade)
    assert name == "ade20k" and names == ["wall", "building", "sky"]
    mask = splits["test"].load_mask(0)
    assert mask[1, 1] == 2 and mask[0, 0] == IGNORE  # 3 -> 2 (zero label reduced), 255 stays ignored

    camvid = tmp_path / "camvid"
    for theirs in ("train", "test"):
        _write_pairs(camvid / theirs, camvid / f"{theirs}annot", ["f1"], value=11)
    name, splits, names = find_segmentation_layout(camvid)
    assert name == "camvid" and len(names) == 11 and (splits["train"].load_mask(0) == IGNORE).all()

    plain = tmp_path / "plain"
    for theirs in ("train", "val"):
        _write_pairs(plain / theirs / "images", plain / theirs / "masks", ["p", "q"], value=2)
    name, splits, names = find_segmentation_layout(plain)
    assert name == "masks" and names is None and splits["train"].load_mask(1)[3, 3] == 2
    assert find_segmentation_layout(tmp_path) is None


def test_mask_conversion_and_resizing():
    mask = np.array([[0, 1], [150, 255]])
    assert convert_mask(mask, reduce_zero_label=True).tolist() == [[IGNORE, 0], [149, IGNORE]]
    assert convert_mask(mask, void_labels=(1,)).tolist() == [[0, IGNORE], [150, 255]]
    big = resize_mask(np.array([[1, 2], [3, 255]], np.uint8), 4)
    assert big.dtype == torch.int64 and big.tolist() == [
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [3, 3, 255, 255],
        [3, 3, 255, 255],
    ]


def test_depth_and_normal_readers(tmp_path):
    millimetres = np.array([[0, 1000], [2500, 65535]], np.uint16)
    Image.fromarray(millimetres).save(tmp_path / "d.png")
    assert read_depth(tmp_path / "d.png").ravel().tolist() == pytest.approx([0.0, 1.0, 2.5, 65.535])
    np.save(tmp_path / "d.npy", np.array([[1.5, 2.0]], np.float32))
    assert read_depth(tmp_path / "d.npy").tolist() == [[1.5, 2.0]]
    assert resize_depth(np.array([[1.0, 2.0]], np.float32), (2, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]
    rgb = np.array([[[128, 128, 255], [0, 0, 0]]], np.uint8)  # +z, and an invalid (black) pixel
    Image.fromarray(rgb).save(tmp_path / "n.png")
    normals = read_normals(tmp_path / "n.png")
    assert normals[0, 0] == pytest.approx([0.0, 0.0, 1.0], abs=0.01) and (normals[0, 1] == 0).all()

    root = tmp_path / "nyu"
    for split in ("train", "test"):
        (root / split / "rgb").mkdir(parents=True)
        (root / split / "depth").mkdir()
        for stem in ("0001", "0002"):
            Image.new("RGB", (4, 4)).save(root / split / "rgb" / f"{stem}.jpg")
            Image.fromarray(millimetres).save(root / split / "depth" / f"{stem}.png")
    layout = find_depth_layout(root)
    assert set(layout) == {"train", "test"} and [p.name for p in layout["test"].depths] == [
        "0001.png",
        "0002.png",
    ]
    assert layout["train"].normals is None and find_depth_layout(tmp_path) is None
