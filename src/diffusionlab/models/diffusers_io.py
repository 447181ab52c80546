"""diffusers folders in: a folder as diffusers' ``save_pretrained`` writes it, read as a model of
one of our processes (the ``[interop]`` extra).

A folder holds ``unet/`` (``UNet2DModel``, ``UNet2DConditionModel``) or ``transformer/``
(``DiTTransformer2DModel``) and ``scheduler/``; ``model_index.json`` is optional. Weights are
read from safetensors; pickled ``.bin`` weights only with ``trust_pickle`` (``--trust-pickle``:
unpickling runs code from the file). ``read_folder`` returns the parts ``models.loading``
builds its ``CheckpointRecord`` from, so ``load_denoiser`` / ``--ckpt`` take a diffusers folder
like a run folder.

``scheduler_process`` is the ONE mapping from a scheduler's config to our process (README
"diffusers in" has the table):

- DDPM-family schedulers (DDIM, DDPM, PNDM, Euler, Euler ancestral, Heun, LMS, KDPM2, DPM-Solver
  single / multistep, DEIS, UniPC) -> ``ddpm``: ``num_train_timesteps``, the betas
  (``linear`` / ``scaled_linear`` (= our ``quadratic``) / ``squaredcos_cap_v2`` (= our ``cosine``
  with diffusers' clamp) / ``sigmoid`` / ``trained_betas``), ``prediction_type`` (epsilon / sample
  / v_prediction = our eps / x0 / v), ``rescale_betas_zero_snr`` (zero terminal SNR); the grid
  from ``timestep_spacing`` (or ``use_karras_sigmas`` / ``use_exponential_sigmas``); the sampler
  from the scheduler class; ``clip_sample`` / ``thresholding`` as our clip / dynamic threshold.
- ``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler`` -> ``edm`` (sigma_min, sigma_max,
  sigma_data; c_noise = ln(sigma) / 4 in both).
- ``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler`` -> ``flow`` with its
  ``shift``; the network's timestep is 1000 t there and 999 t here (``timestep_scale``).
  Resolution-dependent shifting (``use_dynamic_shifting``, Flux) is refused. The grid ends where
  diffusers' ends (its endpoint is shifted twice: ``sigma_min`` is declared to match).
- Anything else (LCM / TCD's own boundary parameterisation, score-SDE VE, ...) is refused with
  the list of supported schedulers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.cond import CondSpec
from ..errors import UserError
from .checkpoint import CheckpointError
from .processes import DiffusionConfig

MODEL_FOLDERS = ("unet", "transformer")
SIDECAR = "diffusionlab.json"  # what `export --format diffusers` adds: class names, the null label, sampling defaults
DDPM_SAMPLERS = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "PNDMScheduler": "pndm",
                 "EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_ancestral",
                 "HeunDiscreteScheduler": "heun", "LMSDiscreteScheduler": "lms", "KDPM2DiscreteScheduler": "dpm_2",
                 "KDPM2AncestralDiscreteScheduler": "dpm_2_ancestral", "DPMSolverMultistepScheduler": "dpmpp_2m",
                 "DPMSolverSinglestepScheduler": "dpm_solver", "DEISMultistepScheduler": "deis",
                 "UniPCMultistepScheduler": "unipc"}
EDM_SAMPLERS = {"EDMEulerScheduler": "euler", "EDMDPMSolverMultistepScheduler": "dpmpp_2m"}
FLOW_SAMPLERS = {"FlowMatchEulerDiscreteScheduler": "euler", "FlowMatchHeunDiscreteScheduler": "heun"}
OBJECTIVES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# diffusers' beta_schedule -> (our schedule, the arguments that make it diffusers' one)
BETAS = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
FLOW_TIMESTEP_SCALE = 1000.0 / 999.0  # diffusers' flow pipelines feed 1000 t; our FlowPrecond 999 t


@dataclass(frozen=True)
class SchedulerMapping:
    """A scheduler's config as our process (``scheduler_process``): the ``DiffusionConfig``, the
    sampler and grid it implies, the factor from our noise label to its timestep, and its x0
    clipping (``none`` | ``clip`` | ``dynamic`` with ratio ``threshold_p``)."""

    diffusion: DiffusionConfig
    sampler: str
    schedule: str
    timestep_scale: float = 1.0
    threshold: str = "none"
    threshold_p: float = 0.995
    sigma_min: float | None = None  # declared over the process's own (flow: where diffusers' grid ends)


def _supported() -> str:
    return ", ".join([*DDPM_SAMPLERS, *EDM_SAMPLERS, *FLOW_SAMPLERS])


def scheduler_process(config: dict) -> SchedulerMapping:
    """The one mapping from a diffusers scheduler config (``scheduler_config.json`` as a dict,
    ``_class_name`` included) to our process (module docstring). Unsupported settings raise a
    ``UserError`` naming them."""
    name = config.get("_class_name")
    get = config.get
    if name in FLOW_SAMPLERS:
        if get("use_dynamic_shifting"):
            raise UserError(f"{name} with use_dynamic_shifting (resolution-dependent shift) has no fixed shift to map")
        if get("invert_sigmas") or get("shift_terminal"):
            raise UserError(f"{name}: invert_sigmas / shift_terminal are not supported")
        shift, a = float(get("shift", 1.0)), 1.0 / int(get("num_train_timesteps", 1000))
        # diffusers' grid runs linearly in t from 1 to its sigma_min - the *shifted* 1 / T - and then shifts
        # again; our 'flow' grid runs from 1 to u(sigma_min) = sigma_min / (shift + sigma_min) and shifts once,
        # so this sigma_min makes the two grids one
        m = shift * a / (1 + (shift - 1) * a)
        d = DiffusionConfig(process="flow", shift=shift)
        return SchedulerMapping(d, FLOW_SAMPLERS[name], "flow", FLOW_TIMESTEP_SCALE, sigma_min=shift * m / (1 - m))
    if name in EDM_SAMPLERS:
        if get("prediction_type", "epsilon") != "epsilon":
            raise UserError(f"{name}: prediction_type {get('prediction_type')!r} is not EDM's F-prediction")
        d = DiffusionConfig(process="edm", sigma_min=float(get("sigma_min", 0.002)), sigma_max=float(get("sigma_max", 80.0)),
                            sigma_data=float(get("sigma_data", 0.5)))
        return SchedulerMapping(d, EDM_SAMPLERS[name], "karras" if get("sigma_schedule", "karras") == "karras"
                                else "exponential")
    if name not in DDPM_SAMPLERS:
        raise UserError(f"scheduler {name!r} has no mapping to a diffusionlab process; supported: {_supported()}")
    return SchedulerMapping(_ddpm_config(config), _ddpm_sampler(config), _ddpm_grid(config),
                            threshold="dynamic" if get("thresholding") else "clip" if get("clip_sample") else "none",
                            threshold_p=float(get("dynamic_thresholding_ratio", 0.995)))


def _ddpm_config(config: dict) -> DiffusionConfig:
    get = config.get
    T = int(get("num_train_timesteps", 1000))
    pred = get("prediction_type", "epsilon")
    if pred not in OBJECTIVES:
        raise UserError(f"prediction_type {pred!r} is not one of {', '.join(OBJECTIVES)}")
    if get("trained_betas") is not None:
        schedule, kwargs = "given", {"betas": [float(b) for b in get("trained_betas")]}
    else:
        beta = get("beta_schedule", "linear")
        if beta not in BETAS:
            raise UserError(f"beta_schedule {beta!r} has no counterpart; supported: {', '.join(BETAS)}, trained_betas")
        schedule = BETAS[beta]
        kwargs = ({"max_beta": 0.999, "min_beta": 0.0} if beta == "squaredcos_cap_v2" else
                  {"beta_start": float(get("beta_start", 1e-4)), "beta_end": float(get("beta_end", 0.02))})
    return DiffusionConfig(process="ddpm", timesteps=T, objective=OBJECTIVES[pred], beta_schedule=schedule,
                           schedule_kwargs=kwargs, zero_terminal_snr=bool(get("rescale_betas_zero_snr", False)))


def _ddpm_sampler(config: dict) -> str:
    name = config["_class_name"]
    if name == "DPMSolverMultistepScheduler":
        sde = "sde" in str(config.get("algorithm_type", "dpmsolver++"))
        order = int(config.get("solver_order", 2))
        return {(False, 2): "dpmpp_2m", (False, 3): "dpmpp_3m", (True, 2): "dpmpp_2m_sde",
                (True, 3): "dpmpp_3m_sde"}.get((sde, order), "dpmpp_2m")
    return DDPM_SAMPLERS[name]


def _ddpm_grid(config: dict) -> str:
    if config.get("use_karras_sigmas"):
        return "karras"
    if config.get("use_exponential_sigmas"):
        return "exponential"
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing", "linspace"):
        raise UserError(f"timestep_spacing {spacing!r} is not one of leading, trailing, linspace")
    return spacing


def process_scheduler(d: DiffusionConfig, sampler: str | None = None) -> dict:
    """The inverse for export: a DDIM scheduler config (``_class_name`` included) whose process
    equals ``d`` (a ``ddpm`` process: the betas written out exactly as ``trained_betas`` before
    any zero-terminal-SNR rescale, which diffusers applies itself). Other processes are refused
    (README "diffusers out")."""
    from ..core.schedules import make_betas

    if d.process != "ddpm":
        raise UserError(f"a {d.process} model has no diffusers scheduler to export to (ddpm models do)", param="format")
    inverse = {v: k for k, v in OBJECTIVES.items()}
    if d.objective not in inverse:
        raise UserError(f"objective {d.objective!r} has no diffusers prediction_type", param="format")
    betas = make_betas(d.beta_schedule, d.timesteps, False, **(d.schedule_kwargs or {}))
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": int(d.timesteps),
            "trained_betas": [float(b) for b in betas], "beta_schedule": "linear", "prediction_type": inverse[d.objective],
            "rescale_betas_zero_snr": bool(d.zero_terminal_snr), "timestep_spacing": "trailing", "clip_sample": False,
            "set_alpha_to_one": True, "steps_offset": 0}


# ------------------------------------------------------------------ reading a folder
def is_diffusers_folder(path) -> bool:
    """A folder with ``scheduler/`` and ``unet/`` or ``transformer/`` (or ``model_index.json``)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return (p / "model_index.json").is_file() or (
        (p / "scheduler").is_dir() and any((p / m / "config.json").is_file() for m in MODEL_FOLDERS))


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"diffusers folder: {path} is missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"diffusers folder: {path} is not valid JSON: {e}") from e


def _model_folder(root: Path) -> Path:
    found = [root / m for m in MODEL_FOLDERS if (root / m / "config.json").is_file()]
    if len(found) != 1:
        raise CheckpointError(f"{root} needs exactly one of {', '.join(m + '/' for m in MODEL_FOLDERS)} with a "
                              f"config.json; found {len(found)}")
    return found[0]


def _weights_kind(folder: Path, trust_pickle: bool) -> bool:
    """True: safetensors; False: pickled .bin (allowed by ``trust_pickle``)."""
    names = [f.name for f in folder.iterdir()]
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return True
    if any(n.endswith(".bin") or n.endswith(".bin.index.json") for n in names):
        if not trust_pickle:
            raise CheckpointError(f"{folder} holds pickled .bin weights, refused without --trust-pickle: "
                                  "unpickling can run code from the file",
                                  hint="convert them to safetensors, or pass --trust-pickle if you trust the source")
        return False
    raise CheckpointError(f"{folder} holds no weights (diffusion_pytorch_model.safetensors)")


def _cond(kind: str, cfg: dict, side: dict):
    """(CondSpec, null label) of a diffusers model config (+ the export sidecar)."""
    if kind == "UNet2DConditionModel":
        dim = cfg.get("cross_attention_dim")
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        from ..nn.diffusers_net import EMBEDDINGS_ENCODER

        return CondSpec(kind="text", encoder=EMBEDDINGS_ENCODER, text_dim=int(dim)), None
    if kind == "DiTTransformer2DModel":
        n = cfg.get("num_embeds_ada_norm")
        if not n:
            return CondSpec(), None
        return CondSpec(kind="class", num_classes=int(n)), int(n)  # LabelEmbedding's extra row: the null class
    n = cfg.get("num_class_embeds")
    if cfg.get("class_embed_type") not in (None,) or not n:
        if cfg.get("class_embed_type") not in (None,):
            raise CheckpointError(f"UNet2DModel class_embed_type {cfg['class_embed_type']!r} is not supported")
        return CondSpec(), None
    if side.get("null_class") is not None:  # exported by diffusionlab: the last row is the learned null label
        names = side.get("class_names")
        return (CondSpec(kind="class", num_classes=int(side["num_classes"]), class_names=tuple(names) if names else None),
                int(side["null_class"]))
    return CondSpec(kind="class", num_classes=int(n)), None


def folder_config(path) -> dict:
    """A diffusers folder described like a run's config.json, from its JSON files only (nothing
    loaded): kind, network (arch "diffusers", the model class, channels, num_classes), diffusion
    (the mapped process), image_size, sampling, conditioning. What the page lists."""
    import dataclasses

    root = Path(path)
    folder = _model_folder(root)
    cfg = _json(folder / "config.json")
    mapping = scheduler_process(_json(root / "scheduler" / "scheduler_config.json"))
    side = _json(root / SIDECAR) if (root / SIDECAR).is_file() else {}
    kind = cfg.get("_class_name")
    cond, _ = _cond(kind, cfg, side)
    size = side.get("image_size") or cfg.get("sample_size")
    size = list(size) if isinstance(size, (list, tuple)) else [size, size] if size is not None else []
    record = {"kind": cond.kind, "class_names": list(cond.class_names) if cond.class_names else None,
              "encoder": cond.encoder} if cond.conditional else None
    return {"kind": "diffusers", "format": "diffusers", "step": side.get("step"),
            "network": {"arch": "diffusers", "config": {"class": kind, "channels": int(cfg.get("in_channels", 3)),
                                                        "num_classes": cond.num_classes}},
            "diffusion": dataclasses.asdict(mapping.diffusion), "image_size": size,
            "sampling": side.get("sampling") or {"sampler": mapping.sampler, "steps": None, "guidance": None},
            "conditioning": record, "train": {"data": side["data"]} if side.get("data") else {}}


def read_folder(path, device=None, trust_pickle: bool = False) -> dict:
    """The parts of a diffusers folder (module docstring): ``network`` (a ``DiffusersNetwork``,
    eval mode), ``process`` (``DiffusionConfig``), ``mapping`` (``SchedulerMapping``),
    ``image_shape``, ``cond``, ``sampling`` (the export sidecar's, else the scheduler's sampler)."""
    from ..nn.diffusers_net import MODEL_CLASSES, DiffusersNetwork, require_diffusers

    root = Path(path)
    diffusers = require_diffusers()
    folder = _model_folder(root)
    cfg = _json(folder / "config.json")
    kind = cfg.get("_class_name")
    if kind not in MODEL_CLASSES:
        raise CheckpointError(f"{folder}: model class {kind!r} is not supported; supported: {', '.join(MODEL_CLASSES)}")
    sched = _json(root / "scheduler" / "scheduler_config.json")
    mapping = scheduler_process(sched)
    side = _json(root / SIDECAR) if (root / SIDECAR).is_file() else {}
    cond, null_class = _cond(kind, cfg, side)
    safetensors = _weights_kind(folder, trust_pickle)
    try:  # a local folder: from_pretrained reads it where it is and fetches nothing
        model = getattr(diffusers, kind).from_pretrained(str(folder), use_safetensors=safetensors)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{folder}: diffusers could not load the model: {e}") from e
    net = DiffusersNetwork(model, cond, null_class, mapping.timestep_scale)
    size = side.get("image_size") or cfg.get("sample_size")
    if size is None:
        raise CheckpointError(f"{folder}/config.json has no sample_size: the image size is unknown")
    hw = tuple(int(s) for s in size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    sampling = side.get("sampling") or {"sampler": mapping.sampler, "steps": None, "guidance": None}
    from .processes import fill

    image_shape = (net.channels, *hw)
    return {"network": net.to(device or "cpu").eval(), "process": fill(mapping.diffusion, image_shape),
            "mapping": mapping, "image_shape": image_shape, "cond": cond, "sampling": sampling,
            "schedule": mapping.schedule, "path": str(root)}
