"""Which registry config a checkpoint's geometry is: released models are recognised by their shapes (and, when
several share them, by a file / folder / repo name hint), which gives their name, temperature and resolution."""

from __future__ import annotations

from open_tips.models.configs import TextConfig, TIPSConfig, VisionConfig, get_config, list_configs


def _geometry(vision: VisionConfig, text: TextConfig | None) -> tuple:
    v = (vision.width, vision.depth, vision.mlp_hidden, vision.swiglu, vision.pos_grid, vision.patch_size)
    t = None if text is None else (text.width, text.depth, text.mlp_hidden, text.vocab_size)
    return v, t


def _stem_name(name: str) -> str:
    for suffix in ("_vision.npz", "_text.npz", ".npz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def identify(vision: VisionConfig, text: TextConfig | None, hint: str | None = None) -> list[TIPSConfig]:
    """Registry configs with this geometry (text compared only when given). A ``hint`` (file stem, folder or
    repo name, e.g. ``tips_oss_g14_lowres`` or ``tipsv2-b14``) that names a matching config selects it alone."""
    wanted_v, wanted_t = _geometry(vision, text)

    def matches(cfg: TIPSConfig) -> bool:
        v, t = _geometry(cfg.vision, cfg.text)
        return v == wanted_v and (wanted_t is None or t == wanted_t)

    if hint:
        try:
            named = get_config(_stem_name(hint))
        except KeyError:
            named = None
        if named is not None and matches(named):
            return [named]
    return [cfg for name in list_configs() if matches(cfg := get_config(name))]


def inferred_image_size(cfg: TIPSConfig, hint: str | None = None) -> int:
    """The training resolution that loading weights of this geometry (and file name) would assume: the
    identified released model's (TIPS v1 HR 448, g14-lr 224, TIPSv2 448), else the stored position grid
    (at least 224 px)."""
    sizes = {c.image_size for c in identify(cfg.vision, cfg.text, hint)}
    if len(sizes) == 1:
        return sizes.pop()
    return max(cfg.vision.pos_grid * cfg.vision.patch_size, 224)


__all__ = ["identify", "inferred_image_size"]
