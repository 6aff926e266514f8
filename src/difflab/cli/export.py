"""``difflab export``: one trained network as a single portable ``.safetensors`` file.

    difflab export --ckpt runs/mnist_cond --out mnist_cond.safetensors              # EMA weights, fp32
    difflab export --ckpt runs/mnist_cond --out mnist_cond.safetensors --dtype fp16 # half the size
    difflab sample --ckpt mnist_cond.safetensors --label all --n 10 --guidance 3 --out rows.png

Beside the file goes its model card, ``mnist_cond.md``: the model, its training (steps, time, final
loss), the metrics of ``difflab eval`` of the checkpoint when there are any (``--metrics``, else
eval's default ``eval/<name>/metrics.json``), how to use it and the file's SHA-256
(``sha256sum -c mnist_cond.md`` checks it). A file of that name that difflab did not write is
never written over: the export is refused (move it away, or ``--no-card``).
"""

from __future__ import annotations

from ..training.checkpoint import EXPORT_DTYPES, export_model
from ..training.model_card import card_path

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's network to one .safetensors file (dl.load reads it)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint folder")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--dtype", default="fp32", choices=sorted(EXPORT_DTYPES),
                   help="weight precision in the file (fp16/bf16: half the size; loaded back as float32)")
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never a checkpoint's files)")
    p.add_argument("--metrics", default=None, help="the metrics.json of `difflab eval` of this checkpoint (or its "
                   "--out folder) for the model card (default: eval's default folder, when it measured this one)")
    p.add_argument("--no-card", action="store_true", help="write no model card (FILE.md) beside the file")
    p.set_defaults(func=_main)


def _main(args) -> int:
    out = export_model(args.ckpt, args.out, ema=not args.raw, dtype=args.dtype, force=args.force,
                       card=not args.no_card, metrics=args.metrics)
    size = out.stat().st_size / 2**20
    card = "" if args.no_card else f", model card {card_path(out)}"
    print(f"difflab export: {'raw' if args.raw else 'EMA'} weights of {args.ckpt} ({args.dtype}, {size:.1f} MiB) "
          f"-> {out}{card}  (sample: difflab sample --ckpt {out})")
    return 0
