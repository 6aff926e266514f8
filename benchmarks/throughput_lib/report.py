"""The results as text: the table printed after a run and the Markdown of ``--report`` (for
docs/benchmarks.md). Reads rows and the summary (``verdict.summarize``); measures nothing."""

from __future__ import annotations

import sys

from .verdict import ISSUE_REFERENCE, own_held, own_peak


def _issue_reference_text(s: dict) -> str:
    """The issue's own comparison (``verdict._against_issue_reference``) as one clause, or ''."""
    parts = []
    named, alike = s.get("issue_reference"), s.get("issue_reference_like_for_like")
    for label, c in ((f"against the issue's named configuration, diffusers' {ISSUE_REFERENCE} "
                      "(weights float32 under autocast)", named),
                     ("like for like (difflab's weights float32 under autocast too)", alike)):
        if c and not (c is alike and named and c["difflab"] == named["difflab"]):
            met = "target met" if c["target_met"] else "target not met"
            parts.append(f"{label}: {c['difflab']} {c['ratio']:.2f}x at {c['peak_mem_ratio']:.2f}x the memory ({met})")
    return "; ".join(parts)


def _fmt(v, spec: str, none: str = "-") -> str:
    if v is None:
        return none
    return format(v, spec[:-1]) + "%" if spec.endswith("%") else format(v, spec)


def print_table(result: dict, file=None) -> None:
    """The rows and the summary as the table a run prints at its end (to ``file``, or to whatever
    sys.stdout is at the call: a default bound at import would miss a later redirection)."""
    meta = result["meta"]
    print(f"\n{meta['network']} on {meta['device_name']} ({meta['device']}), train batch {meta['batch']}, "
          f"sample batch {meta['sample_batch']} x {meta['sample_steps']} DDIM steps"
          + ("   [tiny configuration: tests the code path, not the libraries]" if meta["tiny"] else ""), file=file)
    head = f"{'what':<7}{'library':<10}{'config':<30}{'images/s':>10}{'ms/iter':>10}{'peak MiB':>10}" \
           f"{'MFU':>7}{'vs diffusers best':>19}  host syncs"
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['what']:<7}{r['library']:<10}{r['name']:<30}  ERROR {r['error'][:80]}", file=file)
            continue
        mem = own_peak(r)
        print(f"{r['what']:<7}{r['library']:<10}{r['name'] + (' *' if r['reference'] else ''):<30}"
              f"{r['images_per_s']:>10.1f}{r['ms_per_iteration']:>10.2f}{_fmt(mem and mem / 2**20, '.0f'):>10}"
              f"{_fmt(r.get('mfu') and 100 * r['mfu'], '.1f%'):>7}{_fmt(r.get('vs_diffusers_best'), '.2f'):>18}x"
              f"  {r.get('host_syncs_in_iteration') or '-'}"[:200], file=file)
    print("(* diffusers' reference configurations; 'diffusers best' is the fastest of them)", file=file)
    _print_summary(result["summary"], file)


def _print_summary(summary: dict, file) -> None:
    for what, s in summary.items():
        mem = f", peak memory {s['peak_mem_ratio']:.2f}x diffusers'" if "peak_mem_ratio" in s else ""
        print(f"{what}: difflab {s['difflab_best']} {s['difflab_images_per_s']:.1f} img/s / diffusers "
              f"{s['diffusers_best']} {s['diffusers_images_per_s']:.1f} img/s = {s['ratio']:.2f}x "
              f"(target {s['target_ratio']}x{mem}); vs diffusers' fastest row of any kind "
              f"({s['diffusers_best_any_row']}): {s['ratio_vs_best_any_row']:.2f}x{_within_memory(s)}"
              + (f" -- no verdict: {s['no_verdict']}" if "no_verdict" in s else ""), file=file)
        if _issue_reference_text(s):
            print(f"  {what}, {_issue_reference_text(s)}", file=file)


def _within_memory(s: dict) -> str:
    """The summary's fastest difflab row within diffusers' peak memory, when it is not the fastest."""
    if "difflab_best_within_memory" not in s or s["difflab_best_within_memory"] == s["difflab_best"]:
        return ""
    return (f"; the fastest within diffusers' peak memory: {s['difflab_best_within_memory']} "
            f"{s['ratio_within_memory']:.2f}x at {s['peak_mem_ratio_within_memory']:.2f}x the memory")


def markdown(result: dict) -> str:
    """The rows and the summary as Markdown (for docs/benchmarks.md): ``--report JSON``."""
    lines = _markdown_heading(result["meta"]) + _markdown_rows(result["rows"])
    lines += _markdown_leftovers(result["rows"], result["meta"].get("skipped", []))
    for what, s in result["summary"].items():
        lines += _markdown_summary(what, s)
    return "\n".join(lines) + "\n"


def _markdown_heading(meta: dict) -> list[str]:
    v = meta["versions"]
    return [f"{meta['network']} network on {meta['device_name']}: train batch {meta['batch']}, sample batch "
            f"{meta['sample_batch']} x {meta['sample_steps']} DDIM steps; torch {v['torch']}, diffusers "
            f"{v.get('diffusers')}; median of {meta['repeats']} runs; `{meta['command']}` ({meta['date']})"
            + (" -- **tiny configuration: tests the code path, not the libraries**" if meta["tiny"] else ""),
            ""]


def _markdown_rows(rows: list[dict]) -> list[str]:
    """The table of rows, and the note on its memory columns."""
    lines = ["| what | library | configuration | images/s | ms/iter | peak MiB | held MiB | MFU "
             "| vs diffusers' best | host syncs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['what']} | {r['library']} | {r['name']} | error: {r['error'][:100]} | | | | | | |")
            continue
        mem = own_peak(r)
        name = f"{r['name']} (reference)" if r["reference"] else r["name"]
        held = own_held(r)
        lines.append(f"| {r['what']} | {r['library']} | {name} | {r['images_per_s']:.1f} | "
                     f"{r['ms_per_iteration']:.2f} | {_fmt(mem and mem / 2**20, '.0f')} | "
                     f"{_fmt(held and held / 2**20, '.0f')} | "
                     f"{_fmt(r.get('mfu') and 100 * r['mfu'], '.1f%')} | {_fmt(r.get('vs_diffusers_best'), '.2f')}x | "
                     f"{r.get('host_syncs_in_iteration') or '-'} |")
    lines.append("")
    lines.append("(peak and held MiB are each row's own: what it allocated above what was allocated when it "
                 "started)")
    lines.append("")
    return lines


def _markdown_leftovers(rows: list[dict], skipped: list[dict]) -> list[str]:
    """The rows that left memory allocated, and the rows not measured."""
    lines = []
    for r in rows:
        if (r.get("left_allocated_bytes") or 0) > 2**20:
            big = "; ".join(f"{shape} {dtype} {mib:.0f} MiB" for shape, dtype, mib in r.get("left_tensors", []))
            lines.append(f"- left allocated after the row: {r['what']} {r['library']} {r['name']} "
                         f"{r['left_allocated_bytes'] / 2**20:.0f} MiB" + (f" (largest: {big})" if big else ""))
    for r in skipped:
        lines.append(f"- not measured: {r['what']} {r['library']} {r['name']} ({r['reason']})")
    return lines


def _markdown_summary(what: str, s: dict) -> list[str]:
    """One kind's summary: the ratio and verdict, the issue's own comparison, the profiles."""
    mem = f"; peak memory {s['peak_mem_ratio']:.2f}x diffusers'" if "peak_mem_ratio" in s else ""
    met = {True: " -- **target met**", False: " -- **target not met**"}.get(
        s.get("target_met"), f" -- no verdict: {s['no_verdict']}" if "no_verdict" in s else "")
    lines = [f"- **{what}**: difflab {s['difflab_best']} / diffusers {s['diffusers_best']} = "
             f"**{s['ratio']:.2f}x** (target {s['target_ratio']}x{mem}){met}; against diffusers' fastest "
             f"row of any kind ({s['diffusers_best_any_row']}): {s['ratio_vs_best_any_row']:.2f}x"
             f"{_within_memory(s)}"]
    if _issue_reference_text(s):
        lines.append(f"  - {_issue_reference_text(s)}")
    if "profile" in s:
        t = s["profile"]["ms_per_iteration"]
        kinds = ", ".join(f"{k} {v:+.2f}" for k, v in s["profile"]["by_kind_ms_difflab_minus_diffusers"].items())
        lines.append(f"  - profiled, ms per iteration (wall / busy): difflab {t['difflab']['wall']:.2f} / "
                     f"{t['difflab']['busy']:.2f}, diffusers {t['diffusers']['wall']:.2f} / "
                     f"{t['diffusers']['busy']:.2f}; busy time by kind, difflab minus diffusers: {kinds}")
    return lines
