"""One typed config tree for training: named presets, a YAML file, then dotted overrides.

``load_config(preset="tiny", yaml_path=None, overrides=["optim.lr=1e-3", "loss.mim=false"])`` applies them
in that order. Every value is checked against the dataclass field's type, so a typo in a key or a value of
the wrong kind fails at start-up with the dotted key named.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


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
    mask_kind: str = "random"  # "random" | "block"
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
    contrastive: str = "softmax"  # "softmax" (InfoNCE) | "sigmoid" (SigLIP)
    # Which (CLS token, caption) pairs the contrastive loss uses: "dual" = CLS1-web + CLS2-synthetic (TIPS),
    # "web" = CLS1-web only (CLIP), "synthetic" = CLS1-synthetic only (CLIP on synthetic captions).
    pairs: str = "dual"
    contrastive_view: str = "clean"  # "clean" global crop or the "masked" one the MIM student sees
    distill: bool = True
    distill_weight: float = 1.0
    distill_cls: str = "web"  # which CLS feeds self-distillation: web | synthetic | both
    mim: bool = True
    mask_weight: float = 2.0
    ibot_all_tokens: bool = False  # iBOT++ (TIPSv2): supervise all tokens, not only masked ones
    head_out_dim: int = 1024
    head_hidden_dim: int = 256
    head_bottleneck_dim: int = 64
    head_layers: int = 3
    # Batch norm after the head's hidden layers (DINO's use_bn_in_head): without it the teacher stays uniform
    # because CLS tokens of different images start nearly parallel (docs/training.md).
    head_norm: str = "batch"  # "batch" | "none"
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
    centering: str = "center"  # "center" (EMA centre, DINO) | "sinkhorn" (Sinkhorn-Knopp) | "none"
    sparc_weight: float = 0.0  # SPARC fine-grained loss on (patch, synthetic-caption token) pairs
    sparc_caption: str = "synthetic"
    koleo_weight: float = 0.0


@dataclass
class TeacherSection:
    kind: str = "full_ema"  # "full_ema" (TIPS v1) | "head_ema" (TIPSv2: shared backbone, EMA heads only)
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
    precision: str = "fp32"  # fp32 | bf16 | fp16
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
    checkpoint_format: str = "full"
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
    strategy: str = "auto"  # auto | none | ddp | fsdp
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
    loss: str = "cosine"  # cosine | smooth_l1
    combine_with_tips: bool = True  # false: only feature distillation (+ contrastive, below)
    contrastive: bool = True  # with combine_with_tips=false: keep the image-text contrastive term


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


# Presets: overrides on top of the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    # Trains in a few minutes on 2 CPU cores; the README's main job.
    "tiny": {},
    "tiny-tipsv2": {
        "teacher.kind": "head_ema",
        "loss.ibot_all_tokens": True,
        "data.caption_weights": {"short": 0.5, "detailed": 0.5},
    },
    "small": {
        "model.name": "small-112",
        "data.global_size": 112,
        "data.local_size": 56,
        "data.num_local": 4,
        "data.num_samples": 20000,
        "train.steps": 3000,
        "train.output_dir": "runs/small",
    },
    # The paper's geometry (ViT-B/14, 224 px global, 6 local crops at 98 px, 32k prototypes).
    "b14": {
        "model.name": "tipsv2-b14",
        "data.source": "builtin",
        "data.builtin_image_size": 256,
        "data.global_size": 224,
        "data.local_size": 98,
        "data.num_local": 6,
        "data.global_scale": [0.32, 1.0],
        "data.local_scale": [0.05, 0.32],
        "data.batch_size": 64,
        "data.tokenizer_vocab": 4096,
        "loss.head_out_dim": 32768,
        "loss.head_hidden_dim": 2048,
        "loss.head_bottleneck_dim": 256,
        "optim.lr": 5e-4,
        "optim.warmup_fraction": 1 / 90,  # 1000 of 90000 steps
        "train.steps": 90000,
        "train.precision": "bf16",
        "train.output_dir": "runs/b14",
        "train.save_every": 1000,
    },
    "b14-tipsv2": {"preset": "b14", "teacher.kind": "head_ema", "loss.ibot_all_tokens": True},
    # Continued pretraining / fine-tuning from model.init_from (docs/training.md): a low lr with layer-wise
    # decay, and the SSL heads warmed up on the frozen backbone before it moves.
    "finetune": {
        "optim.lr": 1e-4,
        "optim.min_lr": 1e-6,
        "optim.warmup_steps": 100,
        "optim.layer_decay": 0.75,
        "optim.head_lr_mult": 10.0,
        "train.head_warmup_steps": 100,
        "train.output_dir": "runs/finetune",
    },
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Checks/converts ``value`` to ``annotation``; raises ValueError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"{key}: {value!r} fits none of {annotation}")
    if annotation is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], key) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:  # YAML 1.1 leaves "1e-3" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    raise ValueError(f"{key}: unsupported type {annotation}")


def set_value(config: TrainConfig, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target: Any = config
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or part not in _field_types(type(target)):
            raise KeyError(f"unknown config key {dotted!r}")
        target = getattr(target, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(target) or name not in _field_types(type(target)):
        raise KeyError(f"unknown config key {dotted!r}")
    annotation = _field_types(type(target))[name]
    if dataclasses.is_dataclass(getattr(target, name)):
        if not isinstance(value, dict):
            raise ValueError(f"{dotted}: expected a mapping of its fields")
        for key, sub in value.items():
            set_value(config, f"{dotted}.{key}", sub)
        return
    setattr(target, name, _coerce(value, annotation, dotted))


def apply_mapping(config: TrainConfig, mapping: dict[str, Any], prefix: str = "") -> None:
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if key == "preset" and not prefix:
            continue
        if "." in key or not isinstance(value, dict) or dotted in ("data.caption_weights",):
            set_value(config, dotted, value)
        else:
            holder = config
            for part in dotted.split("."):
                holder = getattr(holder, part, None)
            if dataclasses.is_dataclass(holder):
                apply_mapping(config, value, prefix=f"{dotted}.")
            else:
                set_value(config, dotted, value)


def _preset_chain(name: str) -> list[dict[str, Any]]:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    parent = preset.get("preset")
    return (_preset_chain(parent) if parent and parent != name else []) + [preset]


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
    file_mapping: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            file_mapping = yaml.safe_load(Path(yaml_path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{yaml_path}: malformed YAML ({err})") from err
        if not isinstance(file_mapping, dict):
            raise ValueError(f"{yaml_path}: expected a mapping at the top level")
    name = preset or file_mapping.get("preset") or "tiny"
    config = TrainConfig(preset=name)
    for layer in _preset_chain(name):
        apply_mapping(config, layer)
    if file_mapping:
        try:
            apply_mapping(config, file_mapping)
        except (KeyError, ValueError) as err:
            raise type(err)(f"{yaml_path}: {err}") from err
    for text in overrides or []:
        key, value = parse_override(text)
        set_value(config, key, value)
    validate(config)
    return config


_CHOICES = {
    "loss.contrastive": ("softmax", "sigmoid"),
    "loss.pairs": ("dual", "web", "synthetic"),
    "loss.contrastive_view": ("clean", "masked"),
    "loss.distill_cls": ("web", "synthetic", "both"),
    "loss.sparc_caption": ("synthetic", "web"),
    "loss.centering": ("center", "sinkhorn", "none"),
    "loss.head_norm": ("batch", "none"),
    "teacher.kind": ("full_ema", "head_ema"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.checkpoint_format": ("full", "sharded"),
    "data.mask_kind": ("random", "block"),
    "distributed.strategy": ("auto", "none", "ddp", "fsdp"),
    "distill.loss": ("cosine", "smooth_l1"),
}


def validate(config: TrainConfig) -> None:
    for dotted, choices in _CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ValueError(f"{dotted}: {value!r} is not one of {', '.join(choices)}")
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
        weights = (config.distill.cls_weight, config.distill.patch_weight, config.distill.text_weight)
        if max(weights) <= 0:
            raise ValueError("distill: every term is off (set distill.cls/patch/text_weight > 0)")
    only_features = bool(config.distill.teacher) and not config.distill.combine_with_tips
    if config.loss.distill and config.data.num_local == 0 and not only_features:
        raise ValueError("loss.distill needs local crops: set data.num_local > 0 or loss.distill=false")
    _validate_trainable(config)


def _validate_trainable(config: TrainConfig) -> None:
    from open_tips.models.lora import LORA_TARGETS
    from open_tips.train.trainable import parse_mode

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
