"""Sample-quality metrics for generated MNIST digits.

A small CNN digit classifier (:class:`DigitClassifier`), trained deterministically on the
4,000 embedded training digits of :func:`diffusionlab.data.load_mnist` and cached on disk,
supplies two things:

- class predictions, for *confidence* (is each sample a clear digit?) and *class
  coverage* (are all ten digits generated about equally often?);
- penultimate-layer features, for a Frechet distance between generated and real digits
  (the recipe of FID, but in this classifier's 128-d feature space).

A pixel-space nearest-neighbour check against the training digits flags memorisation.

Caveats, stated once for all metrics here:

- The feature FD is measured in a small classifier's feature space. Its scale has nothing
  to do with Inception FID; never compare it with published FID numbers, and only compare
  values computed with the same classifier file (``digit_classifier_v1``), the same image
  size and the same number of samples.
- FD is biased upwards for small sample counts, so every FD comes with a *floor*: the FD
  between the same number of real training digits and the held-out reference. With the
  default 1,000 held-out reference digits, sampling noise of a few percent is normal.
- The classifier has seen only real digits; a confident prediction on a sample does not
  prove the sample looks good to a human, and an unconfident one can be an odd-but-real
  style.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..core.files import atomic_path
from ..errors import UserError
from .digit_net import INPUT_SIZE as _INPUT_SIZE, DigitClassifier, _accuracy, _augment, _init_weights
from .metrics import feature_stats, frechet_distance

__all__ = [
    "DigitClassifier",
    "train_digit_classifier",
    "load_digit_classifier",
    "default_cache_dir",
    "CLASSIFIER_FILENAME",
    "frechet_distance",
    "feature_stats",
    "extract_features",
    "digit_metrics",
    "format_digit_metrics",
]

CLASSIFIER_FILENAME = "digit_classifier_v1.safetensors"
CLASSIFIER_INFO_FILENAME = "digit_classifier_v1.json"


def _default_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def train_digit_classifier(seed: int = 0, epochs: int = 8, batch_size: int = 64,
                           lr: float = 3e-3, weight_decay: float = 1e-4,
                           augment: bool = True, num_threads: int | None = None,
                           verbose: bool = False) -> DigitClassifier:
    """Train a :class:`DigitClassifier` on ``load_mnist('train')`` (4,000 digits, 32x32).

    Deterministic for a given ``seed`` (and thread count): initialisation, shuffling and
    augmentation all draw from one ``torch.Generator``; the global RNGs are not used.
    Adam with a one-cycle learning-rate schedule; augmentation is a small random affine
    (+-2 px shift, +-10 deg rotation, scale 0.9-1.15).

    ``num_threads`` defaults to half of ``os.cpu_count()`` (1 to 4): the convs are tiny,
    and on a busy 2-core machine 2 threads measured 2x *slower* than 1 (56 s vs 25 s)
    through oversubscription. The previous torch thread count is restored afterwards. The returned model is in eval
    mode on the CPU and carries ``heldout_accuracy`` (accuracy on
    ``load_mnist('heldout')``) and ``train_seconds``.
    """
    from diffusionlab.data import load_mnist

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(num_threads or _default_threads()))
    try:
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(int(seed))
        x, y = load_mnist("train", image_size=_INPUT_SIZE, return_labels=True)
        model = DigitClassifier()
        _init_weights(model, gen)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(x) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
        model.train()
        for epoch in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            total = 0.0
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                xb, yb = x[idx], y[idx]
                if augment:
                    xb = _augment(xb, gen)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            if verbose:
                print(f"epoch {epoch + 1}/{epochs} loss {total / len(x):.4f}")
        model.eval()
        xh, yh = load_mnist("heldout", image_size=_INPUT_SIZE, return_labels=True)
        model.heldout_accuracy = _accuracy(model, xh, yh)
        model.train_seconds = time.perf_counter() - t0
        if verbose:
            print(f"held-out accuracy {model.heldout_accuracy:.4f} "
                  f"in {model.train_seconds:.1f}s")
        return model
    finally:
        torch.set_num_threads(prev_threads)


def default_cache_dir() -> str:
    """``$DIFFUSIONLAB_CACHE`` if set (and non-empty), else ``~/.cache/diffusionlab``."""
    env = os.environ.get("DIFFUSIONLAB_CACHE")
    return os.path.expanduser(env) if env else os.path.expanduser("~/.cache/diffusionlab")


def _atomic_write(path: str, write_fn) -> None:
    """``write_fn(tmp_path)`` through the one atomic-write helper (files.py)."""
    with atomic_path(path) as tmp:
        write_fn(tmp)


def _try_load(path: str) -> DigitClassifier | None:
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        return None
    try:
        state = load_file(path)
        model = DigitClassifier()
        model.load_state_dict(state, strict=True)
        if not all(torch.isfinite(t).all() for t in state.values()):
            return None
        return model
    except Exception:  # corrupt / truncated / incompatible file: retrain
        return None


def _save_classifier(model: DigitClassifier, path: str, info_path: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"heldout_accuracy": f"{model.heldout_accuracy:.6f}", "seed": "0", "version": "1"}
    _atomic_write(path, lambda p: save_file(state, p, metadata=meta))
    info = {"heldout_accuracy": model.heldout_accuracy, "seed": 0,
            "train_seconds": round(model.train_seconds, 2),
            "weights": os.path.basename(path), "torch": torch.__version__}

    def _write_json(p):
        with open(p, "w") as f:
            json.dump(info, f, indent=2)
    _atomic_write(info_path, _write_json)


def load_digit_classifier(cache_dir: str | os.PathLike | None = None,
                          device: str | torch.device = "cpu") -> DigitClassifier:
    """The cached digit classifier, in eval mode on ``device``.

    Reads ``<cache_dir>/digit_classifier_v1.safetensors`` (``cache_dir`` defaults to
    :func:`default_cache_dir`). If the file is missing or unreadable, trains one with
    :func:`train_digit_classifier` (seed 0, ~10-30 s on a laptop CPU) and writes it
    atomically (temp file + ``os.replace``), together with
    ``digit_classifier_v1.json`` holding its held-out accuracy. If the directory cannot
    be written, a warning is issued and the trained model is returned anyway.
    """
    cache_dir = os.path.expanduser(os.fspath(cache_dir)) if cache_dir is not None \
        else default_cache_dir()
    path = os.path.join(cache_dir, CLASSIFIER_FILENAME)
    info_path = os.path.join(cache_dir, CLASSIFIER_INFO_FILENAME)
    model = _try_load(path)
    if model is not None:
        try:
            with open(info_path) as f:
                model.heldout_accuracy = float(json.load(f)["heldout_accuracy"])
        except Exception:
            model.heldout_accuracy = None
    else:
        model = train_digit_classifier(seed=0)
        try:
            _save_classifier(model, path, info_path)
        except OSError as e:  # read-only cache: still return the freshly trained model
            warnings.warn(f"could not cache the digit classifier in {cache_dir}: {e}")
    return model.to(device).eval()


# --------------------------------------------------------------------------- statistics
@torch.no_grad()
def extract_features(classifier: DigitClassifier, images: torch.Tensor,
                     batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features [N, D] and class probabilities [N, 10], both float64 numpy.
    Images are [N, 1, H, W] in [-1, 1] (any size >= 16), processed in batches."""
    was_training = classifier.training
    classifier.eval()
    feats, probs = [], []
    try:
        for i in range(0, len(images), batch_size):
            f = classifier.features(images[i:i + batch_size])
            p = F.softmax(classifier.head(f), dim=1)
            feats.append(f.double().cpu().numpy())
            probs.append(p.double().cpu().numpy())
    finally:
        classifier.train(was_training)
    d = getattr(classifier, "feature_dim", 0)
    if not feats:
        return np.zeros((0, d)), np.zeros((0, 10))
    return np.concatenate(feats), np.concatenate(probs)


def _class_stats(probs: np.ndarray, confidence: float) -> tuple[float, float, list[int]]:
    n = len(probs)
    if n == 0:
        return float("nan"), float("nan"), [0] * 10
    confident = float((probs.max(axis=1) > confidence).mean())
    hist = np.bincount(probs.argmax(axis=1), minlength=10)[:10]
    p = hist[hist > 0] / n
    entropy = float(-(p * np.log(p)).sum() / math.log(10)) if len(p) > 1 else 0.0
    return confident, entropy, [int(c) for c in hist]


@torch.no_grad()
def _nn_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 256,
                  k: int = 4) -> np.ndarray:
    """L2 distance of each query (flattened) to its nearest row of ``bank``.

    Candidates come from a fast float32 ``torch.cdist`` (matrix-multiply form) in chunks
    of ``chunk`` queries; the best ``k`` are then re-measured exactly in float64, so an
    exact copy has distance 0.
    """
    q = queries.reshape(len(queries), -1).float()
    b = bank.reshape(len(bank), -1).float()
    k = min(k, len(b))
    out = []
    for i in range(0, len(q), chunk):
        qc = q[i:i + chunk]
        d = torch.cdist(qc, b)
        cand = d.topk(k, dim=1, largest=False).indices  # [c, k]
        exact = (qc.double()[:, None, :] - b.double()[cand]).norm(dim=2)  # [c, k]
        out.append(exact.min(dim=1).values)
    return torch.cat(out).numpy() if out else np.zeros(0)


def _match_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    x = x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size[-1] or x.shape[-2] > size[-2])
    return x.clamp(-1, 1)


@functools.lru_cache(maxsize=8)
def _load_real(split: str, size: tuple[int, int]) -> torch.Tensor:
    """Embedded MNIST at ``size``, memoised (loading takes seconds); never modified."""
    from diffusionlab.data import load_mnist

    h, w = size
    if h == w:
        return load_mnist(split, image_size=h)
    return _match_size(load_mnist(split, image_size=_INPUT_SIZE), size)


def digit_metrics(samples: torch.Tensor, classifier: DigitClassifier | None = None,
                  real_reference: torch.Tensor | None = None,
                  real_train: torch.Tensor | None = None,
                  confidence: float = 0.9, requested: torch.Tensor | None = None,
                  avoid: int | None = None) -> dict:
    """Quality, diversity and memorisation metrics for generated digits.

    ``samples`` are [N, 1, H, W] in [-1, 1] (clamped to that range first). The reference
    defaults to the 1,000 held-out digits ``load_mnist('heldout')`` and the training set
    to ``load_mnist('train')``, both at the samples' size (given tensors of another size
    are resized bilinearly). ``classifier`` defaults to :func:`load_digit_classifier`.

    Returned keys (plain python numbers):

    - ``n``: number of samples.
    - ``confident_fraction``: fraction of samples whose top class probability exceeds
      ``confidence`` (0.9): "reads as a clear digit". ``floor_confident_fraction`` is the
      same on the real held-out digits (about 0.97-0.99), the practical ceiling.
    - ``class_entropy``: entropy of the histogram of predicted classes divided by log(10):
      1.0 = all ten digits equally often, 0.0 = a single class (mode collapse).
      ``class_histogram`` lists the 10 counts; ``floor_class_entropy`` is the held-out
      value (~0.997; the real split is not perfectly balanced). With few samples the
      entropy is biased low (multinomial noise).
    - ``fd``: Frechet distance between Gaussians fitted to classifier features of the
      samples and of the held-out reference. NOT comparable to Inception FID (different
      network, feature space and scale), and biased upwards at small N.
      ``fd_floor``: the same distance for ``min(N, len(train))`` real training digits
      (random subset, fixed seed 0) against the reference: what a perfect generator with
      the same N would score. ``fd_ratio = fd / fd_floor`` (~1 is ideal).
    - ``nn_dist_samples_median``: median over samples of the L2 pixel distance (in the
      [-1, 1] range, flattened image) to the nearest training digit;
      ``nn_dist_heldout_median``: the same for the real held-out digits;
      ``nn_ratio`` = samples / held-out. Values well below 1 (say < 0.5) suggest the
      model reproduces training digits; near or above 1 is normal for a generalising one.
    - ``copied_fraction``: fraction of samples whose nearest-training-digit distance is
      below ``copy_threshold`` = 0.5 x the 5th percentile of the held-out digits'
      nearest-training distances, i.e. far closer to a training digit than almost any
      unseen real digit is. Near-copies of training images land here; ~0 is expected.

    With ``requested`` (the digit asked for, [N]): ``requested_accuracy``, the fraction whose
    predicted digit is the requested one. With ``avoid`` (a digit steered away from):
    ``avoided_share``, the fraction predicted as that digit, and ``rest_confident_fraction``,
    the confident fraction of the other samples.

    Also returned: ``confidence`` and ``copy_threshold``. Cost: a few seconds on a CPU for
    1,000 samples (two 1,000 x 4,000 pixel distance matrices plus ~6,000 forward passes).
    """
    classifier = classifier if classifier is not None else load_digit_classifier()
    x = _as_digits(samples)
    n, size = len(x), tuple(x.shape[-2:])
    ref = _load_real("heldout", size) if real_reference is None else _match_size(real_reference.detach().cpu(), size)
    train = _load_real("train", size) if real_train is None else _match_size(real_train.detach().cpu(), size)
    f_s, p_s = extract_features(classifier, x)
    f_r, p_r = extract_features(classifier, ref)
    conf, ent, hist = _class_stats(p_s, confidence)
    floor_conf, floor_ent, _ = _class_stats(p_r, confidence)
    return {**_asked(p_s, n, confidence, requested, avoid), "n": int(n), "confidence": float(confidence),
            "confident_fraction": conf, "class_entropy": ent, "class_histogram": hist,
            **_fd_block(classifier, f_s, f_r, train, n), **_memorisation(x, ref, train),
            "floor_confident_fraction": floor_conf, "floor_class_entropy": floor_ent}


def _as_digits(samples: torch.Tensor) -> torch.Tensor:
    """``samples`` as float [N, 1, H, W] on the CPU, NaN to 0, clamped to [-1, 1]."""
    x = samples.detach().cpu().float()
    x = x.unsqueeze(1) if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[1] != 1:
        raise UserError(f"samples must be [N, 1, H, W], got {tuple(samples.shape)}", param="samples")
    return torch.nan_to_num(x, nan=0.0).clamp(-1, 1)


def _ratio(a, b) -> float:
    return float(a / b) if b > 0 else float("inf") if a > 0 else float("nan")


def _fd_block(classifier, f_s, f_r, train, n: int) -> dict:
    """FD of the samples to the reference, and its floor: as many real training digits (a fixed
    seed-0 subset) against the same reference."""
    sub = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:min(max(n, 2), len(train))]
    f_t, _ = extract_features(classifier, train[sub])
    mu_r, sig_r = feature_stats(f_r)
    fd = frechet_distance(*feature_stats(f_s), mu_r, sig_r)
    fd_floor = frechet_distance(*feature_stats(f_t), mu_r, sig_r)
    return {"fd": fd, "fd_floor": fd_floor, "fd_ratio": _ratio(fd, fd_floor)}


def _memorisation(x, ref, train) -> dict:
    """Nearest-training-digit pixel distances of the samples and of the held-out digits."""
    nn_s, nn_h = _nn_distances(x, train), _nn_distances(ref, train)
    med_s = float(np.median(nn_s)) if len(x) else float("nan")
    med_h = float(np.median(nn_h))
    copy_threshold = 0.5 * float(np.percentile(nn_h, 5))
    copied = float((nn_s < copy_threshold).mean()) if len(x) else float("nan")
    return {"nn_dist_samples_median": med_s, "nn_dist_heldout_median": med_h, "nn_ratio": _ratio(med_s, med_h),
            "copy_threshold": copy_threshold, "copied_fraction": copied}


def _asked(p_s, n: int, confidence: float, requested, avoid) -> dict:
    """``requested_accuracy`` for the requested digits; ``avoided_share`` and
    ``rest_confident_fraction`` for a digit steered away from."""
    out, pred, top = {}, p_s.argmax(1), p_s.max(1)
    if requested is not None:
        req = np.asarray(torch.as_tensor(requested).cpu()).reshape(-1)
        if len(req) != n:
            raise UserError(f"{len(req)} requested digits for {n} samples", param="requested")
        out["requested_accuracy"] = float((pred == req).mean()) if n else float("nan")
    if avoid is not None:
        rest = pred != int(avoid)
        out["avoided_share"] = float((~rest).mean()) if n else float("nan")
        out["rest_confident_fraction"] = float((top[rest] > confidence).mean()) if rest.any() else float("nan")
    return out


def format_digit_metrics(m: dict, columns: dict | None = None) -> str:
    """A short markdown table of :func:`digit_metrics` output: samples next to the real
    held-out reference ("floor"), plus the predicted-class histogram. ``columns`` (label ->
    metrics) puts several sample sets side by side; the floors come from the first."""
    columns = columns or {"samples": m}
    m = next(iter(columns.values()))

    def f(v, fmt="{:.3f}"):
        if v is None:
            return "-"
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return fmt.format(v)

    conf = m.get("confidence", 0.9)
    rows = [  # (label, key, format, floor)
        ("samples (n)", "n", "{:d}", "-"),
        (f"confident fraction (p > {conf:g})", "confident_fraction", "{:.3f}", f(m.get("floor_confident_fraction"))),
        ("class entropy (1 = uniform)", "class_entropy", "{:.3f}", f(m.get("floor_class_entropy"))),
        ("feature FD vs held-out (not Inception FID)", "fd", "{:.2f}", f(m.get("fd_floor"), "{:.2f}")),
        ("FD ratio (fd / floor)", "fd_ratio", "{:.2f}", "1.00"),
        ("median NN pixel dist to train", "nn_dist_samples_median", "{:.2f}",
         f(m.get("nn_dist_heldout_median"), "{:.2f}")),
        ("NN ratio (< 0.5 suggests copying)", "nn_ratio", "{:.2f}", "1.00"),
        ("copied fraction", "copied_fraction", "{:.3f}", "-"),
    ]
    lines = ["| metric | " + " | ".join(columns) + " | real held-out |",
             "|---|" + "---:|" * (len(columns) + 1)]
    lines += [f"| {label} | " + " | ".join(f(c.get(key), fmt) for c in columns.values()) + f" | {floor} |"
              for label, key, fmt, floor in rows]
    for name, c in columns.items():
        hist = c.get("class_histogram")
        if hist is not None:
            lines.append("")
            prefix = "predicted classes 0-9" + (f" ({name})" if len(columns) > 1 else "")
            lines.append(prefix + ": " + " ".join(str(int(v)) for v in hist))
    return "\n".join(lines)
