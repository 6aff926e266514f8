"""The results file: its meta, the rows stored by earlier runs (``--merge``), and writing it.

The format (``docs/benchmarks/throughput*.json``): ``{"meta": {...}, "rows": [...], "summary":
{...}}``; each row as ``measure.measure`` returns it plus its ``run``, the summary as
``verdict.summarize`` makes it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from difflab.files import atomic_write_text

from .env import Env, versions
from .rows import row_key


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1, default=str) + "\n")


def stored(path: Path, merge: bool) -> dict:
    """The results an earlier run stored at ``path`` when merging, else none."""
    return json.loads(path.read_text()) if merge and path.is_file() else {"rows": []}


def missing(specs: list[dict], old: dict) -> list[dict]:
    """The rows of ``specs`` that ``old`` lacks: never run, skipped, or failed."""
    done = {row_key(r) for r in old["rows"] if r.get("images_per_s")}
    return [s for s in specs if row_key(s) not in done]


def kept(old: dict, measured: list[dict]) -> list[dict]:
    """The stored rows this run has not measured (again): a skipped row keeps its old one."""
    again = {row_key(r) for r in measured}
    return [r for r in old["rows"] if row_key(r) not in again]


def new_result(env: Env, argv, params: dict, flops: dict) -> dict:
    """An empty result of this run: its meta (command, device, sizes, FLOPs, versions), no rows."""
    meta = {
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(env.device), "device_name": env.gpu_name,
        "peak_tflops_bf16": env.peak_tflops, "tiny": env.tiny, "network": env.net_name,
        "network_config": env.net, "parameters": params, "batch": env.batch, "sample_batch": env.sample_batch,
        "sample_steps": env.sample_steps, "train_iters": env.train_iters, "train_warmup": env.train_warmup,
        "sample_warmup": env.sample_warmup, "repeats": env.repeats, "dataset_size": env.dataset_size,
        "flops_per_image": flops, "versions": versions(),
        "graph_stream_workspace_bytes": env.graph_workspace,
    }
    return {"meta": meta, "rows": [], "summary": {}}


def earlier_runs(old_meta: dict) -> list[dict]:
    """The stored file's run and the runs it kept, newest first: their commands and skipped rows
    are not overwritten by a merge."""
    earlier = {k: v for k, v in old_meta.items() if k != "earlier_runs"}
    return [earlier, *old_meta.get("earlier_runs", [])]


def skipped_entry(spec: dict, reason: str) -> dict:
    return {"library": spec["library"], "what": spec["what"], "name": spec["name"], "reason": reason}
