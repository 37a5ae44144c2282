"""CLIP_benchmark's retrieval on COCO-mini, with open_tips loaded through ``--model_type open_tips``, gives
the numbers ``open-tips eval`` gives on the same images and captions."""

from __future__ import annotations

import json

import pytest
import torch

from open_tips.cli import main
from open_tips.inference.clip_benchmark import ClipBenchmarkModel, load_open_tips, parse_model_name, register
from tests import COCO_MINI
from tests.helpers import make_tiny_checkpoint

clip_benchmark = pytest.importorskip(
    "clip_benchmark", reason="clip-benchmark is installed by scripts/venv.sh"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("clipbench_ckpt"))


def test_model_name_picks_config_and_embedding():
    assert parse_model_name("tiny:synthetic") == ("tiny", "synthetic")
    assert parse_model_name("auto") == (None, "web")
    assert parse_model_name("") == (None, "web")
    assert parse_model_name(":mean") == (None, "mean")
    with pytest.raises(ValueError, match="after ':'"):
        parse_model_name("tiny:cls3")
    with pytest.raises(ValueError, match="--pretrained"):
        load_open_tips("auto", pretrained=None)


def test_registered_loader_gives_clip_interface(checkpoint):
    from clip_benchmark.models import MODEL_TYPES, load_clip

    register()
    register()  # idempotent
    assert MODEL_TYPES.count("open_tips") == 1
    model, transform, tokenizer = load_clip("open_tips", "tiny:synthetic", str(checkpoint), None, "cpu")
    assert isinstance(model, ClipBenchmarkModel) and model.cls == "synthetic" and not model.training
    ids = tokenizer(["a photo of a red circle", "hexagon"])
    assert ids.dtype == torch.long and ids.shape[0] == 2
    pixels = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        out = model.model.encode_image(pixels)
        assert torch.allclose(
            model.encode_image(pixels), torch.nn.functional.normalize(out.cls_synthetic, dim=-1)
        )
        # the mask the tokenizer returns is the one encode_text derives from the ids
        full_ids, padding = model.model.tokenizer(["a photo of a red circle", "hexagon"])
        assert torch.equal(model.encode_text(ids), model.model.encode_text(full_ids, padding))
    assert transform.image_size == model.model.cfg.image_size  # the training resolution


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason=f"COCO-mini not found at {COCO_MINI}")
def test_coco_mini_retrieval_matches_open_tips_eval(checkpoint, tmp_path):
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval
    from clip_benchmark.models import load_clip

    register()
    # CLIP_benchmark's mscoco_captions reads <root>/val2014 with a captions file: COCO-mini's 2017 val
    # images and their official captions, linked, so nothing is downloaded.
    root = tmp_path / "coco"
    root.mkdir()
    (root / "val2014").symlink_to(COCO_MINI / "val2017", target_is_directory=True)
    captions = COCO_MINI / "annotations" / "captions_val2017.json"
    ours = tmp_path / "ours"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                "--config",
                "tiny",
                "--device",
                "cpu",
                "--image-size",
                "56",
                "--data",
                str(COCO_MINI),
                "--tasks",
                "retrieval",
                "--output",
                str(ours),
            ]
        )
        == 0
    )
    results = json.loads((ours / "results.json").read_text())["tasks"]
    for cls in ("web", "synthetic"):
        model, transform, tokenizer = load_clip("open_tips", f"tiny:{cls}", str(checkpoint), None, "cpu")
        transform.image_size = 56  # what --image-size 56 does
        dataset = build_dataset(
            "mscoco_captions",
            root=str(root),
            transform=transform,
            split="test",
            annotation_file=str(captions),
            task="zeroshot_retrieval",  # what its CLI passes for this dataset
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=32, collate_fn=get_dataset_collate_fn("mscoco_captions")
        )
        theirs = zeroshot_retrieval.evaluate(
            model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
        )
        mine = results[f"retrieval_{cls}"]
        assert mine["protocol"]["images"] == len(dataset) == 79
        for k in (1, 5, 10):
            # CLIP_benchmark's image_retrieval = text -> image, text_retrieval = image -> text
            assert theirs[f"image_retrieval_recall@{k}"] == pytest.approx(mine[f"t2i_R@{k}"], abs=1e-6), (
                cls,
                k,
            )
            assert theirs[f"text_retrieval_recall@{k}"] == pytest.approx(mine[f"i2t_R@{k}"], abs=1e-6), (
                cls,
                k,
            )
        # not all zero or all one: the comparison can fail
        assert 0 < mine["i2t_R@10"] < 1
