"""Training and sampling throughput: difflab's U-Net against diffusers' UNet2DModel, same run.

The network is DDPM's CIFAR-10 U-Net (Ho et al. 2020, App. B; 35,746,307 parameters in both
libraries: ch 128, mult (1, 2, 2, 2), 2 residual blocks per level, one-head attention at
16x16 and in the middle, dropout 0.1), on 32x32x3 images, batch 128. diffusers' side is the
configuration of google/ddpm-cifar10-32 (UNet2DModel, attention_head_dim None,
downsample_padding 0) with the same dropout. Both libraries run in this one process, on the
same device, batch and precision:

* train: images/s of the full optimizer step. difflab: ``Trainer.train_step`` -- what
  ``difflab train`` runs: draws, forward, eps-MSE, backward, grad-norm clipping at 1, AdamW,
  EMA update. diffusers: the step of its examples without the extras: DDPMScheduler.add_noise,
  UNet2DModel, MSE, backward, AdamW (no clipping, no EMA: difflab's step does strictly more).
* sample: images/s of a full 50-step DDIM batch. difflab: ``dl.sample(..., sampler="ddim",
  steps=50, clip_x0=1)``; diffusers: DDIMScheduler's loop as DDIMPipeline runs it
  (clip_sample as in the hub config).
* peak memory: the row's own, ``peak_mem_own_bytes`` = ``torch.cuda.max_memory_allocated`` from
  the row's start (building, compiling, warm-up and CUDA-graph capture included -- a graph
  allocates its working memory while it is captured and nothing when it replays) less what was
  allocated when it started (``allocated_before_bytes``: tensors earlier rows left behind, which
  the summary must not charge to whichever row happens to run later; ``left_allocated_bytes``
  and ``left_tensors`` name them), plus one cuBLAS workspace (``graph_stream_workspace_bytes``
  in the meta): each row's GEMMs run on one stream, the default one (eager and compiled steps)
  or difflab's graph stream (captured ones), and cuBLAS holds a workspace per stream for the
  life of the process. Both are allocated before the rows (the FLOP count,
  ``graph_stream_workspace``), so every row is charged the one it needs, whichever runs first.
  ``peak_mem_bytes`` is the raw peak, ``peak_mem_steady_bytes`` the timed iterations alone;
  ``allocated_between_iterations_bytes``, "held" in --report (less ``allocated_before_bytes``),
  what stays allocated between iterations: weights, optimizer state, EMA, graph outputs),
  FLOPs per image (``torch.utils.flop_counter`` on one eager step: forward + backward for
  training, forward x steps for sampling) and MFU against the GPU's dense bf16 peak.

Configurations: diffusers in fp32 (TF32), bf16 autocast and bf16 + torch.compile -- the
issue's reference rows, the best of which is "diffusers' best" -- plus an informational row
with channels_last; difflab as a ladder that adds one optimisation per row (bf16, fused AdamW,
channels_last, torch.compile of the model / of the loss step; for sampling CUDA graphs), so
each row's ratio to diffusers' best shows that option's effect.

    python benchmarks/throughput.py                          # everything (GPU)
    python benchmarks/throughput.py --what train             # one half; --merge adds to --out
    python benchmarks/throughput.py --what sample --merge
    python benchmarks/throughput.py --rows 'difflab/train/*' --profile prof/   # where time goes
    python benchmarks/throughput.py --rows 'diffusers/train/bf16+compile' '*' --time-budget 300
    python benchmarks/throughput.py --merge --missing        # the rows a budget skipped, later
    python benchmarks/throughput.py --device cpu             # tiny CPU configuration (CI)
    python benchmarks/throughput.py --report docs/benchmarks/throughput.json   # as Markdown

Prints a table and the ratios difflab / diffusers; writes JSON to --out after every row (a run
cut short keeps what it measured). ``--rows`` runs the rows in the order of its patterns, so the
ones that matter come first; with ``--time-budget`` a row starts only if it should end within the
budget (judged from the slowest row of its kind so far, or a guess), the others are listed as
skipped in the JSON, and ``--merge --missing`` measures them in a later run. A row whose options
include all of a failed row's is skipped too (it would fail the same way, after compiling).
``--profile DIR`` writes, per row, a torch.profiler table with device time split by kind of
kernel (and ``--trace`` a Chrome trace); ``--profile FILE.txt`` puts every row's table into that
one file. On a CPU (or with ``--tiny``) the network shrinks (ch 16, mult (1, 2), 8x8 images,
batch 4) so the whole script runs in seconds; those numbers test the code path, not the libraries.

The code: benchmarks/throughput_lib/ (its __init__ lists the modules): measuring (networks, rows,
speed, env, cases, memory, profiling, measure) apart from reporting and the issue's bookkeeping
(verdict, results, report), and a run's loop (runner). This file is the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # throughput_lib, when run or loaded as a file
    sys.path.insert(0, HERE)

from throughput_lib.networks import NETWORKS  # noqa: E402, F401  (benchmarks/group_norm.py, upsampling.py)
from throughput_lib.runner import Runner, check_run_options, report_or_run, run_parser  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = run_parser(__doc__, "only rows whose library/what/name matches, e.g. 'difflab/train/*' 'diffusers/*/bf16*'")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 128; tiny: 4)")
    ap.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default: --batch)")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps per sampled batch")
    ap.add_argument("--train-iters", type=int, default=None, help="optimizer steps per timed run (20; tiny 2)")
    ap.add_argument("--train-warmup", type=int, default=None, help="untimed steps first (5; tiny 1)")
    ap.add_argument("--sample-warmup", type=int, default=None, help="untimed batches first (2; tiny 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row; the median counts (5; tiny 2)")
    ap.add_argument("--dataset-size", type=int, default=None, help="images kept on the device (1024; tiny 64)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak for MFU (default: by GPU name; H100 SXM 989.4)")
    ap.add_argument("--profile", default=None, metavar="DIR", help="write a torch.profiler table per row here")
    ap.add_argument("--profile-iters", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="with --profile: also a Chrome trace per row")
    ap.add_argument("--out", default=None, help="JSON output (default docs/benchmarks/throughput.json; "
                                                "CPU/tiny runs: docs/benchmarks/throughput_tiny.json)")
    ap.add_argument("--merge", action="store_true", help="keep --out's rows that this run does not measure")
    ap.add_argument("--missing", action="store_true",
                    help="with --merge: only the selected rows that --out lacks (never run, skipped or failed)")
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="start a row only if it should end within this many seconds of the start; list "
                         "the others as skipped (measure them later with --merge --missing)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU runs: torch intra-op threads (default 1: on a shared machine, threads that "
                         "wait for each other cost more than they compute; 0 = torch's default)")
    ap.add_argument("--report", default=None, metavar="JSON",
                    help="measure nothing: print a results file as Markdown (for docs/benchmarks.md)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.missing and not args.merge:
        ap.error("--missing needs --merge (the rows missing from --out are measured and added to it)")
    check_run_options(ap, args)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    return report_or_run(args, lambda: Runner(args, argv).run())


if __name__ == "__main__":
    main()
