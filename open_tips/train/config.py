"""One typed config tree for training: a preset, a YAML file, then dotted ``key=value`` overrides.

``load_config(preset="tiny", yaml_path=None, overrides=["optim.lr=1e-3", "loss.mim=false"])`` applies them
in that order. The dataclasses below are the schema: OmegaConf checks and converts every value against its
field's type (a field's choices are its ``Literal``), so a typo in a key or a value of the wrong kind fails at
start-up with the dotted key named. Presets are YAML files in ``open_tips/train/presets/`` (copy one to start
a config of your own); ``preset: NAME`` in a preset or a user file builds on that preset.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from open_tips.models.lora import LORA_TARGETS
from open_tips.train.trainable import parse_mode

PRESET_DIR = Path(__file__).with_name("presets")
DEFAULT_PRESET = "tiny"


@dataclass
class TrainableSection:
    # Per tower: "full" | "frozen" | "last:K" (last K blocks + final norm) | "lora" (model.lora adapters)
    vision: str = "full"
    text: str = "full"


@dataclass
class LoraSection:
    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    # Projections of every block: qkv (vision attn.qkv, text attn.in_proj), proj (attention output),
    # fc1 / fc2 (first / second MLP projection: fc1/fc2, w12/w3 or c_fc/c_proj).
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])


@dataclass
class ModelSection:
    name: str = "tiny"  # registry name of the architecture
    init_from: str | None = None  # any checkpoint load_pretrained accepts: continued pretraining
    grad_checkpointing: bool = False
    compile: bool = False
    drop_path_rate: float = 0.0
    layerscale_init: float = 1.0
    trainable: TrainableSection = field(default_factory=TrainableSection)
    lora: LoraSection = field(default_factory=LoraSection)


@dataclass
class DataSection:
    source: str = "builtin"  # "builtin", WebDataset shard URLs (brace expansion, pipe:), or a folder
    num_samples: int = 2048  # built-in dataset size
    builtin_image_size: int = 112
    caption_noise: float = 0.5
    tokenizer: str | None = None  # SentencePiece model; None with builtin data: trained on the captions
    tokenizer_vocab: int = 512
    global_size: int = 56
    local_size: int = 28
    num_local: int = 2
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    # JPEG shards: decode large images at 1/2, 1/4 or 1/8 size where every crop stays a downscale
    # (libjpeg's scaled IDCT; open_tips.data.decode.jpeg_scale_for). false: always full size.
    reduced_decode: bool = True
    mask_kind: Literal["random", "block"] = "random"
    mask_ratio: float = 0.75
    mask_probability: float = 1.0  # fraction of images that get a mask
    caption_weights: dict[str, float] | None = None  # template -> probability for CLS2's caption
    # Skip (and count) samples without a synthetic caption instead of training CLS2 on their web caption.
    require_synthetic: bool = False
    batch_size: int = 32
    num_workers: int = 0
    shuffle_buffer: int = 1000
    resample: bool = False


@dataclass
class LossSection:
    contrastive: Literal["softmax", "sigmoid"] = "softmax"  # InfoNCE | SigLIP
    # Which (CLS token, caption) pairs the contrastive loss uses: "dual" = CLS1-web + CLS2-synthetic (TIPS),
    # "web" = CLS1-web only (CLIP), "synthetic" = CLS1-synthetic only (CLIP on synthetic captions).
    pairs: Literal["dual", "web", "synthetic"] = "dual"
    contrastive_view: Literal["clean", "masked"] = (
        "clean"  # the clean global crop or the one the MIM student sees
    )
    distill: bool = True
    distill_weight: float = 1.0
    distill_cls: Literal["web", "synthetic", "both"] = "web"  # which CLS feeds self-distillation
    mim: bool = True
    mask_weight: float = 2.0
    ibot_all_tokens: bool = False  # iBOT++ (TIPSv2): supervise all tokens, not only masked ones
    head_out_dim: int = 1024
    head_hidden_dim: int = 256
    head_bottleneck_dim: int = 64
    head_layers: int = 3
    # Batch norm after the head's hidden layers (DINO's use_bn_in_head): without it the teacher stays uniform
    # because CLS tokens of different images start nearly parallel (docs/training.md).
    head_norm: Literal["batch", "none"] = "batch"
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    # Teacher-temperature warm-up as a fraction of train.steps (DINOv2: 30 of 100 epochs); steps override it.
    teacher_temp_warmup_fraction: float = 0.3
    teacher_temp_warmup_steps: int | None = None
    center_momentum: float = 0.9
    # Fraction of train.steps over which the distill and mask weights ramp up from 0 (0 = full from the start).
    ssl_weight_warmup: float = 0.0
    center_warm_start: bool = True  # start the EMA centre at the first batch's mean (not at zero)
    centering: Literal["center", "sinkhorn", "none"] = "center"  # EMA centre (DINO) | Sinkhorn-Knopp | none
    sparc_weight: float = 0.0  # SPARC fine-grained loss on (patch, synthetic-caption token) pairs
    sparc_caption: Literal["synthetic", "web"] = "synthetic"
    koleo_weight: float = 0.0


@dataclass
class TeacherSection:
    kind: Literal["full_ema", "head_ema"] = "full_ema"  # TIPS v1 | TIPSv2 (shared backbone, EMA heads only)
    momentum_start: float = 0.994
    momentum_end: float = 1.0


@dataclass
class OptimSection:
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_fraction: float = 0.05  # lr warm-up as a fraction of train.steps; warmup_steps overrides it
    warmup_steps: int | None = None
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 3.0
    patch_embed_lr_mult: float = 0.2
    head_lr_mult: float = 1.0  # DINO/iBOT projection heads
    freeze_last_layer_steps: int = 0
    # Layer-wise lr decay (BEiT / DINOv2 fine-tuning): block i of a depth-D tower gets lr x decay^(D - i),
    # its embeddings decay^(D + 1); final norms, heads and the temperature keep the full lr. 1.0 = off.
    layer_decay: float = 1.0


@dataclass
class TrainSection:
    steps: int = 1000
    accum_steps: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    seed: int = 0
    output_dir: str = "runs/tiny"
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2
    evaluate_at_end: bool = True
    max_nonfinite_steps: int = 5  # consecutive non-finite losses before the run stops
    collapse_patience: int = 5  # consecutive log steps with a uniform / collapsed teacher before a warning
    threads: int = 0  # torch.set_num_threads; 0 = leave as is
    # Device peak TFLOP/s for the logged mfu; 0 = the table in open_tips.train.flops (known GPUs; none on CPU).
    peak_tflops: float = 0.0
    # full: one .pt gathered on rank 0 (small runs); sharded: torch.distributed.checkpoint, one file per rank.
    checkpoint_format: Literal["full", "sharded"] = "full"
    # Continued pretraining: for the first N steps only the DINO/iBOT heads (and centres) learn, both towers
    # and the temperature are held; then the teacher heads are copied from the student heads.
    head_warmup_steps: int = 0
    # Periodic in-training evaluation (eval_* keys in metrics.jsonl / TensorBoard / W&B); 0 = off.
    eval_every: int = 0
    # "builtin" (the built-in held-out split), validation WebDataset shards, or any path `open-tips eval` reads.
    eval_source: str = "builtin"
    eval_tasks: list[str] = field(default_factory=lambda: ["retrieval", "knn", "zeroshot"])
    eval_max_images: int = 200  # images read from eval_source (half kNN memory, half queries with labels)


@dataclass
class DistributedSection:
    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    timeout_s: int = 300
    local_loss: bool = True


@dataclass
class DistillSection:
    """Feature distillation from a frozen teacher (open_tips.train.terms_distill)."""

    teacher: str | None = None  # any path or hub id load_pretrained reads; None = off
    cls_weight: float = 1.0  # both CLS tokens
    patch_weight: float = 1.0
    # > 0: the pooled text embeddings too (the teacher needs a text tower and the run's tokenizer)
    text_weight: float = 0.0
    # > 0: KL between the teacher's and the student's in-batch image-text similarity distributions (both
    # directions, at the teacher's temperature; CLIP-KD's logit distillation). Needs the teacher's text.
    logit_weight: float = 0.0
    # > 0: CLIP-KD's interactive contrastive loss: student image vs teacher text, teacher image vs student
    # text (through the projections when widths differ).
    interactive_weight: float = 0.0
    loss: Literal["cosine", "smooth_l1"] = "cosine"
    combine_with_tips: bool = True  # false: only feature distillation (+ contrastive, below)
    contrastive: bool = True  # with combine_with_tips=false: keep the image-text contrastive term

    @property
    def reads_teacher_text(self) -> bool:
        """Whether a term runs the teacher's text tower on the student's token ids."""
        return self.text_weight > 0 or self.logit_weight > 0 or self.interactive_weight > 0


@dataclass
class LoggingSection:
    tensorboard: bool = True
    wandb: bool = False  # Weights & Biases (pip install 'open_tips[wandb]'); WANDB_MODE=offline works offline
    wandb_project: str = "open_tips"
    wandb_name: str | None = None  # run name; None = the output directory's name


@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    distill: DistillSection = field(default_factory=DistillSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def list_presets() -> list[str]:
    """The preset names, the default first."""
    return sorted(
        (p.stem for p in PRESET_DIR.glob("*.yaml")), key=lambda name: (name != DEFAULT_PRESET, name)
    )


def _fields(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type hint of every field, sections (nested dataclasses) included."""
    out: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        out[prefix + name] = hint
        if dataclasses.is_dataclass(hint):
            out.update(_fields(hint, f"{prefix}{name}."))
    return out


FIELDS = _fields(TrainConfig)


def _leaves(mapping: dict, prefix: str = ""):
    """(dotted key, value) for each value of a nested mapping; keys may be dotted themselves."""
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if dataclasses.is_dataclass(FIELDS.get(dotted)) and isinstance(value, dict):
            yield from _leaves(value, f"{dotted}.")
        else:
            yield dotted, value


def _expected(hint: Any, value: Any) -> str:
    """What a field of type ``hint`` takes, said for the error that names its key."""
    if type(None) in typing.get_args(hint):  # X | None: what X takes
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is Literal:
        return f"{value!r} is not one of {', '.join(args)}"
    wanted = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    wanted |= {dict: "a mapping", tuple: f"{len(args)} values"}
    return f"expected {wanted.get(origin, hint)}, got {value!r}"


def _apply(config: DictConfig, mapping: dict) -> None:
    # Leaf by leaf rather than one OmegaConf.merge of the whole layer: merge would combine a mapping-valued
    # field (data.caption_weights) key by key with the layer below instead of replacing it, and its errors
    # for tuples and sections do not name the key. OmegaConf checks and converts each value.
    for dotted, value in _leaves(mapping):
        if dotted not in FIELDS:
            raise KeyError(f"unknown config key {dotted!r}")
        hint = FIELDS[dotted]
        if dataclasses.is_dataclass(hint):
            raise ValueError(f"{dotted}: expected a mapping of its fields")
        if int in (hint, *typing.get_args(hint)) and isinstance(value, float) and value.is_integer():
            value = int(value)  # train.steps=1e4 (OmegaConf refuses any float for an int)
        try:
            OmegaConf.update(config, dotted, value, merge=False)
        except OmegaConfBaseException as err:
            raise ValueError(f"{dotted}: {_expected(hint, value)}") from err


def _read_yaml(path: str | Path) -> dict:
    try:
        mapping = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: malformed YAML ({err})") from err
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return mapping


def _preset_chain(name: str) -> list[tuple[Path, dict]]:
    """(file, mapping) of ``name`` and the presets it builds on, the base first."""
    if name not in list_presets():
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(list_presets())}")
    path = PRESET_DIR / f"{name}.yaml"
    mapping = _read_yaml(path)
    parent = mapping.pop("preset", None)
    return (_preset_chain(parent) if parent and parent != name else []) + [(path, mapping)]


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" as a string; numbers are what such overrides mean
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def load_config(
    preset: str | None = None, yaml_path: str | Path | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    file_mapping = {} if yaml_path is None else _read_yaml(yaml_path)
    name = preset or file_mapping.get("preset") or DEFAULT_PRESET
    config = OmegaConf.structured(TrainConfig(preset=name))
    for path, layer in _preset_chain(name):
        try:
            _apply(config, layer)
        except (KeyError, ValueError) as err:  # a broken preset file
            raise type(err)(f"{path}: {err.args[0]}") from err
    try:
        _apply(config, {k: v for k, v in file_mapping.items() if k != "preset"})
    except (KeyError, ValueError) as err:
        raise type(err)(f"{yaml_path}: {err.args[0]}") from err
    for text in overrides or []:
        _apply(config, dict([parse_override(text)]))
    try:
        result = OmegaConf.to_object(config)
    except OmegaConfBaseException as err:  # e.g. an ${interpolation} to a key that does not exist
        raise ValueError(f"{err.full_key}: {err.msg}") from err
    validate(result)
    return result


def validate(config: TrainConfig) -> None:
    # The choices: load_config has checked them already, a config built in code has not.
    for dotted, hint in FIELDS.items():
        if typing.get_origin(hint) is Literal:
            value = functools.reduce(getattr, dotted.split("."), config)
            if value not in typing.get_args(hint):
                raise ValueError(f"{dotted}: {_expected(hint, value)}")
    if config.data.global_size % 14 or config.data.local_size % 14:
        raise ValueError("data.global_size and data.local_size must be multiples of the patch size 14")
    for dotted in ("optim.warmup_fraction", "loss.teacher_temp_warmup_fraction", "loss.ssl_weight_warmup"):
        section, name = dotted.split(".")
        if not 0.0 <= getattr(getattr(config, section), name) <= 1.0:
            raise ValueError(f"{dotted} is a fraction of train.steps and must lie in [0, 1]")
    if not 0.0 <= config.data.mask_ratio < 1.0:
        raise ValueError(f"data.mask_ratio must lie in [0, 1), got {config.data.mask_ratio}")
    if config.train.accum_steps < 1 or config.train.steps < 1:
        raise ValueError("train.steps and train.accum_steps must be >= 1")
    if config.train.eval_every < 0:
        raise ValueError(f"train.eval_every must be >= 0, got {config.train.eval_every}")
    if config.distill.teacher and not config.distill.combine_with_tips and not config.distill.contrastive:
        section = config.distill
        weights = (section.cls_weight, section.patch_weight, section.text_weight, section.logit_weight)
        if max(*weights, section.interactive_weight) <= 0:
            raise ValueError(
                "distill: every term is off (set distill.cls/patch/text/logit/interactive_weight > 0)"
            )
    only_features = bool(config.distill.teacher) and not config.distill.combine_with_tips
    if config.loss.distill and config.data.num_local == 0 and not only_features:
        raise ValueError("loss.distill needs local crops: set data.num_local > 0 or loss.distill=false")
    _validate_trainable(config)


def _validate_trainable(config: TrainConfig) -> None:
    modes = [parse_mode(config.model.trainable.vision, "model.trainable.vision")[0]]
    modes.append(parse_mode(config.model.trainable.text, "model.trainable.text")[0])
    lora = config.model.lora
    if "lora" in modes:
        if lora.rank < 1:
            raise ValueError(f"model.lora.rank must be >= 1, got {lora.rank}")
        if not 0.0 <= lora.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must lie in [0, 1), got {lora.dropout}")
        unknown = sorted(set(lora.targets) - set(LORA_TARGETS))
        if unknown or not lora.targets:
            raise ValueError(f"model.lora.targets: {unknown or '[]'} not among {', '.join(LORA_TARGETS)}")
    if config.train.head_warmup_steps < 0:
        raise ValueError(f"train.head_warmup_steps must be >= 0, got {config.train.head_warmup_steps}")
    if not 0.0 < config.optim.layer_decay <= 1.0:
        raise ValueError(f"optim.layer_decay must lie in (0, 1], got {config.optim.layer_decay}")
