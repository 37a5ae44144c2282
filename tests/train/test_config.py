import pytest

from open_tips.train.config import load_config, parse_override


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
