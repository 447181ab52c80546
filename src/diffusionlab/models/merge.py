"""``diffusionlab lora merge``: LoRA adapters (``models.lora``) folded into their base's weights
and written as an ordinary checkpoint (``models.checkpoint``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .checkpoint import content_hash
from .lora import LoraRef, base_reference


def merge_checkpoint(base, loras, out, scale: float = 1.0, force: bool = False, overwrite: bool = False) -> Path:
    """``diffusionlab lora merge``: the base with adapters ``loras`` folded into its weights
    (peft ``merge_and_unload``), written as an ordinary checkpoint at ``out`` (a run folder): the
    merged EMA weights as both weight sets, the base's config with a ``merged`` record (base,
    its hash, the adapters and weights), the base's autoguidance snapshot unchanged. Its samples
    equal the unmerged model's up to float rounding (tests: 1e-5 relative)."""
    from .checkpoint import load_checkpoint, read_config, run_has_checkpoints, save_checkpoint
    from .loading import adapt, read_checkpoint

    out = Path(out)
    if run_has_checkpoints(out) and not overwrite:
        raise UserError(f"{out} already holds a checkpoint; nothing was written", param="out",
                        hint="choose another --out, or --overwrite")
    rec = read_checkpoint(base)
    if Path(rec.provenance.path).resolve().is_relative_to(out.resolve()):
        raise UserError("the merged checkpoint would replace its base: choose another --out", param="out")
    adapters = adapt(rec, loras, scale, force)
    net = adapters.merged_network() if adapters is not None else rec.network
    cfg = read_config(rec.provenance.path)
    config = {k: v for k, v in cfg.items() if k not in ("format_version", "step", "migrated_from")}
    if cfg.get("latent") and not Path(cfg["latent"]["autoencoder"]).is_absolute():
        from .loading import latent_codec

        codec_path = Path(latent_codec(rec).path).resolve()
        config["latent"] = {**cfg["latent"], "autoencoder": base_reference(codec_path, out), "embedded": False}
    config["merged"] = {"base": str(Path(rec.provenance.path).resolve()), "base_sha256": content_hash(rec.provenance.path),
                        "loras": [{"path": str(Path(r.path).resolve()), "weight": r.weight * scale}
                                  for r in map(LoraRef.of, loras)]}
    guide = load_checkpoint(rec.provenance.path)["guide"]
    return save_checkpoint(out, int(cfg.get("step") or 0), model=net, ema_model=net, config=config, keep=1,
                           guide=guide)
