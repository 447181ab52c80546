"""Markdown tables and the error-vs-NFE plot of bench/samplers.py, from its JSON results (so that
``--replot`` needs no model, no diffusers and no rerun)."""
from __future__ import annotations

import math

LIBRARIES = ("ours", "diffusers")


def best(rows, mixture, library, target):
    ok = [r for r in rows if r["mixture"] == mixture and r["library"] == library and r["target"] == target
          and math.isfinite(r.get("sw2", math.inf))]
    return min(ok, key=lambda r: r["sw2"]) if ok else None


def ratio(ours, theirs, floor: dict) -> str:
    """(ours - floor) / (diffusers - floor); a result within the floor's own spread (at most the
    largest true-vs-true distance) is 'at floor', where the ratio means nothing."""
    if ours is None or theirs is None:
        return "n/a"
    at = {lib: r["sw2"] <= floor["sw2_max"] for lib, r in (("ours", ours), ("diffusers", theirs))}
    if all(at.values()):
        return "both at floor"
    if at["diffusers"]:
        return "diffusers at floor"
    if at["ours"]:
        return "0 (ours at floor)"
    return f"{(ours['sw2'] - floor['sw2']) / (theirs['sw2'] - floor['sw2']):.2f}"


def _cfg(r) -> str:
    return f"{r['config']} ({r['nfe']})" if r else "none"


def _num(r, key, fmt) -> str:
    return format(r[key], fmt) if r and key in r and math.isfinite(r[key]) else "n/a"


def headline(data, mix) -> list[str]:
    rows, floor = data["rows"], data["floors"][mix]
    lines = ["| NFE | ours best (config, NFE) | ours sW2 | diffusers best (config, NFE) | diffusers sW2 | floor | "
             "ratio (ours-floor)/(diffusers-floor) | CE gap ours | CE gap diffusers |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for target in data["meta"]["targets"]:
        o, d = best(rows, mix, "ours", target), best(rows, mix, "diffusers", target)
        lines.append(f"| {target} | {_cfg(o)} | {_num(o, 'sw2', '.4f')} | {_cfg(d)} | {_num(d, 'sw2', '.4f')} | "
                     f"{floor['sw2']:.4f} | {ratio(o, d, floor)} | {_num(o, 'ce_gap', '+.3f')} | "
                     f"{_num(d, 'ce_gap', '+.3f')} |")
    return lines


def full_table(data, mix, key, fmt) -> list[str]:
    targets = data["meta"]["targets"]
    cells: dict[tuple, dict] = {}
    for r in data["rows"]:
        if r["mixture"] == mix:
            cells.setdefault((r["library"], r["config"]), {})[r["target"]] = r
    lines = ["| library | config | " + " | ".join(f"NFE {t}" for t in targets) + " |",
             "|---|---|" + "---:|" * len(targets)]
    for (lib, cfg), by_t in cells.items():
        out = []
        for t in targets:
            r = by_t.get(t, {})
            if key in r:
                out.append(format(r[key], fmt) + ("" if r["nfe"] == t else f" ({r['nfe']})"))
            else:
                out.append("skip" if "skipped" in r else ("error" if "error" in r else ""))
        lines.append(f"| {lib} | {cfg} | " + " | ".join(out) + " |")
    return lines


def problems(data) -> list[str]:
    seen, out = set(), []
    for r in data["rows"]:
        why = r.get("error") or r.get("skipped")
        key = (r["library"], r["config"], why)
        if why and key not in seen:
            seen.add(key)
            out.append(f"- {r['library']} `{r['config']}` ({r['mixture']}, NFE {r['target']}): {why}")
    return out


def report(data) -> str:
    meta = data["meta"]
    nsets = meta.get("floor_sets", 5)
    lines = ["# Sampler accuracy vs NFE: diffusionlab vs diffusers", "",
             f"- date: {meta['date']}",
             f"- command: `{meta['command']}`" + ("  (**--quick: small n, noisy numbers**)" if meta["quick"] else ""),
             *[f"- then, {m['date']} (git {m['git']}): `{m['command']}` ({m['configs']} mixture x config rows "
               "added or rerun, same seeds)" for m in meta.get("merged", [])],
             f"- versions: torch {meta['torch']}, diffusers {meta['diffusers']}, diffusionlab {meta['diffusionlab']} "
             f"(git {meta['git']})",
             f"- CPU: {meta['cpu']}, {meta['threads']} thread(s); wall time {meta['wall_s']:.0f} s",
             f"- {meta['n']} samples per run; NFE targets {meta['targets']} (actual model calls, shown in "
             "parentheses: the largest step count whose calls fit the target)",
             "- model: the exact mixture denoiser on the linear 1000-step VP schedule (betas 1e-4..0.02, sigma "
             "0.0100..157.4), float64 in both libraries. diffusers keeps its tables (alphas_cumprod, sigmas) in "
             "float32 and DPM-Solver/Euler/EulerAncestral cast the state to float32 inside `step()`: about 1e-7 "
             "relative, far below every error in these tables.",
             "- diffusers' eps model is evaluated at the sigma the scheduler believes it is at "
             "(`scheduler.sigmas[i]`, or `alphas_cumprod[t]` for DDIM/DDPM); clip_sample=False, thresholding off, "
             "final_sigmas_type='zero', otherwise each scheduler's defaults (lower_order_final=True). DEISMultistep is "
             "not in the issue's list; it is added because ours has DEIS. It has no final_sigmas_type and stops at "
             "sigma_min = 0.01 with that noise left in, which the CE gap shows on data finer than 0.01 (scales, "
             "aniso64).",
             "- sW2: sliced Wasserstein-2 to a true sample set of the same size (256 fixed random directions, "
             "1-D W2 by sorting, mean of squares, sqrt); floor: the same distance from independent true sets "
             f"(mean of {nsets}; 'at floor' = within their largest value, where ratios mean nothing). "
             "CE gap: mean -log p_data(generated) - mean -log p_data(true), nats; negative = over-sharp or "
             "mode-dropping, positive = blurred or off-manifold.",
             "- ratio < 1: ours closer to the data than diffusers' best at that NFE.",
             "- all configurations of both libraries start from one shared noise draw per mixture (a paired "
             "comparison). With well-separated modes the distance to the reference set depends on how that draw "
             "splits the mass between modes, so a good sampler can sit under the mean floor by luck of the draw "
             "(ring8: another noise seed moves DPM++2M-50 from 0.009 to 0.021); within the floor band, rankings are "
             "noise.",
             "- known differences, both libraries run as they are: diffusers' DDIM steps from t to t - 1000 // n, not "
             "to the next timestep it evaluates, so its 'linspace' grid (and 'trailing' when n does not divide 1000) "
             "is inconsistent; diffusers' DPM++3M uses the reference code's phi_3 coefficient and converges at second "
             "order, ours (2 phi_3) at third (tests/test_diffusers_match.py); DPM/UniPC 'leading'/'linspace' space "
             "n + 1 points and drop the last, ours n points (DDIM's definition).", *tuned_note(data), ""]
    for mix, desc in data["mixtures"].items():
        floor = data["floors"][mix]
        lines += [f"## {mix}: {desc}", "",
                  f"floor (true vs true, mean of {nsets} independent sets, min-max): sW2 "
                  f"{floor['sw2']:.4f} ({floor['sw2_min']:.4f}-{floor['sw2_max']:.4f}), CE gap "
                  f"{floor['ce_gap']:+.4f} ({floor['ce_gap_min']:+.4f} to {floor['ce_gap_max']:+.4f}); "
                  f"true-set cross-entropy {floor['ce_true']:.3f} nats", ""]
        lines += headline(data, mix) + [""]
    lines += ["## Winning configurations", ""] + winners(data) + [""]
    issues = problems(data)
    skipped = [f"- ours `{name}`: {why}" for name, why in data.get("skipped", [])]
    if issues or skipped:
        lines += ["## Skipped or failed", ""] + skipped + issues + [""]
    lines += ["<details><summary>Every configuration (sliced W2; CE gap below)</summary>", ""]
    for mix in data["mixtures"]:
        lines += [f"### {mix}: sliced W2", ""] + full_table(data, mix, "sw2", ".4f") + [""]
        lines += [f"### {mix}: CE gap (nats)", ""] + full_table(data, mix, "ce_gap", "+.3f") + [""]
    lines += ["</details>", ""]
    return "\n".join(lines)


def tuned_note(data) -> list[str]:
    if not any(r["library"] == "ours" and " tuned" in r["config"] for r in data["rows"]):
        return []
    return ["- our 'tuned' grid (diffusionlab.core.schedules.TUNED_GRIDS: log-SNR uniform between step-dependent ends, "
            "sigma 25 to 0.1 at 5 steps, 80 to 0.04 at 10, 157 to 0.02 at 20, the full range at 50) was fitted by "
            "bench/tune_grid.py at these step counts on random mixtures of the same kind "
            "(2-D and 16-D diagonal Gaussians, stds 0.005-0.3), not on these three: held out, but in-family, so "
            "its margin here says little about images. diffusers has no flag for such a grid (custom timesteps "
            "only)."]


def winners(data) -> list[str]:
    out = []
    for lib in LIBRARIES:
        wins = {}
        for mix in data["mixtures"]:
            for t in data["meta"]["targets"]:
                b = best(data["rows"], mix, lib, t)
                if b:
                    wins.setdefault(b["config"], []).append(f"{mix}@{t}")
        if wins:
            out.append(f"- {lib}: " + "; ".join(f"`{c}` ({', '.join(w)})" for c, w in
                                                sorted(wins.items(), key=lambda kv: -len(kv[1]))))
    return out


def plot(data, path: str) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mixes = list(data["mixtures"])
    fig, axes = plt.subplots(1, len(mixes), figsize=(5.2 * len(mixes), 4.4), squeeze=False)
    colors = {"ours": "tab:blue", "diffusers": "tab:orange"}
    for ax, mix in zip(axes[0], mixes):
        rows = [r for r in data["rows"] if r["mixture"] == mix and math.isfinite(r.get("sw2", math.inf))]
        fl, tops = data["floors"][mix], []
        for lib in LIBRARIES:
            for cfg in sorted({r["config"] for r in rows if r["library"] == lib}):
                pts = sorted((r["nfe"], r["sw2"]) for r in rows if r["library"] == lib and r["config"] == cfg)
                ax.plot(*zip(*pts), color=colors[lib], lw=0.6, alpha=0.25)
            pts = [(b["nfe"], b["sw2"]) for t in data["meta"]["targets"] if (b := best(rows, mix, lib, t))]
            if pts:
                ax.plot(*zip(*pts), color=colors[lib], lw=2.2, marker="o", label=f"{lib} (best per NFE)")
                tops.append(max(p[1] for p in pts))
        ax.axhline(fl["sw2"], color="gray", ls="--", lw=1, label="floor (true vs true)")
        ax.axhspan(fl["sw2_min"], fl["sw2_max"], color="gray", alpha=0.15, lw=0)
        ax.set(xscale="log", yscale="log", xlabel="NFE (model calls)", ylabel="sliced W2", title=mix)
        ax.set_ylim(0.7 * min([fl["sw2_min"]] + [r["sw2"] for r in rows]), 5 * max(tops + [fl["sw2_max"]]))
        ax.set_xticks(data["meta"]["targets"], [str(t) for t in data["meta"]["targets"]])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    fig.suptitle(f"Sampler error vs NFE (n={data['meta']['n']}; thin lines: every configuration)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    # hundreds of translucent lines make a large RGBA PNG; a 64-colour palette keeps it small
    from PIL import Image
    Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)
