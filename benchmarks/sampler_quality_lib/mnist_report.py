"""sampler_quality_mnist.{md,json,png}: the MNIST rows (``mnist.mnist_benchmark``) as a table of
the FID-like distance against NFE, as JSON, and as a plot. Reads rows; samples nothing."""

from __future__ import annotations

import json
from pathlib import Path

from .headline import label


def write_mnist(res: dict, out: Path) -> None:
    rows = res["rows"]
    floor = next(r for r in rows if r["library"] == "truth")["fid"]
    labels = list(dict.fromkeys(label(r) for r in rows if r["library"] != "truth"))
    (out / "sampler_quality_mnist.md").write_text("\n".join(_markdown(res, floor, labels)) + "\n")
    (out / "sampler_quality_mnist.json").write_text(json.dumps(res, indent=1) + "\n")
    _plot(res, floor, labels, out / "sampler_quality_mnist.png")


def _markdown(res: dict, floor: float, labels: list[str]) -> list[str]:
    rows = res["rows"]
    nfes = sorted({r["nfe_target"] for r in rows if r["library"] != "truth"})
    size = res.get("image_size", 28)
    lines = [
        f"# {res['metric']} vs NFE on a trained MNIST model",
        "",
        f"`{res['command']}` on {res['device']}, {res['n']} samples per entry ({res['seconds']:.0f} s); "
        f"floor ({res['n']} random held-out train5k digits vs t10k): {floor:.3f}.",
        "",
        f"Unconditional samples (the null label of a class-conditional model), no clipping of x0, "
        f"{size}x{size} images"
        + (" (the reference digits are downsampled to the same size and every image is upsampled to 28x28 "
           "for the classifier's features)" if size != 28 else "")
        + "; every sampler starts from the same noise. difflab's solvers use their default spacing "
        "(DDPM/DDIM trailing, the others uniform in log-SNR); `dpmpp_3m optimised` uses noise levels "
        "fitted to the network by `dl.samplers.optimize_sigmas` on 256 other noise draws; diffusers' "
        "schedulers run in their own loop on the same network.",
        "",
        "| sampler | " + " | ".join(map(str, nfes)) + " |",
        "|---|" + "---|" * len(nfes),
    ]
    for lab in labels:
        cells = [
            next((f"{r['fid']:.3f}" for r in rows if label(r) == lab and r["nfe_target"] == m), "")
            for m in nfes
        ]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return lines


def _plot(res: dict, floor: float, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lab in labels:
        pts = sorted((r["nfe"], r["fid"]) for r in res["rows"] if label(r) == lab)
        ax.plot(*zip(*pts), "-" if lab.startswith("difflab") else "--", marker="o", ms=3, label=lab)
    ax.axhline(floor, color="k", ls=":", lw=0.8, label="floor")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="NFE",
        ylabel=res["metric"],
        title="MNIST: FID-like distance vs NFE",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
