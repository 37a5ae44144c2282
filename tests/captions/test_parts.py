"""The pieces of the captioning pipeline on their own: templates, prompt layout, cleaning, units, decoding."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from open_tips.captions.model import Captioner, DecodeSettings, clean_caption, model_display_name
from open_tips.captions.pipeline import Sample
from open_tips.captions.prompts import TEMPLATES, parse_templates
from open_tips.captions.sources import BadImage, RawSample, decode_image, discover_units, unit_name_for

from .conftest import make_shards


def test_templates_order_custom_and_errors() -> None:
    templates = parse_templates(["short", "mine", "rewrite"], ["mine=say {web} {x}"])
    assert [t.name for t in templates] == ["short", "mine", "rewrite"]
    assert templates[1].render("prefix", web="a\n dog") == "say a dog {x}"  # one line; other braces kept
    assert TEMPLATES["rewrite"].needs("web") and TEMPLATES["rewrite"].needs("synthetic")
    assert not TEMPLATES["detailed"].needs("web")
    assert "left" in TEMPLATES["detailed"].instruction  # the spatial wording for instruction models
    assert TEMPLATES["short"].text("prefix") == "caption en"
    for bad in (["nope"], ["short", "short"], []):
        with pytest.raises(ValueError):
            parse_templates(bad)
    with pytest.raises(ValueError):
        parse_templates(["x"], ["x"])


def test_clean_caption() -> None:
    assert clean_caption("caption en  a cat\n on a \x07 mat\ufffd", "caption en") == "a cat on a mat"
    assert clean_caption("  Describe EN: a dog", "describe en") == "a dog"
    assert clean_caption(" \n ", "caption en") == ""


def test_length_cap_in_captioner_tokens(tiny_model: Path) -> None:
    captioner = Captioner(str(tiny_model), device="cpu")
    tokenizer = captioner.tokenizer
    text = "a man in a blue shirt holds an umbrella at the top right of the image near a yellow bus"
    for cap in (3, 7, 12):
        out = clean_caption(text, "", tokenizer, cap)
        assert len(tokenizer(out, add_special_tokens=False)["input_ids"]) <= cap
        assert text.startswith(out) and text[len(out)] == " "  # cut at a word boundary
    assert clean_caption(text, "", tokenizer, 1000) == text


def test_prompt_layout_follows_the_processor(tiny_model: Path) -> None:
    captioner = Captioner(str(tiny_model), device="cpu")
    assert captioner.prompt_style == "prefix" and captioner.name == tiny_model.name
    assert captioner.layout("caption en") == "<image>caption en"  # the processor adds <bos> and "\n"
    assert captioner.layout("rewrite 'a <image> of <eos> x'") == "<image>rewrite 'a of x'"  # web text is text
    assert captioner.image_size_hint == 28
    captioner.prompt_style = "chat"
    captioner.processor.chat_template = (
        "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    assert (
        captioner.layout("Describe it.")
        == "<start_of_turn>user\n<image>Describe it.<end_of_turn>\n<start_of_turn>model\n"
    )
    captioner.prompt_style = "raw"
    assert captioner.layout("a photo of") == "<image>a photo of"


def test_generation_is_batched_and_cleaned(tiny_model: Path, coco_jpegs) -> None:
    captioner = Captioner(str(tiny_model), device="cpu")
    images = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in coco_jpegs[:3]]
    settings = DecodeSettings(max_new_tokens=6, max_caption_tokens=4)
    batch = captioner.generate(images, ["caption en", "describe en", "caption en"], settings)
    single = [
        captioner.generate([image], [p], settings)[0]
        for image, p in zip(images, ["caption en", "describe en", "caption en"])
    ]
    assert batch == single  # left padding does not change greedy outputs
    assert all(
        text and len(captioner.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 4 for text in batch
    )


def test_missing_model_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        Captioner("google/not-in-the-local-cache-xyz", device="cpu")
    with pytest.raises(FileNotFoundError):
        Captioner(str(tmp_path / "nope" / "model"), device="cpu")
    snapshot = tmp_path / "models--google--paligemma2-3b-mix-448" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert model_display_name(str(snapshot)) == "google/paligemma2-3b-mix-448"


def test_units_from_patterns_globs_and_folders(tmp_path: Path, coco_jpegs) -> None:
    make_shards(tmp_path / "a", coco_jpegs[:6], 2)
    units = discover_units(
        [str(tmp_path / "a" / "in-{000000..000001}.tar"), str(tmp_path / "a" / "in-*2.tar")]
    )
    assert [u.name for u in units] == ["in-000000", "in-000001", "in-000002"]
    assert units[0].size_hint() == 2
    assert unit_name_for("pipe:curl -s https://host/x/train-000007.tar.gz") == "train-000007"
    make_shards(tmp_path / "b", coco_jpegs[:2], 2)
    with pytest.raises(ValueError, match="both write"):
        discover_units([str(tmp_path / "a" / "in-000000.tar"), str(tmp_path / "b" / "in-000000.tar")])
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for index, (key, data) in enumerate(coco_jpegs[:5]):
        (folder / ("sub" if index % 2 else "") / f"{key}.v{index}.jpg").write_bytes(data)
    units = discover_units([str(folder)], chunk_size=2)
    assert [len(u.items) for u in units] == [2, 2, 1] and units[0].name == "images-000000"
    keys = [item.key for u in units for item in u.items]
    assert len(set(keys)) == 5 and all("." not in k for k in keys)  # webdataset keys end at the first dot
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no input"):
        discover_units([str(tmp_path / "empty")])


def test_decode_image_reasons(coco_jpegs) -> None:
    assert decode_image(coco_jpegs[0][1]).mode == "RGB"
    with pytest.raises(BadImage) as bad:
        decode_image(coco_jpegs[0][1][:200])
    assert bad.value.reason == "corrupt_image"
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    assert decode_image(buffer.getvalue()).getpixel((3, 3)) == (255, 255, 255)  # transparency over white
    with pytest.raises(BadImage) as bad:
        decode_image(coco_jpegs[0][1], max_pixels=100)
    assert bad.value.reason == "image_too_large"


def test_rewrite_conditions_on_the_latest_other_caption() -> None:
    sample = Sample(
        RawSample("k"), meta={"synthetic_captions": ["old", {"text": "older rewrite", "template": "rewrite"}]}
    )
    assert sample.latest_synthetic(exclude="rewrite") == "old"
    sample.new.append({"text": "fresh detailed", "template": "detailed", "model": "m"})
    assert sample.latest_synthetic(exclude="rewrite") == "fresh detailed"
    assert json.loads(json.dumps(sample.existing()))[0] == "old"
