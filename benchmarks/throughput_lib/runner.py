"""A whole run: the selected rows in order, within the time budget, each written to the results
file as soon as it is measured (a run cut short keeps what it measured)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import results
from .env import Env
from .measure import count_flops, measure
from .memory import graph_stream_workspace
from .networks import parameter_counts
from .report import markdown, print_table
from .rows import row_kind, row_specs, select_rows, skip_reason
from .verdict import run_id, summarize

REPO = Path(__file__).resolve().parents[2]
# the options that count something a row does or has (a batch, iterations, repeats, steps): below 1
# a row measures nothing
COUNTS = ("batch", "sample_batch", "train_iters", "repeats", "dataset_size", "sample_steps", "profile_iters")


def run_parser(doc: str, rows_help: str) -> argparse.ArgumentParser:
    """A benchmark's command line, described by the first paragraph of ``doc`` (the script's
    docstring), with the options every benchmark run has: where, which network size, which halves
    and rows (``rows_help``: what a pattern matches), whether diffusers' rows too."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny network on a GPU too (a smoke run)")
    ap.add_argument("--what", nargs="+", choices=("train", "sample"), default=["train", "sample"])
    ap.add_argument("--rows", nargs="+", default=None, metavar="GLOB", help=rows_help)
    ap.add_argument("--no-diffusers", action="store_true", help="difflab rows only (no ratios)")
    return ap


def check_run_options(ap: argparse.ArgumentParser, args: argparse.Namespace, warmups: bool = False) -> None:
    """Refuse by name, through ``ap.error``, what no run can honour: a ``--time-budget`` not > 0 s
    (no row would start) and a count (``COUNTS``) below 1; with ``warmups``, an untimed warm-up
    below 0. benchmarks/throughput.py's and benchmarks/dit_throughput.py's command lines."""
    if args.time_budget is not None and not args.time_budget > 0:
        ap.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    for name in COUNTS:
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name in ("train_warmup", "sample_warmup") if warmups else ():
        v = getattr(args, name)
        if v is not None and v < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0, got {v}")


def report_or_run(args: argparse.Namespace, run: Callable[[], dict]) -> dict:
    """A benchmark's ``main`` once its options are read. ``--report FILE``: measure nothing, print
    FILE as Markdown, its summary made from the rows by this version's rules (files written before
    them stored peaks that counted earlier rows' leftovers). Else ``run()``, and torch's thread
    count put back after it (a CPU run sets its own: ``--threads``)."""
    if args.report:
        result = json.loads(Path(args.report).read_text())
        result["summary"] = summarize(result["rows"])
        print(markdown(result), end="")
        return result
    threads = torch.get_num_threads()
    try:
        return run()
    finally:
        torch.set_num_threads(threads)


def _diffusers_available(args: argparse.Namespace, say) -> bool:
    if args.no_diffusers:
        return False
    try:
        import diffusers  # noqa: F401
    except ImportError:
        say("note: diffusers is not installed (pip install 'difflab[peers]'); difflab rows only")
        return False
    return True


class Runner:
    """One run of the rows ``args`` selects (``main``'s measuring half)."""

    def __init__(self, args: argparse.Namespace, argv) -> None:
        self.started = time.perf_counter()  # --time-budget counts from here
        self.args, self.argv = args, argv
        self.env = Env(args)
        self.say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
        default_out = "throughput_tiny.json" if self.env.tiny else "throughput.json"
        self.out = Path(args.out) if args.out else REPO / "docs" / "benchmarks" / default_out
        self.have_diffusers = _diffusers_available(args, self.say)

    def specs(self) -> list[dict]:
        """The rows to measure, in order."""
        args, env = self.args, self.env
        specs = [s for s in select_rows(row_specs(cpu=env.tiny and not env.cuda), args.rows)
                 if s["what"] in args.what and (self.have_diffusers or s["library"] != "diffusers")]
        if not specs:
            raise SystemExit("no rows selected: check --what / --rows")
        return specs

    def run(self) -> dict:
        args, env, say = self.args, self.env, self.say
        specs = self.specs()
        self.old = results.stored(self.out, args.merge)
        if args.missing:
            specs = results.missing(specs, self.old)
            if not specs:
                say(f"throughput: every selected row is already in {self.out}; nothing to measure")
                return self.old
        flops = {lib: count_flops(env, lib) for lib in sorted({s["library"] for s in specs})}
        env.graph_workspace = graph_stream_workspace(env)
        params = parameter_counts(env.net, self.have_diffusers)
        result = self.result = results.new_result(env, self.argv, params, flops)
        self.run_id = run_id(result["meta"]["date"], env.gpu_name)
        if args.merge and self.old.get("meta"):  # the earlier runs' commands and skipped rows, not overwritten
            result["meta"]["earlier_runs"] = results.earlier_runs(self.old["meta"])
        budget = f", time budget {args.time_budget:g} s" if args.time_budget else ""
        say(f"throughput: {len(specs)} rows on {env.gpu_name} ({env.net_name}, {params}){budget} -> {self.out}")
        skipped = result["meta"]["skipped"] = []
        self.measure_rows(specs, flops, skipped)
        result["rows"] = results.kept(self.old, result["rows"]) + result["rows"]
        result["summary"] = summarize(result["rows"])
        results.write(result, self.out)
        if skipped:
            say(f"throughput: {len(skipped)} rows skipped for the time budget; measure them later with "
                f"--merge --missing --out {self.out}")
        if not args.quiet:
            print_table(result)
        env.tmp.cleanup()
        return result

    def measure_rows(self, specs: list[dict], flops: dict, skipped: list[dict]) -> None:
        """Measure each row unless it is doomed or over the budget; write the file after each."""
        slowest: dict[tuple[str, bool], float] = {}  # seconds of the slowest row of each kind so far
        failed: list[dict] = []
        budget = self.args.time_budget
        for spec in specs:
            left = None if budget is None else budget - (time.perf_counter() - self.started)
            reason = skip_reason(spec, failed, slowest, left, self.env.tiny)
            if reason is not None:
                skipped.append(results.skipped_entry(spec, reason))
                self.say(f"  [skipped] {spec['what']:<6} {spec['library']:<9} {spec['name']:<28} {reason}")
                continue
            t0 = time.perf_counter()
            row = dict(measure(spec, self.env, flops), run=self.run_id)
            slowest[row_kind(spec)] = max(slowest.get(row_kind(spec), 0.0), time.perf_counter() - t0)
            if "error" in row:
                failed.append(spec)
            self.add(row)
            ips = f"{row['images_per_s']:.1f} img/s" if "images_per_s" in row else row.get("error", "?")[:120]
            self.say(f"  [{time.perf_counter() - t0:6.1f} s] {spec['what']:<6} {spec['library']:<9} "
                     f"{spec['name']:<28} {ips}")

    def add(self, row: dict) -> None:
        """A measured row into the results, and the file rewritten with it and the stored rows kept."""
        self.result["rows"].append(row)
        rows = results.kept(self.old, self.result["rows"]) + self.result["rows"]
        self.result["summary"] = summarize(rows)
        results.write(dict(self.result, rows=rows), self.out)
