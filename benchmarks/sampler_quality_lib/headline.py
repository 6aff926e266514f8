"""The headline's bookkeeping: the rows of the main evaluation, each library's best rows at a
budget of evaluations, and the verdicts beside them (beats diffusers' best FD and NLL gap, within
10% of DDPM-1000's FD). Reads rows; samples nothing."""

from __future__ import annotations

import math


def label(r: dict) -> str:
    """A row's name in tables and plots: library, method and (fixed) spacing."""
    if r["library"] in ("truth", "hybrid"):
        return r["method"]
    opt = r["spacing"] and r["spacing"] != "optimised"
    return f"{r['library']} {r['method']}" + (f" ({r['spacing']})" if opt else "")


def main_rows(res: dict) -> list:
    """The rows of the main evaluation (the repeats on other seeds are summarised separately)."""
    return [r for r in res["rows"] if r.get("seed", res["seed"]) == res["seed"]]


def best_at(rows, problem, library, nfe, key):
    """The row of ``library`` with the smallest ``key`` (|key| for the NLL gap) among runs with at
    most ``nfe`` evaluations and more than nfe / 2 (Heun's 2 * steps - 1 lands one below an even target)."""
    cands = [
        r
        for r in rows
        if r["problem"] == problem
        and r["library"] == library
        and nfe / 2 < r["nfe"] <= nfe
        and math.isfinite(r.get(key, math.nan))
    ]
    return min(cands, key=lambda r: abs(r[key]), default=None)


def headline(res: dict, problem: str = "64d", nfe: int = 10) -> dict:
    """The entries of the headline table at ``nfe`` evaluations on ``problem`` (each library's
    best FD and best NLL gap, the floor, DDPM-1000, the exact ODE, the hybrid) and the verdicts."""
    rows = main_rows(res)
    out = {}
    for lib in ("difflab", "diffusers"):
        out[f"{lib}_best_fd"] = best_at(rows, problem, lib, nfe, "fd")
        out[f"{lib}_best_nll"] = best_at(rows, problem, lib, nfe, "nll_gap")
    pick = lambda pred: next((r for r in rows if r["problem"] == problem and pred(r)), None)  # noqa: E731
    out["floor"] = pick(lambda r: r["library"] == "truth")
    out["ddpm1000"] = pick(
        lambda r: r["library"] == "difflab" and r["method"] == "ddpm" and r["nfe"] == 1000
    )
    out["diffusers_ddpm1000"] = pick(
        lambda r: r["library"] == "diffusers" and r["method"] == "DDPM"
    )
    out["exact"] = pick(lambda r: r["method"].startswith("exact ODE"))
    out["hybrid"] = pick(lambda r: r["library"] == "hybrid")
    d, p, q = out["difflab_best_fd"], out["diffusers_best_fd"], out["diffusers_best_nll"]
    if d and p and q:
        out["beats_fd"] = d["fd"] < p["fd"]
        out["beats_nll"] = abs(d["nll_gap"]) < abs(q["nll_gap"])
    if d and out["ddpm1000"]:
        out["within_10pct_of_ddpm1000"] = d["fd"] <= 1.1 * out["ddpm1000"]["fd"]
    return out

