"""The issue's bookkeeping: its targets and reference configuration, runs, and the summary that
judges difflab's best rows against diffusers' -- read from rows, never measuring.

Only rows of one run are divided by each other (another process, maybe another machine, is
another run); the run judged is the newest one that measured the issue's reference.
"""

from __future__ import annotations

import os
from typing import Optional

TARGETS = {"train": 1.5, "sample": 2.0}  # difflab's best / diffusers' best (the issue's bar)

# The issue's reference: diffusers' best configuration is bf16 + torch.compile; without it in a run,
# that run's ratios are not the issue's (a faster difflab row over diffusers' eager rows proves little)
ISSUE_REFERENCE = "bf16+compile"
LEGACY_RUN = ""  # rows measured before runs were stamped: one run of their own, the earliest


def run_id(date: str, device_name: str) -> str:
    """The run a new row belongs to. DIFFLAB_BENCH_RUN names it across calls on one machine
    (benchmarks/gpu_session.sh: a second call on the same warm machine joins the first)."""
    return os.environ.get("DIFFLAB_BENCH_RUN") or f"{date} {device_name}"


def _run_of(row: dict) -> str:
    return row.get("run") or LEGACY_RUN


def _stored_weights(row: dict) -> Optional[str]:
    return (row.get("options") or {}).get("weights")


def own_peak(row: dict) -> Optional[int]:
    """The row's own peak memory: its raw peak less what was allocated when it started (rows
    measured before this field existed have both figures)."""
    if row.get("peak_mem_own_bytes") is not None:
        return row["peak_mem_own_bytes"]
    if row.get("peak_mem_bytes") is None:
        return None
    return row["peak_mem_bytes"] - row.get("allocated_before_bytes", 0)


def own_held(row: dict) -> Optional[int]:
    """What the row keeps allocated between iterations, less what was allocated before it."""
    held = row.get("allocated_between_iterations_bytes")
    return None if held is None else held - row.get("allocated_before_bytes", 0)


def summarize(rows: list[dict]) -> dict:
    """difflab's best row over diffusers' best reference row, per what, within one run (the ratios
    the issue asks for are measured side by side: rows of other runs, another process or machine,
    are not divided by each other); each row's ratio to its own run's best reference.

    The run judged is the newest one that measured diffusers' ISSUE_REFERENCE; without one there
    is no verdict (``target_met`` None). A sample row whose samples were not finite takes no
    part. A difflab row with its network stored in bf16 (``weights``) is held to the memory of
    diffusers' bf16-stored reference of its run too, and takes no part without it."""
    summary = {}
    for what in ("train", "sample"):
        s = _summarize(rows, what)
        if s is not None:
            summary[what] = s
    return summary


def _best_references(ok: list[dict], runs: list[str]) -> dict[str, dict]:
    """Each run's best diffusers reference row (its fastest row if none is a reference)."""
    refs = {}
    for run in runs:
        theirs = [r for r in ok if _run_of(r) == run and r["library"] == "diffusers"]
        if theirs:
            refs[run] = max([r for r in theirs if r["reference"]] or theirs, key=lambda r: r["images_per_s"])
    return refs


def _summarize(rows: list[dict], what: str) -> Optional[dict]:
    """The summary of one kind of row (``summarize``), or None without a judged run or difflab row."""
    ok = [r for r in rows if r["what"] == what and r.get("images_per_s") and r.get("sample_finite") is not False]
    runs = sorted({_run_of(r) for r in ok})
    refs = _best_references(ok, runs)
    for r in ok:
        ref_r = refs.get(_run_of(r))
        r["vs_diffusers_best"] = r["images_per_s"] / ref_r["images_per_s"] if ref_r else None
    issue_runs = [run for run in runs if any(_run_of(r) == run and r["library"] == "diffusers"
                                             and r["name"] == ISSUE_REFERENCE for r in ok)]
    judged = issue_runs[-1] if issue_runs else (max(refs) if refs else None)  # (no verdict: the newest run)
    if judged not in refs:
        return None
    ours = [r for r in ok if _run_of(r) == judged and r["library"] == "difflab"]
    theirs = [r for r in ok if _run_of(r) == judged and r["library"] == "diffusers"]
    ref, top = refs[judged], max(theirs, key=lambda r: r["images_per_s"])
    if not ours:
        return None
    best = max(ours, key=lambda r: r["images_per_s"])
    s = {
        "run": judged or "(unstamped rows)",
        "difflab_best": best["name"], "difflab_images_per_s": best["images_per_s"],
        "diffusers_best": ref["name"], "diffusers_images_per_s": ref["images_per_s"],
        "ratio": best["images_per_s"] / ref["images_per_s"],
        "diffusers_best_any_row": top["name"],
        "ratio_vs_best_any_row": best["images_per_s"] / top["images_per_s"],
        "target_ratio": TARGETS[what],
    }
    if not issue_runs:
        s["no_verdict"] = f"diffusers' {ISSUE_REFERENCE} (the issue's reference) was not measured"
    if best.get("profile") and ref.get("profile"):
        s["profile"] = _profiles_side_by_side(best["profile"], ref["profile"])
    if own_peak(best) and own_peak(ref):
        s.update(_fastest_within_memory(best, ref, ours, theirs))
        s["target_met"] = (s.get("ratio_within_memory", 0.0) >= TARGETS[what]) if issue_runs else None
    if issue_runs:
        s.update(_against_issue_reference(ours, theirs, TARGETS[what]))
    return s


def _profiles_side_by_side(a: dict, b: dict) -> dict:
    """Where the time goes: difflab's best row's profile ``a`` beside diffusers' reference's ``b``."""
    kinds = sorted(set(a["by_kind_ms"]) | set(b["by_kind_ms"]))
    diff = {k: a["by_kind_ms"].get(k, 0.0) - b["by_kind_ms"].get(k, 0.0) for k in kinds}
    return {
        "ms_per_iteration": {"difflab": {"wall": a["wall_ms"], "busy": a["busy_ms"]},
                             "diffusers": {"wall": b["wall_ms"], "busy": b["busy_ms"]}},
        "by_kind_ms_difflab_minus_diffusers": dict(sorted(diff.items(), key=lambda kv: -abs(kv[1]))),
    }


def _fastest_within_memory(best: dict, ref: dict, ours: list[dict], theirs: list[dict]) -> dict:
    """The best row's memory over the reference's, and the fastest difflab row within the memory
    it must stay within: the issue's bar is speed and memory in one configuration, so the fastest
    row that holds no more memory than diffusers' reference (e.g. training without the EMA copy,
    which diffusers' step does not keep) meets it or nothing does."""
    out = {"peak_mem_ratio": own_peak(best) / own_peak(ref)}
    stored = {_stored_weights(r): r for r in theirs if _stored_weights(r) and own_peak(r)}

    def bar(r: dict) -> Optional[int]:  # the memory a row must stay within
        w = _stored_weights(r)
        if not w:
            return own_peak(ref)
        return min(own_peak(ref), own_peak(stored[w])) if w in stored else None

    lean = [r for r in ours if own_peak(r) and bar(r) and own_peak(r) <= bar(r)]
    if lean:
        fit = max(lean, key=lambda r: r["images_per_s"])
        out["difflab_best_within_memory"] = fit["name"]
        out["ratio_within_memory"] = fit["images_per_s"] / ref["images_per_s"]
        out["peak_mem_ratio_within_memory"] = own_peak(fit) / own_peak(ref)
    return out


def _against_issue_reference(ours: list[dict], theirs: list[dict], target: float) -> dict:
    """The comparison the issue names, beside the stricter verdict above: difflab's fastest row
    within the memory of diffusers' ISSUE_REFERENCE row (bf16 autocast + torch.compile, weights
    float32), over that row; and like for like, difflab's fastest row that also keeps its weights
    float32 under autocast. The verdict above divides by diffusers' fastest reference of any
    kind, which may store its network in bf16 (``bf16w``), a configuration the issue does not
    name."""
    issue_ref = next((r for r in theirs if r["name"] == ISSUE_REFERENCE), None)
    if issue_ref is None or not own_peak(issue_ref):
        return {}
    lean = [r for r in ours if own_peak(r) and own_peak(r) <= own_peak(issue_ref)]
    out = {}
    for key, rows in (("issue_reference", lean), ("issue_reference_like_for_like",
                                                   [r for r in lean if not _stored_weights(r)])):
        if rows:
            fit = max(rows, key=lambda r: r["images_per_s"])
            out[key] = {"difflab": fit["name"], "diffusers": issue_ref["name"],
                        "ratio": fit["images_per_s"] / issue_ref["images_per_s"],
                        "peak_mem_ratio": own_peak(fit) / own_peak(issue_ref),
                        "target_met": fit["images_per_s"] / issue_ref["images_per_s"] >= target}
    return out
