"""One readable training loop for every model of the library: the diffusion models, the
noise-aware classifier of classifier guidance (``TrainConfig.classifier``; training.classifier),
latent diffusion's KL autoencoder (``TrainConfig.autoencoder``; training.autoencoder) and the
fine-tuning of a trained model, LoRA adapters or all weights (``TrainConfig.finetune``;
training.finetune).

The loop: draw a batch (a fixed-seed permutation per epoch), compute the loss (the diffusion
model's, or any ``core.losses.TrainingLoss``: a classifier's is ``NoisyClassifierLoss``) under
autocast, accumulate gradients, clip, AdamW step with warm-up + cosine learning rate, update
the EMA. ``batch_size`` is the global batch of one step; it is split into ``grad_accum``
micro-batches and, under a launcher (torchrun, accelerate: ``core.distributed``), over the
processes, each of which trains a DistributedDataParallel copy on its contiguous share. Every
draw of a sample is keyed by its index in the global batch, so N processes with any accumulation
make the update of one process (float tolerance). Only rank 0 prints and writes files.

Around the loop: validation loss, sample grids and sample-quality evaluation (diffusion
models only), metrics.jsonl, atomic checkpoints, exact resume. Ctrl-C (SIGINT) requests a stop:
the loop finishes the optimizer step it is in, checkpoints, and returns; a second Ctrl-C aborts
at once. Checkpoints are therefore always at an optimizer-step boundary (the position inside
gradient accumulation is 0), and the data order is a pure function of (seed, step), so a
resumed run continues exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..core import distributed, faults
from ..core.cond import Batch
from ..core.devices import cpu_info, pick_device, pick_precision, set_threads
from ..core.rng import per_sample_generators, randn, stream_seed
from ..core.sampling import sampling_defaults
from ..data.folder import random_hflip
from ..errors import Terminated, UserError
from ..models.checkpoint import (CheckpointError, find_checkpoint, load_checkpoint, read_config, save_checkpoint,
                                 write_json_atomic)
from ..models.diffusion import GaussianDiffusion
from ..models.loading import checkpoint_config
from .autoencoder_loss import AutoencoderLoss, autoencoder_run, checkpoint_record as autoencoder_record
from .classifier_loss import NoisyClassifierLoss, checkpoint_record as classifier_record, classifier_run
from .conditioning import condition_source
from .config import TrainConfig, check_ranges
from .ema import EMA
from .tensorboard import LOG_TARGETS, TensorBoardLog
from .setup import SEED_TRAINER_KWARGS, RunExistsError, build_diffusion, git_commit, initial_network, package_versions, run_config  # noqa: F401 (RunExistsError re-exported)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


NAN_SKIP_LIMIT = (5, 100)  # on_nan "skip": more than 5 skipped steps within 100 is divergence, not a bad batch
ON_NAN = ("skip", "stop")
ON_WRITE_ERROR = ("stop", "continue")


class WriteFailed(UserError):
    """A file of the run could not be written (disk full, read-only, no permission): exit 2,
    naming the file; the last complete checkpoint is intact."""


class PeerLost(UserError):
    """Another process of a multi-process run died or stopped answering (exit 2, not a bug)."""


def check_batch(cfg: TrainConfig, world) -> None:
    """The global batch must split evenly into processes x micro-batches (refused, exit 2)."""
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise UserError(f"batch size and gradient accumulation must be at least 1, got {cfg.batch_size} and "
                        f"{cfg.grad_accum}", param="batch_size")
    parts = world.size * cfg.grad_accum
    if cfg.batch_size % parts:
        raise UserError(f"the global batch {cfg.batch_size} does not split into {world.size} process(es) x "
                        f"{cfg.grad_accum} micro-batch(es); use a multiple of {parts}", param="batch_size")


class _StepModule(torch.nn.Module):
    """The network with a loss as its forward: what DistributedDataParallel wraps, so that a
    loss that calls other methods of the network (an autoencoder's encode / decode) still runs
    inside DDP's forward. The loss is an argument, not a submodule (its frozen teacher or
    reference is not the trained model's)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, batch: Batch, generator, autocast, loss_fn):
        return loss_fn(self.net, batch, generator=generator, autocast=autocast)


def _refuse_batchnorm(net: torch.nn.Module) -> None:
    """BatchNorm mixes the samples of a process's share, so N processes would not equal one."""
    bad = [name for name, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bad:
        raise UserError(f"the network has BatchNorm layers ({', '.join(bad[:3])}); multi-process training needs "
                        "GroupNorm / LayerNorm so that N processes make the update of one")


def lr_at(step: int, cfg: TrainConfig, planned: int | None) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to min_lr_ratio * lr over the planned steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant" or not planned:
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, planned - cfg.warmup_steps))
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * frac))


class Trainer:
    """``Trainer(config=TrainConfig(...))`` builds everything from the config (the CLI path).
    ``Trainer(diffusion, 'path/to/images', train_batch_size=32, train_lr=2e-5, train_num_steps=...,
    gradient_accumulate_every=2, ema_decay=0.995, amp=True)`` is the seed tutorials' form."""

    def __init__(self, diffusion: GaussianDiffusion | None = None, folder: str | None = None,
                 config: TrainConfig | None = None, *, train_batch_size=None, train_lr=None,
                 train_num_steps=None, gradient_accumulate_every=None, ema_decay=None, amp=None,
                 results_folder=None, save_and_sample_every=None, num_samples=None,
                 augment_horizontal_flip=None, calculate_fid=False, resume: bool = False,
                 overwrite: bool = False, strict_resume: bool = False, loss=None, clock=None, **overrides):
        seed_kw = {SEED_TRAINER_KWARGS[k]: v for k, v in dict(
            train_batch_size=train_batch_size, train_lr=train_lr, train_num_steps=train_num_steps,
            gradient_accumulate_every=gradient_accumulate_every, ema_decay=ema_decay, results_folder=results_folder,
            num_samples=num_samples, augment_horizontal_flip=augment_horizontal_flip).items() if v is not None}
        if train_batch_size is not None and gradient_accumulate_every:  # the seeds' batch is a micro-batch
            seed_kw["batch_size"] = train_batch_size * gradient_accumulate_every
        if save_and_sample_every is not None:
            seed_kw.update(sample_every=save_and_sample_every, checkpoint_every=save_and_sample_every)
        if amp is not None:
            seed_kw["precision"] = "auto" if amp else "fp32"
        config, self.resume_from = run_config(diffusion, folder, config, {**seed_kw, **overrides}, resume, overwrite,
                                              strict_resume)
        check_ranges(config)  # every number in its range, before anything is loaded or written
        if config.finetune is not None:  # a fine-tuning run: its base, checked before anything is loaded
            from .finetune import check_base_unchanged, check_finetune

            if diffusion is not None:
                raise UserError("a fine-tuning run builds its network from its base: pass no diffusion model")
            check_finetune(config)
            if config.dpo is not None:
                from .dpo import check_dpo

                check_dpo(config)
            if self.resume_from is not None:
                check_base_unchanged(config)
        self.overwrite = overwrite and not resume
        self.clock = clock or time.perf_counter  # injectable: tests run the time budget on a fake clock
        # what the run trains, checked before anything is loaded: a diffusion model, a noise-aware
        # classifier or an autoencoder (the latter two: no grids or sample-quality evaluation)
        self.task = "classifier" if classifier_run(config) else "autoencoder" if autoencoder_run(config) else "diffusion"
        self.is_classifier = self.task == "classifier"
        if self.task != "diffusion":
            if diffusion is not None:
                raise UserError(f"a {self.task} run builds its network from the config: pass no diffusion model")
            config = dataclasses.replace(config, sample_every=0, eval_every=0,
                                         val_every=0 if self.is_classifier else config.val_every)
        self.cfg = cfg = config
        self.out = Path(cfg.out_dir)
        self.threads = set_threads(cfg.num_threads)
        self.device = pick_device(cfg.device)
        self.world = distributed.init(self.device.type)  # a world of one without a launcher
        if self.world.size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        check_batch(cfg, self.world)
        self.amp_dtype = pick_precision(cfg.precision, self.device)
        from ..data.datasets import load_image_sets

        self.resume_sha256 = (read_config(self.resume_from).get("latent") or {}).get("sha256") \
            if self.resume_from is not None else None
        self.codec = self._latent_codec(cfg)  # latent diffusion: the autoencoder (None: pixel space)
        cfg = self.cfg
        pixel_channels = self.codec.pixel_shape[0] if self.codec is not None else cfg.model.channels
        if cfg.dpo is not None:  # preference pairs: chosen and rejected on the channel axis (training.dpo)
            from .dpo import pair_sets

            train_set, val_set = pair_sets(cfg, pixel_channels)
        else:
            train_set, val_set = load_image_sets(cfg.data, cfg.image_size, pixel_channels, cfg.val_fraction,
                                                 cfg.seed, cfg.digits, image_column=cfg.image_column,
                                                 label_column=cfg.label_column, caption_column=cfg.caption_column)
        self.train_data, self.val_data = train_set.images, val_set.images
        self.train_pixels, self.val_pixels, self.train_std = self.train_data, self.val_data, None  # pixels (floors)
        if self.codec is not None:
            self._encode_data(val_set)
        if not 0.0 <= cfg.p_uncond <= 1.0:
            raise UserError(f"p_uncond is a probability, got {cfg.p_uncond}")
        # a class-conditional network, or a classifier: the data's labels
        num_classes = getattr(cfg.model, "num_classes", None)  # an autoencoder's config has none
        kind = "class" if self.is_classifier or cfg.cond == "none" and num_classes else cfg.cond
        self.conditioning = condition_source(kind, train_set, val_set.subset(range(min(cfg.n_val, len(val_set)))),
                                             cfg.data, self.device, text_encoder=cfg.text_encoder,
                                             num_classes=None if self.is_classifier else num_classes,
                                             task=cfg.task, lowres=cfg.lowres,
                                             image_size=cfg.image_size)
        if diffusion is None and cfg.finetune is None:  # the network's condition settings fit the data
            settings = self.conditioning.model_settings()
            if self.is_classifier:  # a classifier's config names its classes
                settings["class_names"] = tuple(self.conditioning.names) if self.conditioning.names else None
            cfg = self.cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **settings))
        if len(self.train_data) < cfg.batch_size:
            what = "preference pairs" if cfg.dpo is not None else "images"
            raise UserError(f"only {len(self.train_data)} training {what} for batch size {cfg.batch_size}",
                            param="batch_size")
        self._setup_model(diffusion, loss)
        if cfg.guide_at is not None and not 0.0 < cfg.guide_at < 1.0:
            raise UserError(f"guide_at is a fraction of the training, in (0, 1); got {cfg.guide_at}")
        self.guide_sd, self.guide_step = None, None
        self.step, self.elapsed, self.planned, self._saved_step = 0, 0.0, cfg.max_steps, None
        self._extractor, self._floor_needed = None, True
        self._stop, self._window_stats = False, {}
        self._rng_state = None  # torch's CPU RNG state of the run: set while it trains, the caller's kept
        self.skipped: list[int] = []  # steps skipped for a non-finite loss or gradient (on_nan "skip")
        self.write_errors, self._write_warned = 0, set()
        self._tb = None  # --log tensorboard: training.tensorboard.TensorBoardLog while train() runs
        if cfg.on_nan not in ON_NAN:
            raise UserError(f"on_nan is one of {', '.join(ON_NAN)}, got {cfg.on_nan!r}", param="on_nan")
        if cfg.log_to not in LOG_TARGETS:
            raise UserError(f"log_to is one of {', '.join(LOG_TARGETS)}, got {cfg.log_to!r}", param="log_to")
        if cfg.on_write_error not in ON_WRITE_ERROR:
            raise UserError(f"on_write_error is one of {', '.join(ON_WRITE_ERROR)}, got {cfg.on_write_error!r}",
                            param="on_write_error")
        if self.resume_from is not None:
            self._restore(load_checkpoint(self.resume_from))
        else:  # what still draws from torch's global RNG (dropout masks) starts from the run's seed too
            self._rng_state = torch.Generator().manual_seed(stream_seed(cfg.seed, "global")).get_state()

    def _latent_codec(self, cfg: TrainConfig):
        """The autoencoder of a latent run (``TrainConfig.latent``), checked against the run: a
        diffusion model on pixels' latents, no flips (the latents are encoded once), no image
        condition; the network takes the latent channels (set here)."""
        if cfg.latent is None:
            return None
        if self.task != "diffusion":
            raise UserError(f"a {self.task} run trains on pixels, not on an autoencoder's latents", param="latent")
        if cfg.hflip:
            raise UserError("latents are encoded once: random flips do not apply (hflip)", param="hflip")
        if cfg.cond == "image":
            raise UserError("image conditioning (super-resolution) works on pixels, not latents", param="cond")
        from ..models.latent import load_autoencoder

        codec = load_autoencoder(cfg.latent)
        if codec.pixel_shape[1] != cfg.image_size:
            raise UserError(f"the autoencoder was trained on {codec.pixel_shape[1]} px images, the data is "
                            f"{cfg.image_size} px", param="latent")
        recorded = getattr(self, "resume_sha256", None)
        if recorded and recorded != codec.sha256:
            raise CheckpointError(f"the autoencoder at {cfg.latent} changed since this run started (sha256 "
                                  f"{recorded[:12]} then, {codec.sha256[:12]} now)")
        model = self._fit_latent_network(dataclasses.replace(cfg.model, channels=codec.latent_shape[0]),
                                         codec.latent_shape[-1])
        self.cfg = dataclasses.replace(cfg, model=model)
        return codec

    def _fit_latent_network(self, model, side: int):
        """The network's defaults fitted to the latent grid: a U-Net whose levels and patches do
        not divide the latent side (f = 8 gives 4x4 latents, which the demo U-Net's 2x2 patches and
        three levels cannot downsample) runs with patch 1, then with fewer levels, until they do;
        a DiT's patch shrinks to a divisor. Said on stderr and recorded in the checkpoint."""
        was = model
        if self.cfg.arch == "unet":
            while side % (2 ** (len(model.dim_mults) - 1) * model.patch_size):
                model = dataclasses.replace(model, patch_size=1) if model.patch_size > 1 else \
                    dataclasses.replace(model, dim_mults=tuple(model.dim_mults[:-1]),
                                        **{k: getattr(model, k)[:-1] for k in ("full_attn", "linear_attn")
                                           if isinstance(getattr(model, k), (tuple, list))})
                if len(model.dim_mults) < 1:
                    raise UserError(f"no U-Net fits a {side}x{side} latent grid", param="latent")
        elif getattr(model, "patch_size", 1) and side % model.patch_size:
            p = model.patch_size
            while side % p:
                p //= 2
            model = dataclasses.replace(model, patch_size=max(1, p))
        if model != was:
            changed = {k: getattr(model, k) for k in ("patch_size", "dim_mults") if getattr(model, k, None) !=
                       getattr(was, k, None)}
            print(f"latent grid {side}x{side}: the network runs with {changed}", file=sys.stderr)
        return model

    def _encode_data(self, val_set) -> None:
        """Latent runs: the training and held-out images as scaled posteriors, encoded once and
        cached (``training.latent_data``); the trainer draws z = mean + std n per sample."""
        from .latent_data import encoded_sets

        cfg = self.cfg
        parts = {"data": cfg.data, "image_size": cfg.image_size, "channels": self.codec.pixel_shape[0],
                 "val_fraction": cfg.val_fraction, "seed": cfg.seed}
        if cfg.digits is not None:
            parts["digits"] = list(cfg.digits)
        if cfg.dpo is not None:  # the pairs' content, not only their folder
            from ..data.pairs import PAIRS_FILE
            from ..models.checkpoint import file_sha256

            parts["pairs_sha256"] = file_sha256(Path(cfg.data) / PAIRS_FILE)
        sets = encoded_sets(self.codec, self.train_data, self.val_data, parts)
        self.train_data, self.train_std, self.val_data = sets["train_mean"], sets["train_std"], sets["val_mean"]

    @property
    def model_shape(self) -> tuple:
        """(C, H, W) of what the network models: the image, or a latent run's latent."""
        if self.codec is not None:
            return tuple(self.codec.latent_shape)
        return (self.cfg.model.channels, self.cfg.image_size, self.cfg.image_size)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as pixels: decoded by a latent run's autoencoder."""
        return x if self.codec is None else self.codec.decode(x.float().cpu()).clamp(-1, 1)

    def _setup_model(self, diffusion, loss) -> None:
        """The network (a diffusion model's, or a classifier), its device and memory format, the
        optimizer, the EMA and the loss."""
        cfg = self.cfg
        if self.task != "diffusion":  # not a diffusion model: the network and its loss
            self.diffusion, net = None, initial_network(cfg)
            if loss is None:
                loss = NoisyClassifierLoss.from_config(cfg.classifier) if self.is_classifier else \
                    AutoencoderLoss.from_config(cfg.autoencoder)
        else:
            base = None
            if cfg.finetune is not None:  # start from the base's EMA weights
                from .finetune import base_network

                base = base_network(cfg)
                if cfg.distill is not None:  # a distilled student may add a guidance-scale input
                    from .distill import student_network

                    base = student_network(cfg, base)
            self.diffusion = diffusion if diffusion is not None else build_diffusion(cfg, self.model_shape[-1], base)
            net = self.diffusion.model
        self.adapters = None
        if cfg.finetune is not None and not cfg.finetune.full:  # LoRA: only the adapters train
            from ..models.lora import attach_new

            ft = cfg.finetune
            self.adapters = attach_new(net, ft.rank, ft.alpha, ft.targets, cfg.seed)
        self.channels_last = self.device.type == "cpu"
        if cfg.dpo is not None:  # Diffusion-DPO against the frozen base (training.dpo)
            from .dpo import dpo_loss

            loss = dpo_loss(cfg, self.diffusion.loss_fn, self.adapters, self.device, self.channels_last)
        if cfg.distill is not None:  # consistency / progressive distillation or consistency training (core.distill)
            from .distill import distill_loss

            loss = distill_loss(cfg, self.diffusion, self.device)
        side = getattr(net, "size_multiple", 1)
        if self.model_shape[-1] % side or self.model_shape[-2] % side:
            raise UserError(f"the network needs an image side divisible by {side}, got {self.model_shape[-1]}"
                            f"{' (the latent side)' if self.codec is not None else ''}; change the image size, "
                            "the levels (--dim-mults) or the patch size", param="image_size")
        self.model = net.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.train_data = self.train_data.to(self.device)
        if self.train_std is not None:
            self.train_std = self.train_std.to(self.device)
        self.val_data = self.val_data[: cfg.n_val].to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # a LoRA run: the adapters
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        # fp16: the gradient scaler (an overflowing step is skipped and the scale lowered), on any device
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_power)
        self.loss_fn = loss if loss is not None else self.diffusion.loss_fn  # a losses.TrainingLoss
        self._setup_execution()

    def _setup_execution(self) -> None:
        """How the step runs: gradient checkpointing, torch.compile, and DistributedDataParallel
        (NCCL / gloo from the launcher's environment) over ``_StepModule`` in a world of several."""
        cfg = self.cfg
        if cfg.grad_checkpoint:
            from ..core.protocol import Network

            if not isinstance(self.model, Network):
                raise UserError(f"--grad-checkpoint needs a library network (nn.NETWORKS), not "
                                f"{type(self.model).__name__}", param="grad_checkpoint")
            self.model.grad_checkpoint = True
        if cfg.compile:  # in place: state_dict keys stay the network's own
            self.model.compile()
        self.step_module, self.ddp = _StepModule(self.model), None
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            _refuse_batchnorm(self.model)
            ids = [self.world.local_rank] if self.device.type == "cuda" else None
            # the buffers are equal on every rank (seeded init, the same checkpoint): no sync per forward
            known = inspect.signature(DistributedDataParallel).parameters
            sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in known else {"broadcast_buffers": False}
            self.ddp = DistributedDataParallel(self.step_module, device_ids=ids, **sync)

    # ------------------------------------------------------------------ pieces of the loop
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def share(self, micro: int) -> tuple[int, range]:
        """(step, this process's indices in the step's global batch) of micro-batch ``micro``
        (= step x grad_accum + k): micro-batch k is the k-th contiguous slice of the global batch
        and each rank takes its contiguous part of that slice."""
        cfg = self.cfg
        step, k = divmod(micro, cfg.grad_accum)
        per_micro = cfg.batch_size // cfg.grad_accum
        per_rank = per_micro // self.world.size
        start = k * per_micro + self.world.rank * per_rank
        return step, range(start, start + per_rank)

    def generators(self, micro: int, purpose: str) -> list:
        """One generator per sample of micro-batch ``micro`` on this process, keyed by (seed,
        "train", step, ``purpose``, index in the global batch) (``rng.per_sample_generators``)."""
        step, idx = self.share(micro)
        return per_sample_generators(self.cfg.seed, idx, "train", step, purpose)

    def batch(self, micro: int) -> Batch:
        """This process's part of micro-batch ``micro``: a pure function of (seed, micro, rank,
        world size). The data order is one seeded permutation per epoch of global batches (the
        last partial batch of an epoch is dropped; labels follow their images); every per-sample
        draw - flips and caption phrasings here ("data"), conditioning dropout, sigma / t and
        noise in ``train_step`` ("loss") - comes from the stream of its sample's index in the
        global batch (``generators``), so N processes with any accumulation draw exactly what
        one process draws."""
        n, b = len(self.train_data), self.cfg.batch_size
        step, share = self.share(micro)
        epoch, pos = divmod(step, n // b)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(self.cfg.seed, "order", epoch)))
        idx = perm[pos * b + share.start:pos * b + share.stop].to(self.device)
        gens = self.generators(micro, "data")
        x = self.train_data[idx]
        if self.train_std is not None:  # a latent run: a fresh draw from each image's posterior
            x = x + self.train_std[idx] * randn(tuple(x.shape), gens, x.device, x.dtype)
        if self.cfg.hflip:
            x = random_hflip(x, gens)
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return Batch(x, self.conditioning.train(idx, gens, x))

    def train_step(self) -> tuple[float, float]:
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, cfg, self.planned)
        total = 0.0
        if hasattr(self.loss_fn, "at_step"):  # a loss with a schedule over steps (core.distill's stages)
            self.loss_fn.at_step(self.step)
        for k in range(cfg.grad_accum):
            micro = self.step * cfg.grad_accum + k
            batch, gens = self.batch(micro), self.generators(micro, "loss")
            if cfg.p_uncond:  # conditioning dropout: the null condition learns the unconditional model
                batch = Batch(batch.x, batch.cond.drop(cfg.p_uncond, gens))
            last = k == cfg.grad_accum - 1  # DDP: gradients are all-reduced on the last micro-batch only
            with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                run = self.ddp or self.step_module
                loss = run(batch, gens, self.autocast(), self.loss_fn).mean() / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
            for name, v in self.loss_stats().items():  # averaged over the steps of the log window
                self._window_stats.setdefault(name, []).append(v)
        if self.world.size > 1:  # the global batch's loss, the same on every rank (so is the verdict below)
            total = sum(distributed.gather_objects(total)) / self.world.size
        if self.scaler:
            self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip or float("inf")).item()
        bad = None if math.isfinite(total) else f"loss {total}"
        if bad is None and self.scaler is None and not math.isfinite(gnorm):  # fp16: the grad scaler's to skip
            bad = f"gradient norm {gnorm}"
        if bad is not None:
            return self._skip_step(bad, total, gnorm)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        return total, gnorm

    def _skip_step(self, bad: str, total: float, gnorm: float) -> tuple[float, float]:
        """A non-finite loss or gradient norm, found on the step it happens: with on_nan "stop",
        or past ``NAN_SKIP_LIMIT``, stop (TrainingDiverged, the last good checkpoint kept); with
        "skip", drop this step's gradients (no optimizer or EMA update: the weights stay as they
        were), count it in metrics.jsonl and go on with the next batch (the step counter moves, so
        the data order and a resume stay those of an uninterrupted run)."""
        self.opt.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.update()  # an overflow lowers the scale, as after a step the scaler skipped
        limit, window = NAN_SKIP_LIMIT
        recent = [s for s in self.skipped if s > self.step - window]
        if self.cfg.on_nan == "stop" or len(recent) >= limit:
            why = "" if self.cfg.on_nan == "stop" else f" ({len(recent) + 1} non-finite steps within {window})"
            raise TrainingDiverged(
                f"{bad} at step {self.step}{why}; stopping. The last good checkpoint is "
                f"{self._latest_name()}. Try a lower learning rate, fp32 precision, or gradient clipping.")
        self.skipped.append(self.step)
        print(f"warning: {bad} at step {self.step}: step skipped ({len(self.skipped)} so far; --on-nan stop "
              "stops instead)", file=sys.stderr)
        self.step += 1
        self.log({"step": self.step, "skipped_step": self.step - 1, "reason": bad, "skipped_steps": len(self.skipped)})
        return float("nan"), gnorm

    def _write(self, what: str, fn, *args, **kw):
        """``fn(*args, **kw)``, a write of the run's files (``what``: which): a failed write (disk
        full, read-only, no permission) stops the run with one line naming the file
        (``WriteFailed``, exit 2) or, with on_write_error "continue", warns once per kind of file
        and goes on without it. Returns fn's result, or None when the write failed."""
        from safetensors import SafetensorError

        try:
            return fn(*args, **kw)
        except (OSError, SafetensorError) as e:
            where = getattr(e, "filename", None) or what
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if self.cfg.on_write_error == "continue":
                self.write_errors += 1
                if what not in self._write_warned:
                    self._write_warned.add(what)
                    print(f"warning: could not write {where} ({reason}); training goes on without it "
                          "(--on-write-error continue)", file=sys.stderr)
                return None
            raise WriteFailed(f"could not write {where}: {reason}. The last complete checkpoint is "
                              f"{self._latest_name()}, intact",
                              hint="free disk space or fix the folder's permissions, then --resume; or "
                                   "--on-write-error continue to train on without the file") from e

    @torch.no_grad()
    def validation(self, model) -> dict:
        """The validation loss of ``model`` on the held-out data (the same draws at every
        evaluation), with the means of what the loss reports of each sample (``loss_stats``)."""
        was = model.training
        model.eval()
        losses, stats = [torch.empty(0)], {}
        mine = distributed.shard(len(self.val_data), self.world)  # each rank its share, gathered below
        for start in range(mine.start, mine.stop, 128):
            stop = min(mine.stop, start + 128)
            chunk = self.val_data[start:stop]
            x = chunk.contiguous(memory_format=torch.channels_last) if self.channels_last else chunk
            cond = self.conditioning.val(start, stop, chunk)
            gens = per_sample_generators(12345, range(start, stop), "val")  # the same draws at every evaluation
            losses.append(self.loss_fn(model, Batch(x, cond), generator=gens, autocast=self.autocast(),
                                       train=False).detach().float().cpu())
            for k, v in self.loss_stats().items():
                stats.setdefault(k, []).append(v)
        model.train(was)
        names = sorted(set().union(*distributed.gather_objects(sorted(stats))))  # a rank with no share has none
        out = {"loss": distributed.gather_cat(torch.cat(losses)).mean().item()}
        for k in names:
            out[k] = distributed.gather_cat(torch.cat(stats.get(k, [torch.empty(0)]))).mean().item()
        return out

    def loss_stats(self) -> dict:
        """What the loss object reports of each sample of its last call (``stats``: name -> [B]
        tensor; e.g. DPO's implicit reward accuracy and margin); empty for most losses."""
        return {k: v.detach().float().flatten().cpu() for k, v in (getattr(self.loss_fn, "stats", None) or {}).items()}

    def _log_validation(self) -> None:
        """One metrics.jsonl record: ``val_<name>`` of the trained weights and ``val_<name>_ema``
        of the EMA weights, for the loss and each statistic the loss reports."""
        rec = {"step": self.step}
        for suffix, model in (("", self.model), ("_ema", self.ema.model)):
            rec.update({f"val_{k}{suffix}": v for k, v in self.validation(model).items()})
        self.log(rec)

    def ema_denoiser(self):
        return self.diffusion.denoiser_for(self.ema.model, autocast_dtype=self.amp_dtype)

    def sampling_choice(self, steps: int | None = None):
        """The sampler, steps and guidance of grids, evaluations and the checkpoint's record
        (``core.sampling.sampling_defaults`` on the config's values); steps at most a discrete
        model's T. The seed API's own ``sample()`` defaults (DDPM over all T) are not a run's
        record: a run records the process's own sampler, else the measured default of its kind."""
        den, cfg = self.ema_denoiser(), self.cfg
        own = dataclasses.replace(den.info, default_sampler=den.default_sampler, default_steps=den.default_steps)
        choice = sampling_defaults(own, cfg.sample_sampler, steps or cfg.sample_steps, cfg.guidance)
        table = den.info.table_sigmas
        return dataclasses.replace(choice, steps=min(choice.steps, len(table))) if table is not None else choice

    def save_grid(self, name: str) -> Path:
        from ..core.sampling import sample
        from ..evaluation.viz import save_grid

        cfg, choice = self.cfg, self.sampling_choice()
        path = self.out / "samples" / f"{name}.png"
        if not self.world.main:  # a small grid: rank 0 alone (the others wait at the next step's all-reduce)
            return path
        gens = per_sample_generators(cfg.seed, range(cfg.n_grid))
        x = sample(self.ema_denoiser(), (cfg.n_grid, *self.model_shape),
                   sampler=choice.sampler, steps=choice.steps, generator=gens, device=self.device,
                   cond=self.sampling_cond(cfg.n_grid))
        self._write("sample grid", save_grid, self.to_pixels(x.float().cpu()), path,
                    nrow=int(math.ceil(math.sqrt(cfg.n_grid))), upscale=2)
        if self._tb is not None and path.exists():
            self._write("tensorboard", self._tb.image, "samples", path, self.step)
        return path

    def sampling_cond(self, n: int):
        """The condition of the trainer's grids and evaluations (``ConditionSource.sampling``):
        class i % K for sample i of a class-conditional model, prompts of a text model, None
        otherwise."""
        return self.conditioning.sampling(n, self.device)

    def evaluate(self) -> dict | None:
        """Sample ``eval_n`` images with the EMA weights (fixed per-sample seeds) and measure them
        against the held-out split (evaluation.suite): digit-classifier features for greyscale
        data, the FID Inception for RGB when its weights are configured (otherwise skipped, once,
        with a warning). Returns the record written to metrics.jsonl."""
        from ..evaluation.suite import get_extractor, image_metrics, reference_features

        cfg = self.cfg
        if self._extractor is None:
            try:
                self._extractor = get_extractor("digits" if self.train_pixels.shape[1] == 1 else "inception")
            except FileNotFoundError as e:
                print(f"warning: sample-quality evaluation skipped: {e}", file=sys.stderr)
                self._extractor = False
        if self._extractor is False:
            return None
        shape = self.model_shape
        choice = self.sampling_choice(cfg.eval_steps)
        from ..core.sampling import sample_many

        t0 = time.perf_counter()
        x = sample_many(self.ema_denoiser(), shape, cfg.eval_n, choice.sampler, choice.steps, seed=cfg.seed + 1,
                        batch_size=250, progress=False, cond=self.sampling_cond(cfg.eval_n),
                        indices=distributed.shard(cfg.eval_n, self.world))  # each rank its share
        x = distributed.gather_cat(self.to_pixels(x))  # sample i wherever it was drawn: the same images
        if not self.world.main:  # the metrics of the gathered samples: rank 0 (seconds)
            return None
        ref = reference_features(self._extractor, cfg.data, "heldout", cfg.image_size, self.train_pixels.shape[1],
                                 images=None if cfg.data in ("mnist", "digits") else self.val_pixels[:cfg.n_val].cpu(),
                                 classes=cfg.digits if cfg.data in ("mnist", "digits") else None)
        floor = self.train_pixels[:cfg.eval_n].cpu() if self._floor_needed else None
        m = image_metrics(x, self._extractor, ref, floor=floor, metrics=tuple(cfg.eval_metrics.split(",")),
                          kid_subset_size=min(1000, cfg.eval_n))
        self._floor_needed = False
        rec = {"step": self.step, "train_seconds": self.elapsed, "eval_seconds": time.perf_counter() - t0,
               **{f"eval_{k}": v for k, v in m.items() if k not in ("extractor",)}, "eval_extractor": m["extractor"]}
        self.log(rec)
        return rec

    def checkpoint(self) -> Path:
        """One checkpoint of the run (``models.checkpoint.save_checkpoint``). A LoRA run's holds
        only the adapter and its EMA (kind "lora"), and then rewrites the run folder's top-level
        adapter in peft's layout from the EMA (``models.lora.write_adapter``)."""
        rng = {"torch": torch.get_rng_state()}  # training draws are keyed by (seed, step, index): no state
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        model, ema = self.model, self.ema.model
        if self.adapters is not None:
            from .finetune import checkpoint_record as lora_record

            config = lora_record(self.cfg, self.out, self.step)
            model, ema = self.adapters.trainable_state(), self.adapters.trainable_state(self.ema.model)
        else:
            config = classifier_record(self.cfg, self.model_config()) if self.is_classifier else \
                autoencoder_record(self.cfg, self.model_config(), self.ema.model, self.train_data) \
                if self.task == "autoencoder" else self.diffusion_record()
        state = {"planned_steps": self.planned, "elapsed_train_seconds": self.elapsed, "ema_step": self.ema.step,
                 "skipped_steps": self.skipped}
        if self.guide_step is not None:  # in config.json: loaders read it there, and so does resume
            config["guide_step"] = self.guide_step
        get_state = getattr(self.loss_fn, "state_dict", None)  # a plain function loss is stateless
        loss_state = get_state() if callable(get_state) else None
        if loss_state:
            state["loss_state"] = loss_state  # e.g. the importance sampler's loss history
        self._saved_step = self.step
        distributed.barrier()  # every rank has finished the step (their states are identical)
        path = None
        if self.world.main:  # one writer: the manifest and atomic rename of save_checkpoint
            path = self._write("checkpoint", save_checkpoint, self.out, self.step, model=model, ema_model=ema,
                               config=config, optimizer=self.opt, train_state=state, rng=rng,
                               keep=self.cfg.keep_checkpoints, guide=self.guide_sd)
            if self.adapters is not None and path is not None:
                from ..models.lora import write_adapter

                self._write("adapter", write_adapter, self.out, self.adapters, self.ema.model, config["lora"])
        path = distributed.broadcast(str(path) if path else None)  # written when any rank goes on
        return Path(path) if path else None

    def diffusion_record(self) -> dict:
        """The config.json body of a diffusion model (``loading.checkpoint_config``), with its
        conditioning record and sampling defaults."""
        config = checkpoint_config(self.diffusion, self.cfg.arch, self.model_config(), self.cfg.to_dict())
        record = self.conditioning.record()
        if record:  # what sample / load_denoiser need to condition and guide it
            config["conditioning"] = record
        choice = self.sampling_choice()  # every run records its sampling defaults
        config["sampling"] = {"sampler": choice.sampler, "steps": choice.steps, "guidance": choice.guidance}
        if self.cfg.distill is not None and self.cfg.distill.sigmas and choice.steps == self.cfg.distill.steps_to:
            config["sampling"]["sigmas"] = list(self.cfg.distill.sigmas)  # the grid a student was trained for
        if self.codec is not None:
            config["latent"] = self._latent_record()
        return config

    def _latent_record(self) -> dict:
        """Where a latent run's autoencoder is and what it is: its path (relative to the run when
        it lies beside it or inside it; the copy in run/autoencoder with ``embed_autoencoder``),
        its content hash, and the pixel and latent shapes."""
        import os
        import shutil

        src = Path(self.codec.path)  # the checkpoint folder the autoencoder was loaded from
        if self.cfg.embed_autoencoder:
            dst = self.out / "autoencoder"
            if not (dst / "config.json").is_file():
                tmp = self.out / ".autoencoder.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src, tmp)
                os.replace(tmp, dst)
            where, embedded = "autoencoder", True
        else:
            run, target = self.out.resolve(), src.resolve()
            rel = os.path.relpath(target, run)
            beside = target.is_relative_to(run.parent)
            where, embedded = (rel if beside else str(target)), False
        return {"autoencoder": where, "sha256": self.codec.sha256, "embedded": embedded,
                "pixel_shape": list(self.codec.pixel_shape), "latent_shape": list(self.codec.latent_shape)}

    def model_config(self) -> dict:
        return getattr(self.model, "config", {})

    def _latest_name(self) -> str:
        try:
            return str(find_checkpoint(self.out))
        except CheckpointError:
            return "(none written yet)"

    def _restore(self, ck: dict) -> None:
        if self.adapters is not None:  # a LoRA run's checkpoint holds the adapters only
            for module, sd in ((self.model, ck["model"]), (self.ema.model, ck["ema"])):
                want = set(self.adapters.trainable_state(module))
                if set(sd) != want:
                    raise CheckpointError(f"{ck['path']} does not hold this run's adapters "
                                          f"({len(sd)} tensors, {len(want)} expected)")
                module.load_state_dict(sd, strict=False)
        else:
            self.model.load_state_dict(ck["model"])
            self.ema.load_state_dict(ck["ema"])
        if ck["optimizer"] is not None:
            self.opt.load_state_dict(ck["optimizer"])
        st = ck["train_state"]
        self.step = st["step"]
        self.planned = st.get("planned_steps") if self.cfg.max_steps is None else self.cfg.max_steps
        self.elapsed = st.get("elapsed_train_seconds", 0.0)
        self.ema.step = st.get("ema_step", self.step)
        self.skipped = list(st.get("skipped_steps", []))
        self.guide_sd, self.guide_step = ck["guide"], ck["config"].get("guide_step")
        if "loss_state" in st:
            self.loss_fn.load_state_dict(st["loss_state"])
        if "torch" in ck["rng"]:
            self._rng_state = ck["rng"]["torch"]
        if "cuda" in ck["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"], self.device)
        self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        path = self.out / "metrics.jsonl"
        if not self.world.main or not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a crash is dropped
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
        path.write_text("".join(l + "\n" for l in keep))

    def log(self, record: dict) -> None:
        """One line of metrics.jsonl (rank 0; non-finite numbers written as null)."""
        if not self.world.main:
            return
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        self._write("metrics.jsonl", self._append_metrics, json.dumps(record) + "\n")
        if self._tb is not None:  # --log tensorboard: the same numbers as scalars
            self._write("tensorboard", self._tb.scalars, record)

    def _append_metrics(self, line: str) -> None:
        path = self.out / "metrics.jsonl"
        faults.hit("write:metrics.jsonl", path)
        with open(path, "a") as f:
            f.write(line)

    def write_run_json(self, extra: dict | None = None) -> None:
        if not self.world.main:
            return
        self._write("run.json", self._run_json, extra)

    def _run_json(self, extra: dict | None) -> None:
        info = {"config": self.cfg.to_dict(), "git_commit": git_commit(), "versions": package_versions(),
                "torch_threads": self.threads, "cpu_count": os.cpu_count(), "world_size": self.world.size,
                "cpu": cpu_info(), "device": str(self.device),
                "precision": str(self.amp_dtype or "fp32"), "argv": sys.argv,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "trainable_parameters": sum(p.numel() for p in self.params),
                "train_images": len(self.train_data), "val_images": len(self.val_data),
                "resumed_from": str(self.resume_from) if self.resume_from else None, **(extra or {})}
        write_json_atomic(self.out / "run.json", info)

    # ------------------------------------------------------------------ the loop
    def _done(self) -> bool:
        cfg = self.cfg
        if self.planned is not None and self.step >= self.planned:
            return True
        return cfg.time_budget is not None and self.elapsed >= cfg.time_budget

    def _replan(self) -> None:
        """With a time budget and no max_steps: planned steps = step + remaining / (s per step),
        re-estimated every 100 steps until 90% of the budget, so the learning-rate schedule ends
        with the budget even when the machine's speed drifts (on the 2-core machine it moves by
        tens of percent within minutes; re-planning only until 60% ended a 600 s demo at 564 s)."""
        cfg = self.cfg
        if cfg.time_budget is None or cfg.max_steps is not None or self.step < 30:
            return
        if self.planned is None or (self.step % 100 == 0 and self.elapsed < 0.9 * cfg.time_budget):
            per_step = self.elapsed / self.step
            self.planned = self.step + int(max(0.0, cfg.time_budget - self.elapsed) / per_step)

    def _snapshot_guide(self) -> None:
        """Autoguidance (Karras et al. 2024) guides a model with a weaker version of itself; a
        copy of the EMA weights from early in the same run is one (same architecture and data,
        the same kinds of errors, only larger). Taken once, at guide_at x the planned steps
        (re-estimated under a time budget), and written into every later checkpoint."""
        cfg = self.cfg
        if cfg.guide_at is None or self.guide_sd is not None or not self.planned:
            return
        if self.step >= math.ceil(cfg.guide_at * self.planned):
            self.guide_sd = {k: v.detach().clone() for k, v in self.ema.model.state_dict().items()}
            self.guide_step = self.step
            self.log({"step": self.step, "guide_snapshot": self.step})

    def _on_signal(self, signum, frame):
        """Ctrl-C (SIGINT) or a scheduler's SIGTERM: finish the step, write a checkpoint, stop
        (status "interrupted" / "terminated": exit 130 / 143). The same signal again stops at once
        (KeyboardInterrupt / Terminated), which no checkpoint write survives half-done: a partly
        written one is a temporary folder that is removed, the previous ones stay intact."""
        if self._stop:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
        self._stop = "interrupted" if signum == signal.SIGINT else "terminated"
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\n{name}: stopping after this step and saving a checkpoint ({name} again stops at once)",
              file=sys.stderr)

    @contextlib.contextmanager
    def _run_rng(self):
        """Training runs on the run's own CPU RNG state (seeded by --seed, restored on resume, saved
        in checkpoints: dropout masks are reproducible); the caller's global RNG is left as it was."""
        with torch.random.fork_rng(devices=[]):
            if self._rng_state is not None:
                torch.set_rng_state(self._rng_state)
            try:
                yield
            finally:
                self._rng_state = torch.get_rng_state()

    @contextlib.contextmanager
    def _signals(self):
        """The trainer's own SIGINT / SIGTERM handling while it trains (main thread only)."""
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread: no signal handling
                old[sig] = signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def train(self, stop_after: int | None = None) -> dict:
        """Run until max_steps / time_budget (or Ctrl-C, or ``stop_after`` steps: a simulated
        Ctrl-C used by tests). Returns a summary dict."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._stop = False  # a new call trains on (a bench may pause a run with stop_after and go on)
        distributed.barrier()  # every rank has checked the folder (run_config) before rank 0 clears it
        if self.overwrite and self.world.main:
            self._clear_run()
        self.overwrite = False
        self.out.mkdir(parents=True, exist_ok=True)
        self.write_run_json()
        self._open_tensorboard()
        self.model.train()
        total = cfg.max_steps if cfg.max_steps else None
        bar = tqdm(total=total, initial=self.step, disable=not (cfg.progress and self.world.main), dynamic_ncols=True,
                   unit="step", desc="train")
        wall0 = time.perf_counter()
        with self._signals(), self._collectives(), self._run_rng(), self._tensorboard_closed():
            try:
                status = self._loop(stop_after, bar)
            finally:
                bar.close()
            ck = self._finish()
            if self.world.main and cfg.eval_every:
                from ..evaluation.viz import plot_eval, read_jsonl
                self._write("eval.png", plot_eval, read_jsonl(self.out / "metrics.jsonl"), self.out / "eval.png")
            panels = tuple(getattr(self.loss_fn, "plotted", ()))
            if self.world.main and panels:  # a loss whose statistics are the story (DPO's reward accuracy, margin)
                from ..evaluation.viz import plot_losses, read_jsonl
                self._write("loss.png", plot_losses, read_jsonl(self.out / "metrics.jsonl"), self.out / "loss.png",
                            panels=panels)
        summary = {"status": status, "steps": self.step, "train_seconds": round(self.elapsed, 2),
                   "wall_seconds": round(time.perf_counter() - wall0, 2), "checkpoint": str(ck) if ck else None,
                   "skipped_steps": len(self.skipped), "write_errors": self.write_errors}
        self.write_run_json({"summary": summary})
        return summary

    def _open_tensorboard(self) -> None:
        """``log_to`` tensorboard: the event writer of rank 0 (a resumed run's events after its
        checkpoint's step, written by the run that went on past it, are purged)."""
        if self._tb is None and self.cfg.log_to == "tensorboard" and self.world.main:
            self._tb = TensorBoardLog(self.out / "tensorboard", purge_step=self.step + 1 if self.step else None)

    @contextlib.contextmanager
    def _tensorboard_closed(self):
        try:
            yield
        finally:
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def _loop(self, stop_after: int | None, bar) -> str:
        """The steps until done, stopped (a signal) or ``stop_after``; returns the status:
        completed, interrupted (Ctrl-C, or ``stop_after``) or terminated (SIGTERM)."""
        cfg = self.cfg
        window_t, window_n, status = 0.0, 0, "completed"
        while not self._done():
            t0 = self.clock()
            loss, gnorm = self.train_step()
            dt = self.clock() - t0
            if self.world.size > 1:  # one clock and one stop for all: the slowest rank's time, any rank's signal
                dt, stop = self._agree(dt)
                self._stop = self._stop or stop
            self.elapsed += dt
            window_t, window_n = window_t + dt, window_n + 1
            self._replan()
            self._snapshot_guide()
            if self.step % cfg.log_every == 0 or self.step == 1:
                self._log_train(loss, gnorm, window_n * cfg.batch_size / max(window_t, 1e-9), bar)
                window_t, window_n = 0.0, 0
            bar.update(1)
            self._periodic()
            if stop_after is not None and self.step >= stop_after:
                self._stop = self._stop or "interrupted"
            if self._stop:
                status = self._stop
                break
        return status

    def _finish(self) -> Path | None:
        """The end of a run: a last validation and evaluation where the period did not just make
        them, and the final checkpoint (returned)."""
        cfg = self.cfg
        if not self.is_classifier and not (cfg.val_every and self.step % cfg.val_every == 0):
            self._log_validation()
        if cfg.eval_every and self.step % cfg.eval_every != 0:
            self.evaluate()
        ck = self.checkpoint() if self._saved_step != self.step else None
        if ck is None:  # already written at this step, or the write failed (on_write_error "continue")
            with contextlib.suppress(CheckpointError):
                ck = find_checkpoint(self.out)
        return ck

    @contextlib.contextmanager
    def _collectives(self):
        """A collective that fails because another rank died or timed out becomes ``PeerLost``:
        one clear line naming the last complete checkpoint (exit 2), never a hang."""
        try:
            yield
        except Exception as e:
            if self.world.size > 1 and distributed.is_comm_failure(e):
                raise PeerLost(f"rank {self.world.rank} of {self.world.size}: another process of the run died or "
                               f"stopped answering at step {self.step} ({str(e).splitlines()[0][:200]}); the last "
                               f"complete checkpoint is {self._latest_name()}",
                               hint=f"resume with --resume (with any number of processes); collectives time out "
                                    f"after {distributed.timeout_s():.0f} s ({distributed.TIMEOUT_ENV})") from e
            raise

    def _agree(self, dt: float) -> tuple[float, bool]:
        """(the slowest rank's step time, whether any rank was asked to stop): every rank then
        re-plans the same steps, sets the same learning rate and stops at the same step."""
        parts = distributed.gather_objects((dt, self._stop))
        reasons = [p[1] for p in parts if p[1]]
        return max(p[0] for p in parts), ("terminated" if "terminated" in reasons else reasons[0]) if reasons else False

    def _log_train(self, loss: float, gnorm: float, ips: float, bar) -> None:
        stats = {k: distributed.gather_cat(torch.cat(v)).mean().item() for k, v in sorted(self._window_stats.items())}
        self._window_stats = {}
        self.log({"step": self.step, "loss": loss, "lr": self.opt.param_groups[0]["lr"],
                  "grad_norm": gnorm, "img_per_s": ips, "train_seconds": self.elapsed, **stats})
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.0f}", left=self._eta(), refresh=False)

    def _periodic(self) -> None:
        """Validation loss, sample grid, sample-quality evaluation and checkpoint, each on its period."""
        cfg, step = self.cfg, self.step
        if cfg.val_every and step % cfg.val_every == 0:
            self._log_validation()
        if cfg.sample_every and step % cfg.sample_every == 0:
            self.save_grid(f"step-{step:08d}")
        if cfg.eval_every and step % cfg.eval_every == 0:
            self.evaluate()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self.checkpoint()

    RUN_FILES = ("checkpoints", "samples", "metrics.jsonl", "run.json", "eval.png", "loss.png", "tensorboard",
                 # + a LoRA run's adapter:
                 "adapter_model.safetensors", "adapter_config.json", "lora.json")

    def _clear_run(self) -> None:
        """``overwrite``: remove what an earlier run wrote here (only the trainer's own files)."""
        import shutil

        for name in self.RUN_FILES:
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        self.overwrite = False

    def _eta(self) -> str:
        cfg = self.cfg
        if cfg.time_budget is not None and (self.planned is None or cfg.max_steps is None):
            left = max(0.0, cfg.time_budget - self.elapsed)
        elif self.planned:
            left = (self.planned - self.step) * self.elapsed / max(self.step, 1)
        else:
            return "?"
        return f"{int(left // 60)}m{int(left % 60):02d}s"
