"""Trainable modes (full / frozen / last:K / lora), LoRA maths, layer-wise lr decay and the head warm-up."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

import open_tips
from open_tips.models.lora import apply_lora, merge_lora, merge_lora_state
from open_tips.models.tips import TIPSModel
from open_tips.train.config import load_config
from open_tips.train.loop import train
from open_tips.train.metrics import read_metrics
from open_tips.train.objective import build_objective
from open_tips.train.optim import build_optimizer, param_groups
from open_tips.train.trainable import apply_trainable

FAST = [
    "data.num_samples=128",
    "data.batch_size=8",
    "train.log_every=1",
    "train.evaluate_at_end=false",
    "train.threads=1",
    "optim.warmup_steps=2",
    "loss.head_out_dim=128",
    "train.save_every=1000",
]


def _randomised(name: str = "tiny", seed: int = 0, tokenizer=None) -> TIPSModel:
    torch.manual_seed(seed)
    model = open_tips.create_model(name, tokenizer=tokenizer)
    with torch.no_grad():  # off the init values, so every parameter matters
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    """The ``final/`` export of a 1-step run: a ``tiny`` model in the HF layout with the built-in data's
    tokenizer beside it (what --init-from reads)."""
    run = tmp_path_factory.mktemp("init") / "run"
    train(load_config("tiny", overrides=FAST + ["train.steps=1", f"train.output_dir={run}"]))
    return run / "final"


def _inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(3, 3, 56, 56, generator=gen)
    ids = torch.randint(1, 50, (3, 9), generator=gen)
    ids[1, 5:] = 0
    return pixels, ids, ids == 0


def _outputs(model: TIPSModel, seed: int = 1) -> list[torch.Tensor]:
    pixels, ids, padding = _inputs(seed)
    model.eval()
    with torch.no_grad():
        image = model.encode_image(pixels)
        return [image.cls_web, image.cls_synthetic, image.patch_tokens, model.encode_text(ids, padding)]


def _checkpoint(run: Path, step: int | None = None) -> dict:
    files = sorted((run / "checkpoints").glob("step_*.pt"))
    path = files[-1] if step is None else run / "checkpoints" / f"step_{step:08d}.pt"
    return torch.load(path, weights_only=True)


# --- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.trainable.vision=partial", "model.trainable.vision"),
        ("model.trainable.text=last:0", "model.trainable.text"),
        ("model.trainable.text=last:x", "model.trainable.text"),
        ("optim.layer_decay=1.5", "optim.layer_decay"),
        ("train.head_warmup_steps=-1", "train.head_warmup_steps"),
    ],
)
def test_bad_values_name_the_key(override, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_config("tiny", overrides=[override])


def test_lora_settings_validated_and_read_from_yaml(tmp_path):
    with pytest.raises(ValueError, match=r"model\.lora\.targets"):
        load_config("tiny", overrides=["model.trainable.vision=lora", "model.lora.targets=[qkv,ffn]"])
    with pytest.raises(ValueError, match=r"model\.lora\.rank"):
        load_config("tiny", overrides=["model.trainable.text=lora", "model.lora.rank=0"])
    path = tmp_path / "c.yaml"
    path.write_text(
        "model:\n  trainable: {vision: lora, text: 'last:1'}\n  lora: {rank: 2, targets: [qkv]}\n"
    )
    cfg = load_config(yaml_path=path)
    assert (cfg.model.trainable.vision, cfg.model.trainable.text) == ("lora", "last:1")
    assert cfg.model.lora.rank == 2 and cfg.model.lora.targets == ["qkv"]


def test_finetune_preset():
    cfg = load_config("finetune")
    base = load_config("tiny")
    assert cfg.optim.lr < base.optim.lr
    assert cfg.train.head_warmup_steps > 0 and cfg.optim.layer_decay < 1.0


def test_last_k_larger_than_depth_is_an_error():
    model = open_tips.create_model("tiny")
    cfg = load_config("tiny", overrides=["model.trainable.vision=last:3"])
    with pytest.raises(ValueError, match=r"model\.trainable\.vision: last:3 but the vision tower has 2"):
        apply_trainable(model, cfg.model.trainable, cfg.model.lora)


# --- which parameters the optimiser holds ----------------------------------------------------------------


def _optimised_names(overrides: list[str]) -> set[str]:
    cfg = load_config("tiny", overrides=overrides)
    model = open_tips.create_model("tiny")
    apply_trainable(model, cfg.model.trainable, cfg.model.lora)
    objective = build_objective(cfg, model)
    optimizer = build_optimizer(objective, cfg.optim)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    by_id = {id(p): n for n, p in objective.named_parameters()}
    names = {by_id[i] for i in held}
    # the optimiser holds exactly the parameters that require a gradient (teacher copies excluded)
    wanted = {n for n, p in objective.named_parameters() if p.requires_grad and not n.startswith("teacher.")}
    assert names == wanted
    return names


def test_frozen_and_last_k_parameters_not_in_optimizer():
    names = _optimised_names(["model.trainable.vision=frozen", "model.trainable.text=last:1"])
    assert not any(n.startswith("model.vision.") for n in names)
    text = {n for n in names if n.startswith("model.text.")}
    assert text and all(
        n.startswith(("model.text.transformer.resblocks.1.", "model.text.ln_final.")) for n in text
    )
    assert any(n.startswith("model.text.ln_final.") for n in text)
    assert "model.log_temperature" in names and any(".head." in n for n in names)


def test_lora_optimizer_holds_only_adapters_heads_and_temperature():
    names = _optimised_names(["model.trainable.vision=lora", "model.trainable.text=lora"])
    model_names = {n for n in names if n.startswith("model.")}
    assert model_names - {"model.log_temperature"}
    assert all(n.endswith((".lora_A", ".lora_B")) for n in model_names - {"model.log_temperature"})
    # 2 blocks x 4 projections x 2 factors per tower
    assert len([n for n in model_names if n.startswith("model.vision.")]) == 16
    assert len([n for n in model_names if n.startswith("model.text.")]) == 16


def test_layer_decay_multipliers():
    cfg = load_config("tiny", overrides=["optim.layer_decay=0.5", "optim.head_lr_mult=3.0"])
    objective = build_objective(cfg, open_tips.create_model("tiny"))
    mult = {name: group["lr_mult"] for group in param_groups(objective, cfg.optim) for name in group["names"]}
    # tiny: depth 2 per tower -> block 1: 0.5, block 0: 0.25, embeddings 0.125, final norm 1
    assert mult["model.vision.blocks.1.attn.qkv.weight"] == pytest.approx(0.5)
    assert mult["model.vision.blocks.0.mlp.fc1.weight"] == pytest.approx(0.25)
    assert mult["model.vision.pos_embed"] == pytest.approx(0.125)
    assert mult["model.vision.patch_embed.proj.weight"] == pytest.approx(0.2 * 0.125)
    assert mult["model.vision.norm.weight"] == pytest.approx(1.0)
    assert mult["model.text.transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(0.25)
    assert mult["model.text.token_embedding.weight"] == pytest.approx(0.125)
    assert mult["model.log_temperature"] == pytest.approx(1.0)
    assert mult["terms.distill.head.mlp.0.weight"] == pytest.approx(3.0)
    off = load_config("tiny")
    base = {n: g["lr_mult"] for g in param_groups(objective, off.optim) for n in g["names"]}
    assert base["model.vision.blocks.0.mlp.fc1.weight"] == 1.0


# --- training with frozen parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vision, text",
    [("frozen", "last:1"), ("last:1", "frozen")],
)
def test_frozen_parameters_bit_identical_after_training(tmp_path, init_dir, vision, text):
    run = tmp_path / "run"
    overrides = FAST + [
        f"model.init_from={init_dir}",
        f"model.trainable.vision={vision}",
        f"model.trainable.text={text}",
        "train.steps=3",
        f"train.output_dir={run}",
    ]
    summary = train(load_config("tiny", overrides=overrides))
    assert summary["finished"]
    start = {
        f"{tower}.{k}": v
        for tower in ("vision", "text")
        for k, v in getattr(open_tips.load_pretrained(init_dir), tower).state_dict().items()
    }
    payload = _checkpoint(run)
    end, objective = payload["model"], payload["objective"]
    trained_prefixes = {
        "vision": ("vision.blocks.1.", "vision.norm."),
        "text": ("text.transformer.resblocks.1.", "text.ln_final."),
    }
    changed_somewhere = False
    for key, before in start.items():
        tower = key.split(".")[0]
        mode = vision if tower == "vision" else text
        if mode == "frozen" or not key.startswith(trained_prefixes[tower]):
            assert torch.equal(end[key], before), key
        else:
            changed_somewhere |= not torch.equal(end[key], before)
    assert changed_somewhere, "the trainable blocks did not move"
    # the EMA teacher tracks: equal to the student where it is frozen, after it where it trains
    assert torch.equal(
        objective["teacher.vision.blocks.0.attn.qkv.weight"], start["vision.blocks.0.attn.qkv.weight"]
    )
    if vision == "last:1":
        teacher = objective["teacher.vision.blocks.1.attn.qkv.weight"]
        assert not torch.equal(teacher, start["vision.blocks.1.attn.qkv.weight"])
        assert not torch.equal(teacher, end["vision.blocks.1.attn.qkv.weight"])


# --- LoRA --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "tiny-swiglu"])
def test_lora_at_init_equals_base_exactly(name):
    base = _randomised(name)
    adapted = copy.deepcopy(base)
    cfg = load_config(
        "tiny",
        overrides=["model.trainable.vision=lora", "model.trainable.text=lora", "model.lora.dropout=0.2"],
    )
    apply_trainable(adapted, cfg.model.trainable, cfg.model.lora)
    for a, b in zip(_outputs(adapted), _outputs(base)):
        assert torch.equal(a, b)
    assert not any(
        p.requires_grad for n, p in adapted.named_parameters() if "lora_" not in n and "temperature" not in n
    )


@pytest.mark.parametrize("name", ["tiny", "tiny-swiglu"])
def test_lora_merged_equals_unmerged(name):
    adapted = _randomised(name, seed=3)
    for tower in (adapted.vision, adapted.text):
        assert len(apply_lora(tower, rank=4, alpha=8.0, targets=("qkv", "proj", "fc1", "fc2"))) == 8
    with torch.no_grad():
        for n, p in adapted.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)  # a trained-looking update
    base = _randomised(name, seed=3)
    unmerged = _outputs(adapted)
    assert not torch.allclose(unmerged[0], _outputs(base)[0], atol=1e-3), "the adapters change the outputs"
    # from the state dict (what merge-lora does) into a plain model with the official names
    state, count = merge_lora_state(adapted.state_dict())
    assert count == 16 and set(state) == set(base.state_dict())
    plain = TIPSModel(adapted.cfg)
    plain.load_state_dict(state)
    # in place on the module
    in_place = copy.deepcopy(adapted)
    assert merge_lora(in_place) == 16 and set(in_place.state_dict()) == set(base.state_dict())
    for merged in (plain, in_place):
        for a, b in zip(_outputs(merged), unmerged):
            assert (a - b).abs().max() <= 1e-6
    # the value trick reads attn.qkv.weight directly: it sees the adapted weight too
    pixels = _inputs()[0]
    with torch.no_grad():
        assert (
            plain.vision.forward_value_trick(pixels).patch_tokens
            - adapted.vision.forward_value_trick(pixels).patch_tokens
        ).abs().max() <= 1e-6


def test_lora_dropout_only_in_training():
    model = _randomised(seed=5)
    apply_lora(model.vision, rank=2, alpha=2.0, dropout=0.5, targets=("qkv",))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)
    pixels = _inputs()[0]
    model.eval()
    with torch.no_grad():
        a, b = model.encode_image(pixels).cls_web, model.encode_image(pixels).cls_web
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c = model.encode_image(pixels).cls_web
    assert not torch.allclose(a, c)


def test_merge_state_errors_name_the_key():
    model = _randomised()
    apply_lora(model.vision, rank=2, alpha=2.0, targets=("qkv",))
    state = model.state_dict()
    del state["vision.blocks.0.attn.qkv.parametrizations.weight.0.lora_B"]
    with pytest.raises(KeyError, match=r"vision\.blocks\.0\.attn\.qkv"):
        merge_lora_state(state)


def test_lora_training_learns_base_frozen_and_exports_merged(tmp_path, init_dir):
    run = tmp_path / "lora"
    overrides = FAST + [
        f"model.init_from={init_dir}",
        "model.trainable.vision=lora",
        "model.trainable.text=lora",
        "model.lora.rank=4",
        "optim.lr=3e-3",
        "loss.distill=false",
        "loss.mim=false",
        "data.batch_size=16",
        "train.steps=40",
        f"train.output_dir={run}",
    ]
    summary = train(load_config("tiny", overrides=overrides))
    records = read_metrics(run / "metrics.jsonl")
    first = sum(r["loss_contrastive"] for r in records[:5]) / 5
    last = sum(r["loss_contrastive"] for r in records[-5:]) / 5
    assert first > 0.8 * math.log(16)
    assert last < first - 0.15, (first, last)
    payload = _checkpoint(run)
    base = open_tips.load_pretrained(init_dir)
    state = payload["model"]
    for key, value in base.vision.state_dict().items():
        name = f"vision.{key}"
        if name not in state:  # an adapted weight: its frozen original
            name = name.replace(".weight", ".parametrizations.weight.original")
        assert torch.equal(state[name], value), name
    b = state["text.transformer.resblocks.0.attn.parametrizations.in_proj_weight.0.lora_B"]
    assert b.abs().max() > 0, "LoRA B moved off zero"
    # final/ is the merged model and reproduces the adapted one
    merged = open_tips.load_pretrained(summary["export"])
    adapted = open_tips.load_pretrained(init_dir)
    cfg = load_config("tiny", overrides=overrides)
    apply_trainable(adapted, cfg.model.trainable, cfg.model.lora)
    adapted.load_state_dict(state)
    for a, b in zip(_outputs(merged), _outputs(adapted)):
        assert (a - b).abs().max() <= 1e-5


# --- head warm-up ---------------------------------------------------------------------------------------


def test_head_warmup_holds_backbone_then_copies_teacher_heads(tmp_path, init_dir):
    run = tmp_path / "warm"
    overrides = FAST + [
        f"model.init_from={init_dir}",
        "train.head_warmup_steps=3",
        "train.steps=5",
        "train.save_every=1",
        "train.keep_checkpoints=5",
        "optim.warmup_steps=0",
        f"train.output_dir={run}",
    ]
    train(load_config("tiny", overrides=overrides))
    initial = {f"model.{k}": v for k, v in open_tips.load_pretrained(init_dir).state_dict().items()}
    states = {step: _checkpoint(run, step)["objective"] for step in (1, 3, 5)}
    for step in (1, 3):
        for key, value in initial.items():
            assert torch.equal(states[step][key], value), (step, key)  # towers and temperature held
    moved = [k for k, v in initial.items() if not torch.equal(states[5][k], v)]
    assert "model.log_temperature" in moved and any(k.startswith("model.vision.blocks.") for k in moved)
    teacher_of = {"distill": "teacher.dino_head.", "mask": "teacher.ibot_head."}
    heads = [k for k in states[3] if k.startswith("terms.") and ".head." in k and "original0" not in k]
    assert len(heads) > 4
    for key in heads:
        teacher_key = teacher_of[key.split(".")[1]] + key.split(".head.", 1)[1]
        assert not torch.equal(states[1][key], states[3][key]), key  # the heads learn during warm-up
        assert torch.equal(states[3][teacher_key], states[3][key]), teacher_key  # copied at its end
        assert not torch.equal(states[1][teacher_key], states[1][key]), teacher_key  # before: an EMA behind
    centre = "terms.distill.targets.cls_web.loss.center"
    assert not torch.equal(states[1][centre], states[3][centre])  # the centres keep learning
