"""Markdown and the error-vs-NFE plot of bench/defaults_vs_diffusers.py, from its JSON rows (so
``--replot`` needs no model, no diffusers and no rerun).

Row groups: library 'ours' (each deterministic sampler at defaults), 'ours_default' (the model
kind's default sampler at defaults), 'diffusers' with kind 'default' (deterministic schedulers at
their defaults) or 'option' (one common option, or an SDE scheduler). err = metric (a), sliced W2
to the exact ODE solution for the same noise; sw2 / excess = metric (b) and (b) minus its floor.
"""
from __future__ import annotations

import math
import os

TARGET_RATIO = 0.6
HEADLINE_NFE = (5, 10)


def _ok(r, key="err") -> bool:
    return r is not None and math.isfinite(r.get(key, math.inf))


def best(rows, mix, target, pred, key="err"):
    ok = [r for r in rows if r["mixture"] == mix and r["target"] == target and pred(r) and _ok(r, key)]
    return min(ok, key=lambda r: r[key]) if ok else None


def is_ours(r):
    return r["library"] == "ours"


def is_ours_default(r):
    return r["library"] == "ours_default"


def is_diff_default(r):
    return r["library"] == "diffusers" and r.get("kind") == "default"


def is_diff_any(r):
    return r["library"] == "diffusers"


def _cfg(r) -> str:
    if r is None:
        return "none"
    return f"{r['config']}{' (SDE)' if r.get('sde') else ''}, {r['steps']} steps / {r['nfe']} NFE"


def _num(r, key="err", fmt=".4g") -> str:
    return format(r[key], fmt) if _ok(r, key) else "n/a"


def _ratio(a, b, key="err") -> float:
    return a[key] / b[key] if _ok(a, key) and _ok(b, key) and b[key] > 0 else math.nan


def _fmt_ratio(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def headline(data, mix) -> list[str]:
    rows = data["rows"]
    lines = ["| NFE | ours best at defaults | (a) | ours default sampler | (a) | diffusers best at defaults | (a) | "
             "diffusers best, defaults + options | (a) | ratio ours best / diffusers best (options) |",
             "|---:|---|---:|---|---:|---|---:|---|---:|---:|"]
    for t in data["meta"]["targets"]:
        o, od = best(rows, mix, t, is_ours), best(rows, mix, t, is_ours_default)
        dd, da = best(rows, mix, t, is_diff_default), best(rows, mix, t, is_diff_any)
        lines.append(f"| {t} | {_cfg(o)} | {_num(o)} | {_cfg(od)} | {_num(od)} | {_cfg(dd)} | {_num(dd)} | "
                     f"{_cfg(da)} | {_num(da)} | {_fmt_ratio(_ratio(o, da))} |")
    return lines


def metric_b(data, mix) -> list[str]:
    rows, floor = data["rows"], data["floors"][mix]
    lines = ["| NFE | ours best at defaults, (b) - floor | diffusers best incl. SDE, (b) - floor | floor (b) "
             "(min-max) |", "|---:|---|---|---:|"]
    for t in data["meta"]["targets"]:
        o, d = best(rows, mix, t, is_ours, "sw2"), best(rows, mix, t, is_diff_any, "sw2")
        lines.append(f"| {t} | {_cfg(o)}: {_num(o, 'excess', '+.4g')} | {_cfg(d)}: {_num(d, 'excess', '+.4g')} | "
                     f"{floor['b']:.4g} ({floor['b_min']:.4g}-{floor['b_max']:.4g}) |")
    return lines


def _cell(rows, mix, t, pred):
    got = [r for r in rows if r["mixture"] == mix and r["target"] == t and pred(r)]
    return got[0] if got else None


def _why(r) -> str:
    if r is None:
        return "n/a"
    if "error" in r:
        return "ERROR"
    if "skipped" in r:
        return "skipped"
    return _num(r)


def pairs_table(data, mix) -> tuple[list[str], int, int]:
    """ours sampler vs its diffusers counterpart, both at defaults; (lines, worse, compared)."""
    rows, targets = data["rows"], data["meta"]["targets"]
    head = "| ours | diffusers | " + " | ".join(f"NFE {t}: ours / diffusers (ratio)" for t in targets) + " |"
    lines = [head, "|---|---|" + "---|" * len(targets)]
    worse = compared = 0
    for ours_name, label in data["pairs"].items():
        cells = []
        for t in targets:
            o = _cell(rows, mix, t, lambda r: is_ours(r) and r["config"] == ours_name)
            d = _cell(rows, mix, t, lambda r: is_diff_default(r) and r["config"] == label)
            x = _ratio(o, d)
            if not math.isnan(x):
                compared += 1
                worse += x > 1
            nfes = f" @{o['nfe']}/{d['nfe']}" if _ok(o) and _ok(d) and o["nfe"] != d["nfe"] else ""
            cells.append(f"{_why(o)} / {_why(d)} ({_fmt_ratio(x)}{nfes})")
        lines.append(f"| {ours_name} | {label} | " + " | ".join(cells) + " |")
    return lines, worse, compared


def sde_table(data, mix) -> list[str]:
    rows, floor, targets = data["rows"], data["floors"][mix], data["meta"]["targets"]
    lines = [f"Floor of (a) for an independent draw: {floor['a']:.4g} ({floor['a_min']:.4g}-{floor['a_max']:.4g}).", "",
             "| diffusers SDE config | " + " | ".join(f"NFE {t}: (a) / (b) - floor" for t in targets) + " |",
             "|---|" + "---|" * len(targets)]
    labels = list(dict.fromkeys(r["config"] for r in rows if r["mixture"] == mix and r["library"] == "diffusers"
                                and r.get("sde")))
    for label in labels:
        cells = []
        for t in targets:
            r = _cell(rows, mix, t, lambda r: r["library"] == "diffusers" and r["config"] == label)
            cells.append(f"{_num(r)} / {_num(r, 'excess', '+.4g')}" if _ok(r) else _why(r))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def all_rows(data, mix) -> list[str]:
    rows, targets = data["rows"], data["meta"]["targets"]
    cells: dict = {}
    for r in rows:
        if r["mixture"] == mix:
            cells.setdefault((r["library"], r["config"]), {})[r["target"]] = r
    lines = ["| library | config | " + " | ".join(f"NFE {t}: (a) [steps/NFE]" for t in targets) + " |",
             "|---|---|" + "---:|" * len(targets)]
    for (lib, cfg), by_t in cells.items():
        out = []
        for t in targets:
            r = by_t.get(t)
            out.append(f"{_num(r)} [{r['steps']}/{r['nfe']}]" if _ok(r) else _why(r))
        sde = " (SDE)" if any(r.get("sde") for r in by_t.values()) else ""
        lines.append(f"| {lib} | {cfg}{sde} | " + " | ".join(out) + " |")
    return lines


def summary(data) -> tuple[list[str], dict]:
    rows, mixes = data["rows"], list(data["mixtures"])
    lines, stats = [], {}
    for t in HEADLINE_NFE:
        if t not in data["meta"]["targets"]:
            continue
        per = {m: _ratio(best(rows, m, t, is_ours), best(rows, m, t, is_diff_any)) for m in mixes}
        vals = [v for v in per.values() if not math.isnan(v)]
        worst = max(vals) if vals else math.nan
        stats[t] = worst
        verdict = "n/a" if math.isnan(worst) else ("meets" if worst <= TARGET_RATIO else "misses")
        lines.append(f"- NFE {t}: max over held-out mixtures of (ours best at defaults) / (diffusers best over "
                     f"defaults + options), metric (a) = **{_fmt_ratio(worst)}** ({verdict} the target "
                     f"<= {TARGET_RATIO}); per mixture: " + ", ".join(f"{m} {_fmt_ratio(v)}" for m, v in per.items()))
    worse = compared = 0
    for m in mixes:
        _, w, c = pairs_table(data, m)
        worse, compared = worse + w, compared + c
    lines.append(f"- pairs (ours sampler vs its diffusers counterpart, both at defaults, metric (a)) where ours is "
                 f"worse: **{worse} of {compared}** (over mixtures x NFE budgets)")
    return lines, dict(max_ratio=stats, worse=worse, compared=compared)


def problems(data) -> list[str]:
    seen, out = set(), []
    for r in data["rows"]:
        for key in ("error", "skipped"):
            if key in r and (r["library"], r["config"], r[key]) not in seen:
                seen.add((r["library"], r["config"], r[key]))
                out.append(f"- {r['library']} {r['config']} ({r['mixture']}, NFE {r['target']}): {key}: {r[key]}")
    return out


def report(data, plot_path: str | None = None, out_path: str | None = None) -> str:
    meta = data["meta"]
    sum_lines, _ = summary(data)
    lines = ["# Ours at defaults vs diffusers at defaults, on held-out Gaussian mixtures", "",
             "Generated by `bench/defaults_vs_diffusers.py` (markdown by `bench/defaults_report.py`); do not edit.", "",
             f"- command: `{meta['command']}`",
             f"- date: {meta['date']}; git {meta['git']}; wall {meta['wall_s'] / 60:.1f} min, {meta['threads']} thread(s)",
             f"- torch {meta['torch']}, diffusers {meta['diffusers']}, diffusionlab {meta['diffusionlab']}",
             f"- CPU kind: {meta['cpu_kind']}",
             f"- n = {meta['n']} samples per run; NFE budgets {', '.join(map(str, meta['targets']))} (actual model calls, "
             "both libraries; each config runs the largest steps within the budget)",
             f"- diffusionlab DEFAULT_GRIDS at run time (non-empty entries): `{meta['default_grids'] or 'all empty'}`",
             "", "## Summary", "", *sum_lines, "",
             "Metric (a) = sliced W2 (256 projections) to the exact probability-flow ODE solution for the same unit "
             "noise z (RK45, rtol = atol = 1e-7, from the table's sigma_max = 157 to 1e-4, then the denoiser): the "
             "solver's own error, free of the sampling floor for deterministic samplers. diffusers' SDE schedulers "
             "(EulerAncestral, DDPM, sde-dpmsolver++) draw independent samples, so under (a) they carry the sampling "
             "floor (given beside them, with metric (b) minus its floor). Metric (b) = sliced W2 to an independent "
             "true set of the same size; its floor is the mean over 5 further true sets. The reference is the exact "
             "solution of this model, not a draw from the data: the discrete model's network is clamped at the "
             "table's lowest sigma (0.01), so below it the flow is a final denoising shrink; its distance to a true "
             "set is given per mixture beside the floor (b).", "",
             "Held-out mixtures: the default grids of diffusionlab are chosen on random mixtures (seeds 2000-2015), "
             "never on these. Model: the exact denoiser as a discrete eps model on the 1000-step linear VP schedule "
             "(betas 1e-4..0.02); diffusers gets the exact eps at the sigma its scheduler believes it is at. "
             "Both start from the same z (diffusers: x = z * init_noise_sigma), so a diffusers default that "
             "starts below the top of the table (e.g. 'leading' spacing) pays for it under (a)."]
    if plot_path:
        rel = os.path.relpath(plot_path, os.path.dirname(os.path.abspath(out_path))) if out_path else plot_path
        lines += ["", f"![metric (a) vs NFE]({rel})"]
    for mix, desc in data["mixtures"].items():
        fl = data["floors"][mix]
        pl, w, c = pairs_table(data, mix)
        lines += ["", f"## {mix}: {desc}", "",
                  f"Exact ODE solution vs a true set: {fl['exact_vs_true']:.4g} (floor (b) {fl['b']:.4g}); "
                  f"solved in {fl['exact_s']} s.", "",
                  "### Best at defaults vs best over options, metric (a)", "", *headline(data, mix), "",
                  "### Metric (b) minus floor", "", *metric_b(data, mix), "",
                  f"### Pairs, both at defaults, metric (a) (ours worse in {w} of {c})", "", *pl, "",
                  "### diffusers' SDE configs", "", *sde_table(data, mix), "",
                  "<details><summary>every row</summary>", "", *all_rows(data, mix), "", "</details>"]
    if data.get("notes"):
        lines += ["", "## Options not run (equal to a default or another row)", "", *[f"- {n}" for n in data["notes"]]]
    probs = problems(data)
    lines += ["", "## Skipped or failed", "", *(probs or ["- none"])]
    return "\n".join(lines) + "\n"


def plot(data, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    mixes, targets = list(data["mixtures"]), data["meta"]["targets"]
    fig, axes = plt.subplots(1, len(mixes), figsize=(4.2 * len(mixes), 3.8), squeeze=False)
    series = [("ours best at defaults", is_ours, "C0", "-"), ("ours default sampler", is_ours_default, "C0", ":"),
              ("diffusers best at defaults", is_diff_default, "C3", "-"),
              ("diffusers best over options", is_diff_any, "C3", "--")]
    for ax, mix in zip(axes[0], mixes):
        for label, pred, color, style in series:
            pts = [(t, r["err"]) for t in targets if (r := best(data["rows"], mix, t, pred))]
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker="o", ms=3, label=label)
        ax.axhline(data["floors"][mix]["a"], color="gray", lw=0.8, ls="-.", label="floor of an independent draw")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(targets)
        ax.set_xticklabels([str(t) for t in targets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(mix)
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("sliced W2 to the exact ODE solution")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
