"""Sample from a model exported by `diffusionlab export --format onnx` with onnxruntime and numpy
alone (no torch, no diffusionlab): DDIM on the grid recorded in the sidecar, with
classifier-free guidance for a class model.

    python onnx_sample.py model.onnx [CLASS] [GUIDANCE]    # writes samples.npy: [8, C, H, W] in [-1, 1]
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def sample(path, n=8, label=None, guidance=None, seed=0, noise=None):
    side = json.load(open(path + ".json"))  # the preconditioning and the default grid
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    C, H, W = side["image_shape"]
    grid = side["grid"]
    sigmas = grid["sigmas"]
    if noise is None:
        noise = np.random.default_rng(seed).standard_normal((n, C, H, W))
    noise = noise.astype(np.float32)
    n = len(noise)
    s0 = sigmas[0]  # the prior at the first sigma: unit noise at Infinity
    x = noise if np.isinf(s0) else noise * (np.sqrt(1 + s0 ** 2) if side["prior"] == "vp" else s0)
    if set(side["inputs"]) - {"x_in", "c_noise", "labels", "null"}:
        raise SystemExit("this script samples unconditional and class models; this one also takes "
                         + ", ".join(n for n in side["inputs"][2:] if n not in ("labels", "null")))
    conditional = "labels" in side["inputs"]
    scale = (side["sampling"]["guidance"] or 1.0) if guidance is None else guidance

    def denoise(x, i, null):  # x0 = c_skip x + c_out net(c_in x, c_noise)
        feed = {"x_in": (grid["c_in"][i] * x).astype(np.float32),
                "c_noise": np.full(len(x), grid["c_noise"][i], np.float32)}
        if conditional:
            feed["labels"] = np.full(len(x), label or 0, np.int64)
            feed["null"] = null
        out = session.run(["out"], feed)[0][:, :C]
        skip = grid["c_skip"][i] * x if grid["c_skip"][i] != 0 else 0.0
        return skip + grid["c_out"][i] * out

    for i in range(len(sigmas) - 1):
        if conditional and scale != 1.0:  # one batch: the conditional half, then the null half
            both = denoise(np.concatenate([x, x]), i, np.repeat([False, True], n))
            x0 = both[n:] + scale * (both[:n] - both[n:])
        else:
            x0 = denoise(x, i, np.zeros(n, dtype=bool))
        eps = x if np.isinf(sigmas[i]) else (x - x0) / sigmas[i]
        x = x0 + sigmas[i + 1] * eps  # DDIM (eta 0) is this Euler step in x = x0 + sigma eps
    return np.clip(x, -1, 1)


if __name__ == "__main__":
    label = int(sys.argv[2]) if len(sys.argv) > 2 else None
    guidance = float(sys.argv[3]) if len(sys.argv) > 3 else None
    images = sample(sys.argv[1], label=label, guidance=guidance)
    np.save("samples.npy", images)
    print("wrote samples.npy", images.shape)
