import pytest

from open_tips.train.config import (
    PRESET_DIR,
    TrainConfig,
    list_presets,
    load_config,
    parse_override,
    validate,
)


def test_preset_yaml_and_overrides_in_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "preset: tiny-tipsv2\noptim:\n  lr: 0.002\ndata:\n  batch_size: 8\n  caption_weights: {short: 1.0}\n"
    )
    cfg = load_config(
        yaml_path=path, overrides=["optim.lr=3e-4", "loss.mim=false", "data.global_scale=[0.5, 1.0]"]
    )
    assert cfg.preset == "tiny-tipsv2"
    assert cfg.teacher.kind == "head_ema" and cfg.loss.ibot_all_tokens  # from the preset
    assert cfg.optim.lr == pytest.approx(3e-4)  # override beats the file
    assert cfg.data.batch_size == 8 and cfg.data.caption_weights == {"short": 1.0}
    assert cfg.loss.mim is False and cfg.data.global_scale == (0.5, 1.0)


def test_inherited_preset():
    cfg = load_config("b14-tipsv2")
    assert cfg.model.name == "tipsv2-b14" and cfg.data.num_local == 6 and cfg.teacher.kind == "head_ema"


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("loss.mim=maybe", "loss.mim"),
        ("data.batch_size=1.5", "data.batch_size"),
        ("teacher.kind=average", "teacher.kind"),
        ("data.global_size=50", "multiples of the patch size"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises((KeyError, ValueError), match=message.replace("(", r"\(")):
        load_config("tiny", overrides=[override])


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {lr: [1, 2}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(yaml_path=path)
    path.write_text("optim: {nonsense: 1}\n")
    with pytest.raises(KeyError, match="bad.yaml"):
        load_config(yaml_path=path)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config("tiny", overrides=["data.caption_weights={short: 0.3, detailed: 0.7}"])
    path = tmp_path / "saved.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(yaml_path=path)
    assert again.to_dict() == cfg.to_dict()


def test_parse_override():
    assert parse_override("a.b=1e-3") == ("a.b", 1e-3)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    with pytest.raises(ValueError):
        parse_override("novalue")


# Every preset's values as the hand-written engine resolved them before OmegaConf (issue 10); a deliberate
# change to a preset file changes them here too. The keys that differ from the dataclass defaults, compared
# with their types (0.0005 must stay a float, (0.32, 1.0) a tuple).
PRESET_VALUES = {
    "tiny": {},
    "tiny-tipsv2": {
        "data.caption_weights": {"short": 0.5, "detailed": 0.5},
        "loss.ibot_all_tokens": True,
        "loss.ssl_weight_warmup": 0.3,
        "teacher.kind": "head_ema",
    },
    "small": {
        "model.name": "small-112",
        "data.num_samples": 20000,
        "data.global_size": 112,
        "data.local_size": 56,
        "data.num_local": 4,
        "train.steps": 3000,
        "train.output_dir": "runs/small",
    },
    "b14": {
        "model.name": "tipsv2-b14",
        "data.builtin_image_size": 256,
        "data.tokenizer_vocab": 4096,
        "data.global_size": 224,
        "data.local_size": 98,
        "data.num_local": 6,
        "data.global_scale": (0.32, 1.0),
        "data.local_scale": (0.05, 0.32),
        "data.batch_size": 64,
        "loss.head_out_dim": 32768,
        "loss.head_hidden_dim": 2048,
        "loss.head_bottleneck_dim": 256,
        "optim.lr": 0.0005,
        "optim.warmup_fraction": 1 / 90,
        "train.steps": 90000,
        "train.precision": "bf16",
        "train.output_dir": "runs/b14",
        "train.save_every": 1000,
    },
    "finetune": {
        "optim.lr": 0.0001,
        "optim.min_lr": 1e-06,
        "optim.warmup_steps": 100,
        "optim.head_lr_mult": 10.0,
        "optim.layer_decay": 0.75,
        "train.output_dir": "runs/finetune",
        "train.head_warmup_steps": 100,
    },
}
PRESET_VALUES["b14-tipsv2"] = {
    **PRESET_VALUES["b14"],
    "loss.ibot_all_tokens": True,
    "loss.ssl_weight_warmup": 0.3,
    "teacher.kind": "head_ema",
}


def _flat(mapping, prefix=""):
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key != "caption_weights":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_preset_resolves_to_its_values():
    assert sorted(list_presets()) == sorted(PRESET_VALUES) and list_presets()[0] == "tiny"
    defaults = _flat(TrainConfig().to_dict())
    for name, values in PRESET_VALUES.items():
        expected = {**defaults, **values, "preset": name}
        got = _flat(load_config(name).to_dict())
        assert {k: (type(v), v) for k, v in got.items()} == {k: (type(v), v) for k, v in expected.items()}, (
            name
        )


def test_preset_files_are_copyable_configs(tmp_path):
    # a copy of a preset file, given as --config, is that preset (apart from the recorded name)
    for name in list_presets():
        copy = tmp_path / f"{name}.yaml"
        copy.write_text((PRESET_DIR / f"{name}.yaml").read_text())
        cfg = load_config(yaml_path=copy).to_dict()
        assert cfg == {**load_config(name).to_dict(), "preset": cfg["preset"]}, name


def test_optional_ints_fractions_and_dotted_yaml_keys(tmp_path):
    cfg = load_config("tiny", overrides=["optim.warmup_steps=20", "loss.teacher_temp_warmup_steps=null"])
    assert cfg.optim.warmup_steps == 20 and cfg.loss.teacher_temp_warmup_steps is None
    cfg = load_config("finetune", overrides=["optim.warmup_steps=null", "train.steps=1e3"])
    assert cfg.optim.warmup_steps is None and cfg.train.steps == 1000 and type(cfg.train.steps) is int
    with pytest.raises(ValueError, match="optim.warmup_fraction is a fraction"):
        load_config("tiny", overrides=["optim.warmup_fraction=1.5"])
    with pytest.raises(ValueError, match=r"optim.betas: expected 2 values"):
        load_config("tiny", overrides=["optim.betas=[0.9]"])
    path = tmp_path / "dotted.yaml"
    path.write_text('"optim.lr": 0.25\ndata: {"caption_weights": {a.b: 1.0}}\n')
    cfg = load_config(yaml_path=path)
    assert cfg.optim.lr == 0.25 and cfg.data.caption_weights == {"a.b": 1.0}


def test_validate_checks_choices_of_a_config_built_in_code():
    cfg = TrainConfig()
    cfg.loss.centering = "median"
    with pytest.raises(ValueError, match="loss.centering: 'median' is not one of center, sinkhorn, none"):
        validate(cfg)
