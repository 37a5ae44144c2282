import pytest
import torch

import open_tips
from open_tips.models import get_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = open_tips.create_model("tiny").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_two_cls_tokens_differ_and_shapes(model):
    out = model.encode_image(torch.rand(3, 3, 70, 42))
    assert out.cls_web.shape == (3, 64) and out.cls_synthetic.shape == (3, 64)
    assert out.patch_tokens.shape == (3, 5, 3, 64)
    assert not torch.allclose(out.cls_web, out.cls_synthetic)


def test_cls_synthetic_has_no_position_embedding(model):
    """Changing pos_embed[:, 0] moves CLS1's input but not CLS2's (registers get no position)."""
    pixels = torch.rand(1, 3, 56, 56)
    tokens = model.vision.prepare_tokens(pixels)
    with torch.no_grad():
        model.vision.pos_embed[:, 0] += 1.0
        shifted = model.vision.prepare_tokens(pixels)
        model.vision.pos_embed[:, 0] -= 1.0
    assert torch.allclose(shifted[:, 0] - tokens[:, 0], torch.ones(64))
    assert torch.allclose(shifted[:, 1:], tokens[:, 1:])


def test_bad_input_sizes(model):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.encode_image(torch.rand(1, 3, 50, 56))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        model.encode_image(torch.rand(3, 56, 56))


def test_intermediate_layers_and_value_trick(model):
    pixels = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        last = model.vision.get_intermediate_layers(pixels, [1])[0]
        full = model.vision.forward_tokens(pixels)
        both = model.vision.get_intermediate_layers(pixels, 2)
        trick = model.vision.forward_value_trick(pixels)
    assert torch.allclose(last, full, atol=1e-6)
    assert len(both) == 2 and not torch.allclose(both[0], both[1])
    assert trick.patch_tokens.shape == (2, 4, 4, 64)
    assert not torch.allclose(trick.patch_tokens.flatten(1, 2), full[:, 2:])
    # value trick: with the last block's value path only, a patch's output depends on itself alone
    with torch.no_grad():
        x = model.vision.prepare_tokens(pixels)
        for block in model.vision.blocks[:-1]:
            x = block(x)
        y = model.vision.blocks[-1].forward_value_trick(x)
        x2 = x.clone()
        x2[:, 5] += 1.0
        y2 = model.vision.blocks[-1].forward_value_trick(x2)
    changed = (y2 - y).abs().amax(dim=-1)[0]
    assert changed[5] > 0 and torch.all(changed[torch.arange(changed.numel()) != 5] == 0)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    model = open_tips.create_model("tiny")
    pixels = torch.rand(2, 3, 56, 56)
    ids = torch.randint(1, 500, (2, 8))
    padding = torch.zeros(2, 8, dtype=torch.bool)

    def grads():
        model.zero_grad()
        out = model.encode_image(pixels)
        loss = out.cls_web.sum() + out.patch_tokens.square().mean() + model.encode_text(ids, padding).sum()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.train()
    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-6)


def test_text_padding_does_not_leak_and_empty_caption_is_finite(model):
    ids = torch.randint(1, 500, (2, 10))
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[:, 6:] = True
    other = ids.clone()
    other[:, 6:] = torch.randint(1, 500, (2, 4))  # values under padding must not matter
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids, padding), model.encode_text(other, padding), atol=1e-6)
        empty = model.encode_text(torch.zeros(1, 10, dtype=torch.long), torch.ones(1, 10, dtype=torch.bool))
    assert torch.isfinite(empty).all()


def test_registry():
    names = open_tips.list_configs()
    for expected in [
        "tips-v1-s14-hr",
        "tips-v1-g14-lr",
        "tipsv2-b14",
        "tipsv2-so400m14",
        "tipsv2-g14",
        "tiny",
    ]:
        assert expected in names
    assert get_config("tipsv2-so14").name == "tipsv2-so400m14"
    assert get_config("tips_v2_oss_so400m14").vision.mlp_hidden == 4304
    g = get_config("tipsv2-g14")
    assert (
        g.vision.swiglu and g.vision.mlp_hidden == 4096 and g.vision.heads == 24 and g.vision.pos_grid == 32
    )
    with pytest.raises(KeyError, match="unknown model config"):
        get_config("vit-huge")
