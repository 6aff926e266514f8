"""The report's tables in Markdown: a metric against NFE per sampler, every diffusers scheduler
and spacing at one NFE, and the headline entries across seeds."""

from __future__ import annotations

import math

import torch

from .headline import headline, label
from .problems import NFES


def fmt(v, nll: bool = False) -> str:
    """A metric in a table cell: FD to 4 places, the NLL gap signed to 3; '-' when not run."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "NaN/inf"
    if abs(v) >= 1e4:
        return f"{v:.3g}"
    return f"{v:+.3f}" if nll else f"{v:.4f}"


def _curve_labels(rows: list[dict], nfes: list[int]) -> list[str]:
    """The samplers with a curve: each at some NFE of the table, but not the diffusers entries
    run at 10 NFE alone (those are in the sweep table)."""
    labels = []
    for r in rows:
        lab = label(r)
        if r["nfe_target"] in nfes and lab not in labels:
            if (
                sum(label(q) == lab for q in rows) == 1
                and r["library"] == "diffusers"
                and r["nfe_target"] == 10
            ):
                continue
            labels.append(lab)
    return labels


def curve_table(rows, problem, key) -> str:
    """``key`` (fd or nll_gap) of each sampler against the target NFE; the actual NFE in brackets
    where it differs."""
    rows = [r for r in rows if r["problem"] == problem and r["library"] in ("difflab", "diffusers")]
    nfes = sorted({r["nfe_target"] for r in rows if r["nfe_target"] in NFES})
    head = (
        "| sampler | " + " | ".join(str(n) for n in nfes) + " |\n|---|" + "---|" * len(nfes) + "\n"
    )
    body = ""
    for lab in _curve_labels(rows, nfes):
        cells = []
        for n in nfes:
            r = next((r for r in rows if label(r) == lab and r["nfe_target"] == n), None)
            cells.append(
                ""
                if r is None
                else fmt(r[key], key == "nll_gap") + (f" ({r['nfe']})" if r["nfe"] != n else "")
            )
        body += f"| {lab} | " + " | ".join(cells) + " |\n"
    return head + body


def sweep_table(rows, problem, nfe=10) -> str:
    """Every diffusers scheduler and spacing (and the hybrid) at ``nfe``, best FD first."""
    sel = [
        r
        for r in rows
        if r["problem"] == problem
        and r["library"] in ("diffusers", "hybrid")
        and r["nfe_target"] == nfe
    ]
    sel.sort(key=lambda r: r["fd"] if math.isfinite(r["fd"]) else 1e30)
    s = "| diffusers scheduler | spacing | NFE | FD | NLL gap |\n|---|---|---|---|---|\n"
    for r in sel:
        err = f" ({r['error']})" if r.get("error") else ""
        s += (
            f"| {r['method']} | {r['spacing']} | {r['nfe']} | {fmt(r['fd'])}{err} "
            f"| {fmt(r['nll_gap'], True)} |\n"
        )
    return s


def _mean_sd(v: list[float]) -> tuple[float, float]:
    v = torch.tensor(v, dtype=torch.float64)
    return float(v.mean()), float(v.std()) if len(v) > 1 else 0.0


def _paired(e: dict, ref: dict) -> str:
    """Entry ``e``'s paired differences from ``ref`` (both: seed -> row) as three table cells."""
    common = sorted(set(e) & set(ref))
    dfd = _mean_sd([e[i]["fd"] - ref[i]["fd"] for i in common])
    dnll = _mean_sd([abs(e[i]["nll_gap"]) - abs(ref[i]["nll_gap"]) for i in common])
    wins = sum(
        e[i]["fd"] > ref[i]["fd"] and abs(e[i]["nll_gap"]) > abs(ref[i]["nll_gap"])
        for i in common
    )
    return f"{dfd[0]:+.4f} ({dfd[1]:.4f}) | {dnll[0]:+.3f} ({dnll[1]:.3f}) | {wins}/{len(common)}"


def repeats_table(res: dict, problem: str = "64d") -> str:
    """Mean and sd over seeds of each repeated entry, and its paired difference from difflab's best
    (same noise and true samples per seed: most of the sampling noise cancels)."""
    rows = [r for r in res["rows"] if r["problem"] == problem]
    rep = {(label(r), r["nfe_target"]) for r in rows if r["seed"] != res["seed"]}
    entries = {k: {r["seed"]: r for r in rows if (label(r), r["nfe_target"]) == k} for k in rep}
    best = headline(res, problem).get("difflab_best_fd")
    ref = entries.get((label(best), best["nfe_target"])) if best else None
    seeds = sorted({r["seed"] for r in rows})
    s = (
        f"| seeds {', '.join(map(str, seeds))} | NFE | FD mean (sd) | NLL gap mean (sd) | FD minus best's | "
        "abs NLL gap minus best's | seeds where best is better on both |\n|---|---|---|---|---|---|---|\n"
    )
    order = sorted(entries, key=lambda k: _mean_sd([r["fd"] for r in entries[k].values()])[0])
    for k in order:
        e = entries[k]
        fd, nll = _mean_sd([r["fd"] for r in e.values()]), _mean_sd([r["nll_gap"] for r in e.values()])
        diff = _paired(e, ref) if ref is not None and e is not ref else "- | - | -"
        nfe = next(iter(e.values()))["nfe"]
        s += f"| {k[0]} | {nfe} | {fd[0]:.4f} ({fd[1]:.4f}) | {nll[0]:+.3f} ({nll[1]:.3f}) | {diff} |\n"
    return s
