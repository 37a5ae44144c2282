"""DPT decoder checkpoints: the official Scenic zips, HF ``Tipsv2Dpt*`` directories and open_tips' own file.

Scenic zips (``tips_v2_{b14,l14,so400m14,g14}_{segmentation,depth,normals}_dpt.zip``) hold one ``.npy`` per
Flax parameter, named by its path in the parameter tree (``decoder/dpt/reassemble_blocks/
out_projection_0/kernel.npy``, ..., ``decoder/pixel_depth_classif/kernel.npy``). Flax kernels are laid out
channels-last: convolutions (kh, kw, in, out), dense layers (in, out). Flax's ConvTranspose does not flip
its kernel the way a gradient-of-convolution (PyTorch's ConvTranspose2d) does, so the x4 / x2 resize
kernels are also rotated by 180 degrees; with stride = kernel size and Scenic's padding (3 / 1) the output
block ``s*i + a`` of input pixel ``i`` uses Flax tap ``s - 1 - a`` and PyTorch tap ``a``.

HF directories are what ``Tipsv2DptFor*.save_pretrained`` writes (and the hub's ``google/tipsv2-*-dpt``
holds): ``config.json`` (``model_type: tipsv2_dpt``) and ``model.safetensors`` with the backbone under
``vision_encoder.`` (official names) and each task's decoder under ``{task}_head.`` with its output layer
at ``{task}_head.{task}_head.``.

open_tips' own file is one ``.safetensors`` holding one or more decoders (keys ``{task}.{name}``) with their
configs (and the backbone's identity, when known) as JSON in the metadata.

Every reader is strict: a missing, unexpected or mis-shaped tensor raises ``CheckpointError`` naming the
file and the key.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from open_tips.formats.common import CheckpointError, load_strict
from open_tips.formats.hf import mlp_ratio, read_hf_dir, to_official
from open_tips.models.dpt import TASKS, DPTConfig, DPTDecoder, canonical_task, default_layers
from open_tips.utils.atomic import atomic_write

OWN_FORMAT = "open_tips.dpt"
SCENIC_HEADS = {
    "depth": "pixel_depth_classif",
    "normals": "pixel_normals",
    "segmentation": "pixel_segmentation",
}
_SCENIC_TASK = {v: k for k, v in SCENIC_HEADS.items()}
_SCENIC_TASK["segmentation_head"] = "segmentation"
HF_HEADS = {"depth": "depth_head", "normals": "normals_head", "segmentation": "segmentation_head"}
HF_ARCHITECTURES = {
    "depth": "Tipsv2DptForDepthEstimation",
    "normals": "Tipsv2DptForNormalEstimation",
    "segmentation": "Tipsv2DptForSemanticSegmentation",
}

# ---------------------------------------------------------------------------------------------------------
# the Scenic parameter tree <-> open_tips names, with the kind of each tensor
# ---------------------------------------------------------------------------------------------------------


def _scenic_table(task: str) -> list[tuple[str, str, str]]:
    """(Scenic path without ``decoder/``, open_tips key, kind) for every tensor of a decoder."""
    rows: list[tuple[str, str, str]] = []
    rb = "dpt/reassemble_blocks"
    for i in range(4):
        rows += [
            (f"{rb}/readout_projects_{i}/kernel", f"dpt.reassemble.readout_projects.{i}.weight", "dense"),
            (f"{rb}/readout_projects_{i}/bias", f"dpt.reassemble.readout_projects.{i}.bias", "bias"),
            (f"{rb}/out_projection_{i}/kernel", f"dpt.reassemble.out_projections.{i}.weight", "conv"),
            (f"{rb}/out_projection_{i}/bias", f"dpt.reassemble.out_projections.{i}.bias", "bias"),
        ]
    for i, kind in ((0, "conv_transpose"), (1, "conv_transpose"), (3, "conv")):
        rows += [
            (f"{rb}/resize_layers_{i}/kernel", f"dpt.reassemble.resize_layers.{i}.weight", kind),
            (f"{rb}/resize_layers_{i}/bias", f"dpt.reassemble.resize_layers.{i}.bias", "bias"),
        ]
    for i in range(4):
        rows.append((f"dpt/convs_{i}/kernel", f"dpt.convs.{i}.weight", "conv"))
    for i in range(4):
        fb = f"dpt/fusion_blocks_{i}"
        # Flax numbers the residual units in call order: the skip's unit first when there is a skip
        units = [("PreActResidualConvUnit_0", "main_unit")]
        if i > 0:
            units = [("PreActResidualConvUnit_0", "residual_unit"), ("PreActResidualConvUnit_1", "main_unit")]
        for flax_name, ours in units:
            for conv in ("conv1", "conv2"):
                rows.append(
                    (f"{fb}/{flax_name}/{conv}/kernel", f"dpt.fusion_blocks.{i}.{ours}.{conv}.weight", "conv")
                )
        rows += [
            (f"{fb}/Conv_0/kernel", f"dpt.fusion_blocks.{i}.out_conv.weight", "conv"),
            (f"{fb}/Conv_0/bias", f"dpt.fusion_blocks.{i}.out_conv.bias", "bias"),
        ]
    rows += [
        ("dpt/project/kernel", "dpt.project.weight", "conv"),
        ("dpt/project/bias", "dpt.project.bias", "bias"),
        (f"{SCENIC_HEADS[task]}/kernel", "head.weight", "dense"),
        (f"{SCENIC_HEADS[task]}/bias", "head.bias", "bias"),
    ]
    return rows


def scenic_to_torch(array: np.ndarray, kind: str) -> torch.Tensor:
    """One Flax tensor in PyTorch layout."""
    if kind == "conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
        array = array.transpose(3, 2, 0, 1)
    elif kind == "conv_transpose":  # rotate the taps, then (kh, kw, in, out) -> (in, out, kh, kw)
        array = array[::-1, ::-1].transpose(2, 3, 0, 1)
    elif kind == "dense":  # (in, out) -> (out, in)
        array = array.T
    return torch.from_numpy(np.ascontiguousarray(array))


def torch_to_scenic(tensor: torch.Tensor, kind: str) -> np.ndarray:
    array = tensor.detach().float().cpu().numpy()
    if kind == "conv":
        array = array.transpose(2, 3, 1, 0)
    elif kind == "conv_transpose":
        array = array.transpose(2, 3, 0, 1)[::-1, ::-1]
    elif kind == "dense":
        array = array.T
    return np.ascontiguousarray(array)


def _read_zip_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("/"):
                    continue
                key = name[: -len(".npy")] if name.endswith(".npy") else name
                try:
                    arrays[key] = np.load(io.BytesIO(archive.read(name)), allow_pickle=False)
                except ValueError as err:
                    raise CheckpointError(
                        f"{path}: member {name!r} is not a plain .npy array ({err})"
                    ) from err
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(
            f"{path}: not a readable zip of .npy arrays ({type(err).__name__}: {err})"
        ) from err
    return arrays


def read_scenic_zip(
    path: str | os.PathLike, layers: tuple[int, ...] | None = None, backbone_depth: int | None = None
) -> DPTDecoder:
    """A decoder from an official Scenic zip. The task is read off the output layer's name and the sizes off
    the kernels; the backbone blocks to read are not stored in the file: pass ``layers`` or the tower's
    ``backbone_depth`` (the released choice for that depth is used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decoder checkpoint not found: {path}")
    raw = _read_zip_arrays(path)
    arrays = {k[len("decoder/") :] if k.startswith("decoder/") else k: v for k, v in raw.items()}
    if not any(k.startswith("dpt/") for k in arrays):  # a tree saved without the "dpt" level
        arrays = {(k if k.split("/")[0] in _SCENIC_TASK else f"dpt/{k}"): v for k, v in arrays.items()}
    tasks = sorted({_SCENIC_TASK[k.split("/")[0]] for k in arrays if k.split("/")[0] in _SCENIC_TASK})
    if len(tasks) != 1:
        raise CheckpointError(
            f"{path}: expected one output layer ({', '.join(sorted(_SCENIC_TASK))}), found "
            f"{', '.join(tasks) or 'none'}"
        )
    task = tasks[0]
    if "segmentation_head/kernel" in arrays and f"{SCENIC_HEADS[task]}/kernel" not in arrays:
        arrays = {k.replace("segmentation_head/", "pixel_segmentation/", 1): v for k, v in arrays.items()}
    key = "dpt/reassemble_blocks/readout_projects_0/kernel"
    if key not in arrays:
        raise CheckpointError(f"{path}: missing key {key!r}")
    embed_dim = int(arrays[key].shape[1])
    channels = tuple(
        int(_scenic_required(arrays, f"dpt/reassemble_blocks/out_projection_{i}/kernel", path).shape[-1])
        for i in range(4)
    )
    fusion = int(_scenic_required(arrays, "dpt/project/kernel", path).shape[-1])
    outputs = int(_scenic_required(arrays, f"{SCENIC_HEADS[task]}/kernel", path).shape[-1])
    if layers is None:
        if backbone_depth is None:
            raise ValueError(
                f"{path}: the file does not record the backbone blocks; pass layers or backbone_depth"
            )
        layers = default_layers(backbone_depth)
    extra: dict = {}
    if task == "segmentation":
        extra["num_classes"] = outputs
        if outputs == len(ADE20K_CLASSES):
            extra["class_names"] = list(ADE20K_CLASSES)
    elif task == "depth":
        extra["num_depth_bins"] = outputs
    cfg = DPTConfig(
        task=task,
        embed_dim=embed_dim,
        layers=tuple(layers),
        channels=fusion,
        post_process_channels=channels,
        **extra,
    )
    decoder = DPTDecoder(cfg)
    table = _scenic_table(task)
    wanted = {row[0] for row in table}
    unexpected = sorted(set(arrays) - wanted)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys: {', '.join(unexpected)}")
    state = {}
    for scenic_key, ours, kind in table:
        array = _scenic_required(arrays, scenic_key, path)
        expected_rank = {"conv": 4, "conv_transpose": 4, "dense": 2, "bias": 1}[kind]
        if array.ndim != expected_rank:
            raise CheckpointError(
                f"{path}: key {scenic_key!r} has shape {array.shape}, expected rank {expected_rank}"
            )
        state[ours] = scenic_to_torch(array.astype(np.float32, copy=False), kind)
    load_strict(decoder, state, f"{path}")
    return decoder.eval()


def _scenic_required(arrays: dict, key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise CheckpointError(f"{path}: missing key {key!r}")
    return arrays[key]


def write_scenic_zip(decoder: DPTDecoder, path: str | os.PathLike) -> None:
    """The decoder as an official Scenic zip (``decoder/...`` ``.npy`` members in Flax layout)."""
    state = decoder.state_dict()

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for scenic_key, ours, kind in _scenic_table(decoder.task):
                buffer = io.BytesIO()
                np.save(buffer, torch_to_scenic(state[ours], kind))
                archive.writestr(f"decoder/{scenic_key}.npy", buffer.getvalue())

    atomic_write(path, write)


# ---------------------------------------------------------------------------------------------------------
# HF (transformers Tipsv2Dpt*) directories
# ---------------------------------------------------------------------------------------------------------

_HF_BODY = [
    (r"^reassemble\.", "dpt.reassemble."),
    (r"^convs\.", "dpt.convs."),
    (r"^fusion_blocks\.", "dpt.fusion_blocks."),
    (r"^project\.", "dpt.project."),
]


def _hf_to_ours(key: str, head: str) -> str:
    if key.startswith(f"{head}."):
        return "head." + key[len(head) + 1 :]
    for pattern, repl in _HF_BODY:
        new = re.sub(pattern, repl, key)
        if new != key:
            return new
    return key


def _ours_to_hf(key: str, head: str) -> str:
    if key.startswith("head."):
        return f"{head}.{key[len('head.') :]}"
    return key[len("dpt.") :] if key.startswith("dpt.") else key


def is_hf_dpt_dir(path: str | os.PathLike) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "tipsv2_dpt"
    except (json.JSONDecodeError, OSError):
        return False


def read_hf_dpt_dir(
    directory: str | os.PathLike, tasks: list[str] | None = None
) -> tuple[dict[str, DPTDecoder], dict[str, torch.Tensor], dict]:
    """({task: decoder}, backbone state in official names (may be empty), config.json) of an HF
    ``Tipsv2Dpt*`` directory. ``tasks`` picks decoders; by default every decoder in the file."""
    directory = Path(directory)
    config, flat = read_hf_dir(directory)
    if config.get("model_type") != "tipsv2_dpt":
        raise CheckpointError(
            f"{directory / 'config.json'}: model_type is {config.get('model_type')!r}, not 'tipsv2_dpt'"
        )
    source = str(directory / "model.safetensors")
    backbone_cfg = config.get("backbone_config") or {}
    indices = backbone_cfg.get("out_indices") or [3, 6, 9, 12]
    layers = tuple(int(i) - 1 for i in indices)  # hidden_states[0] is the embedding output
    if any(i < 0 for i in layers):
        raise CheckpointError(f"{directory / 'config.json'}: out_indices {indices} include the embeddings")
    num_register = int(backbone_cfg.get("num_register_tokens", 1))
    if num_register != 1:
        raise CheckpointError(f"{directory / 'config.json'}: num_register_tokens {num_register} (TIPS has 1)")
    readout_act = config.get("readout_activation", "gelu_pytorch_tanh")
    if readout_act not in ("gelu_pytorch_tanh", "gelu_new"):
        raise CheckpointError(
            f"{directory / 'config.json'}: readout_activation {readout_act!r} (only the tanh GELU is supported)"
        )
    factors = [float(f) for f in config.get("reassemble_factors") or [4, 2, 1, 0.5]]
    if factors != [4.0, 2.0, 1.0, 0.5]:
        raise CheckpointError(
            f"{directory / 'config.json'}: reassemble_factors {factors} (expected 4, 2, 1, 0.5)"
        )
    by_prefix: dict[str, dict[str, torch.Tensor]] = {}
    vision_flat: dict[str, torch.Tensor] = {}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix in HF_HEADS.values():
            by_prefix.setdefault(prefix, {})[rest] = value
        elif prefix in ("vision_encoder", "backbone"):
            vision_flat[
                "vision_encoder." + rest if prefix == "vision_encoder" else "vision_model." + rest
            ] = value
        else:
            raise CheckpointError(f"{source}: unexpected key {key!r}")
    present = [t for t in TASKS if HF_HEADS[t] in by_prefix]
    wanted = [canonical_task(t) for t in tasks] if tasks else present
    decoders: dict[str, DPTDecoder] = {}
    for task in wanted:
        head = HF_HEADS[task]
        if head not in by_prefix:
            raise CheckpointError(f"{source}: no {task} decoder (no keys under {head + '.'!r})")
        state = {_hf_to_ours(k, head): v for k, v in by_prefix[head].items()}
        weight = state.get("dpt.reassemble.readout_projects.0.weight")
        if weight is None:
            raise CheckpointError(f"{source}: missing key {head + '.reassemble.readout_projects.0.weight'!r}")
        extra: dict = {}
        outputs = state.get("head.weight")
        if outputs is None:
            raise CheckpointError(f"{source}: missing key {f'{head}.{head}.weight'!r}")
        if task == "segmentation":
            extra["num_classes"] = int(outputs.shape[0])
            names = _hf_class_names(config, int(outputs.shape[0]))
            if names is not None:
                extra["class_names"] = names
        elif task == "depth":
            extra["num_depth_bins"] = int(config.get("num_depth_bins", outputs.shape[0]))
            extra["min_depth"] = float(config.get("min_depth", 0.001))
            extra["max_depth"] = float(config.get("max_depth", 10.0))
            act = config.get("depth_decoder_activation", "relu")
            if act not in ("relu", "linear", None):
                raise CheckpointError(f"{directory / 'config.json'}: depth_decoder_activation {act!r}")
            extra["project_activation"] = "relu" if act == "relu" else None
        cfg = DPTConfig(
            task=task,
            embed_dim=int(weight.shape[0]),
            layers=layers,
            channels=int(config.get("fusion_hidden_size", 256)),
            post_process_channels=tuple(config.get("neck_hidden_sizes") or ()) or None,
            **extra,
        )
        decoder = DPTDecoder(cfg)
        load_strict(decoder, state, f"{source} ({head})")
        decoders[task] = decoder.eval()
    vision_state: dict[str, torch.Tensor] = {}
    if vision_flat:
        vision_state, _, _ = to_official(vision_flat)
    return decoders, vision_state, config


def _hf_class_names(config: dict, count: int) -> list[str] | None:
    id2label = config.get("id2label") or {}
    names = [id2label.get(str(i)) for i in range(count)]
    if all(n is not None for n in names) and not all(str(n).startswith("LABEL_") for n in names):
        return [str(n) for n in names]
    return list(ADE20K_CLASSES) if count == len(ADE20K_CLASSES) else None


def hf_dpt_config(decoders: dict[str, DPTDecoder], vision_cfg) -> dict:
    """config.json for ``Tipsv2DptFor*`` holding ``decoders`` on a tower with ``vision_cfg``."""
    first = next(iter(decoders.values())).cfg
    for task, decoder in decoders.items():
        cfg = decoder.cfg
        same = (cfg.embed_dim, cfg.layers, cfg.channels, cfg.post_process_channels) == (
            first.embed_dim,
            first.layers,
            first.channels,
            first.post_process_channels,
        )
        if not same:
            raise ValueError(
                f"the {task} decoder's shape or layers differ from the others'; HF keeps one config"
            )
        if task != "depth" and cfg.project_activation is not None:
            raise ValueError(f"transformers has no activation after 'project' for the {task} decoder")
    architectures = (
        [HF_ARCHITECTURES[next(iter(decoders))]] if len(decoders) == 1 else ["Tipsv2DptForDensePrediction"]
    )
    config: dict = {
        "architectures": architectures,
        "model_type": "tipsv2_dpt",
        "backbone_config": {
            "model_type": "tipsv2_vision_model",
            "hidden_size": vision_cfg.width,
            "num_hidden_layers": vision_cfg.depth,
            "num_attention_heads": vision_cfg.heads,
            "mlp_ratio": mlp_ratio(vision_cfg.width, vision_cfg.mlp_hidden, vision_cfg.swiglu),
            "use_swiglu_ffn": vision_cfg.swiglu,
            "hidden_act": "gelu",
            "layer_norm_eps": vision_cfg.ln_eps,
            "image_size": vision_cfg.pos_grid * vision_cfg.patch_size,
            "patch_size": vision_cfg.patch_size,
            "num_channels": 3,
            "qkv_bias": vision_cfg.qkv_bias,
            "layerscale_value": 1.0,
            "num_register_tokens": 1,
            "out_indices": [i + 1 for i in first.layers],
            "apply_layernorm": True,
            "reshape_hidden_states": False,
        },
        "neck_hidden_sizes": list(first.post_process_channels),
        "fusion_hidden_size": first.channels,
        "reassemble_factors": [4, 2, 1, 0.5],
        "readout_activation": "gelu_pytorch_tanh",
    }
    if "depth" in decoders:
        cfg = decoders["depth"].cfg
        config.update(
            num_depth_bins=cfg.num_depth_bins,
            min_depth=cfg.min_depth,
            max_depth=cfg.max_depth,
            depth_decoder_activation="relu" if cfg.project_activation == "relu" else "linear",
        )
    if "segmentation" in decoders:
        cfg = decoders["segmentation"].cfg
        names = cfg.class_names or [f"LABEL_{i}" for i in range(cfg.num_classes)]
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
    return config


def write_hf_dpt_dir(directory: str | os.PathLike, decoders: dict[str, DPTDecoder], vision) -> None:
    """An HF ``Tipsv2Dpt*`` directory (config.json + model.safetensors) holding the tower ``vision`` (a
    ``VisionTransformer``) and ``decoders`` in the layout transformers reads."""
    directory = Path(directory)
    decoders = {canonical_task(t): d for t, d in decoders.items()}
    config = hf_dpt_config(decoders, vision.cfg)
    state = {}
    for key, value in vision.state_dict().items():
        key = re.sub(r"\.mlp\.fc1\.", ".mlp.c_fc.", key)
        key = re.sub(r"\.mlp\.fc2\.", ".mlp.c_proj.", key)
        state[f"vision_encoder.{key}"] = value.detach().float().cpu().contiguous()
    for task, decoder in decoders.items():
        head = HF_HEADS[task]
        for key, value in decoder.state_dict().items():
            state[f"{head}.{_ours_to_hf(key, head)}"] = value.detach().float().cpu().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(
        directory / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"})
    )
    atomic_write(
        directory / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n")
    )


# ---------------------------------------------------------------------------------------------------------
# open_tips' own file
# ---------------------------------------------------------------------------------------------------------


def save_dense_heads(
    path: str | os.PathLike, decoders: dict[str, DPTDecoder] | list[DPTDecoder], backbone: dict | None = None
) -> None:
    """One ``.safetensors`` with the decoders (keys ``{task}.{name}``), their configs and, when given, the
    backbone's identity (``open_tips.inference.dense_heads.backbone_identity``) in the metadata."""
    if isinstance(decoders, (list, tuple)):
        decoders = {d.task: d for d in decoders}
    state, configs = {}, {}
    for decoder in decoders.values():
        configs[decoder.task] = decoder.cfg.to_dict()
        for key, value in decoder.state_dict().items():
            state[f"{decoder.task}.{key}"] = value.detach().float().cpu().contiguous()
    metadata = {"format": OWN_FORMAT, "decoders": json.dumps(configs)}
    if backbone is not None:
        metadata["backbone"] = json.dumps(backbone)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_dense_heads_file(path: str | os.PathLike) -> tuple[dict[str, DPTDecoder], dict | None]:
    """({task: decoder}, backbone identity or None) from ``save_dense_heads``' file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err
    if metadata.get("format") != OWN_FORMAT or "decoders" not in metadata:
        raise CheckpointError(
            f"{path}: not an open_tips DPT file (metadata format is {metadata.get('format')!r})"
        )
    try:
        configs = json.loads(metadata["decoders"])
        backbone = json.loads(metadata["backbone"]) if "backbone" in metadata else None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: malformed metadata ({err})") from err
    decoders = {}
    for task, data in configs.items():
        try:
            cfg = DPTConfig.from_dict(data)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: bad config for the {task} decoder ({err})") from err
        decoder = DPTDecoder(cfg)
        prefix = f"{task}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        load_strict(decoder, state, f"{path} ({task})")
        decoders[cfg.task] = decoder.eval()
    stray = sorted(k for k in tensors if k.split(".", 1)[0] not in configs)
    if stray:
        raise CheckpointError(f"{path}: unexpected keys: {', '.join(stray)}")
    return decoders, backbone


def load_dense_heads(
    paths: str | os.PathLike | list[str | os.PathLike],
    tasks: list[str] | None = None,
    backbone_depth: int | None = None,
) -> dict[str, DPTDecoder]:
    """{task: decoder} from any mix of Scenic zips, HF ``Tipsv2Dpt*`` directories and open_tips files.
    ``backbone_depth`` gives the blocks of Scenic zips (which do not record them). With ``tasks``, only
    those decoders are kept and each must be found."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[str, DPTDecoder] = {}
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"decoder checkpoint not found: {path}")
        if path.is_dir():
            if not is_hf_dpt_dir(path):
                raise CheckpointError(
                    f"{path}: not an HF Tipsv2Dpt directory (config.json model_type tipsv2_dpt)"
                )
            decoders, _, _ = read_hf_dpt_dir(path)
        elif path.suffix.lower() == ".zip" or (path.suffix != ".safetensors" and zipfile.is_zipfile(path)):
            decoder = read_scenic_zip(path, backbone_depth=backbone_depth)
            decoders = {decoder.task: decoder}
        else:
            decoders, _ = read_dense_heads_file(path)
        for task, decoder in decoders.items():
            if task in found:
                raise CheckpointError(f"{path}: a second {task} decoder (one per task)")
            found[task] = decoder
    if tasks:
        wanted = [canonical_task(t) for t in tasks]
        missing = [t for t in wanted if t not in found]
        if missing:
            raise CheckpointError(
                f"no {', '.join(missing)} decoder in {', '.join(map(str, paths))} (found: {', '.join(found) or 'none'})"
            )
        found = {t: found[t] for t in wanted}
    return found


# ADE20K's 150 classes in the order of the released segmentation heads.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
assert len(ADE20K_CLASSES) == 150
