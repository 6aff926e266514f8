"""The samplers on a trained MNIST network: an FID-like distance (a small MNIST CNN's features,
``difflab train-classifier``) against NFE, difflab's samplers and diffusers' on the same network
and the same noise. Unconditional samples (the null label for a class-conditional model).
GPU-sized by default (``--n 10000``); any size runs on the CPU."""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import torch
from torch import Tensor

import difflab as dl

from .measure import DIFFLAB_CURVES
from .samplers import diffusers_installed, diffusers_loop

DIFFUSERS_ENTRIES = [("DDIM", "leading"), ("DPM++ 2M", "lu"), ("DEIS 3", "exponential")]


class MnistBench:
    """The run, the classifier's reference statistics of real digits, and the shared noise."""

    def __init__(self, args) -> None:
        from difflab import data
        from difflab.evaluation.classifier import AtResolution, ClassifierFeatures, load_classifier
        from difflab.evaluation.report import ImageReference

        self.args = args
        self.device = device = torch.device(args.device)
        run = self.run = dl.load(args.mnist, device=device)
        self.model, self.proc, self.n = run.ema_model, run.proc, args.n
        # a reduced-size run (14x14) is compared with real digits at its size
        size = self.size = run.image_shape[-1]
        clf = load_classifier(args.classifier)
        feats = ClassifierFeatures(AtResolution(clf, 28) if size != 28 else clf, name="mnist-cnn").to(device)
        kw = {"image_size": size} if size != 28 else {}
        t10k, _ = data.load("mnist", root=args.mnist_root, split="t10k", **kw)
        self.held, _ = data.load("mnist", root=args.mnist_root, split="train5k", **kw)
        self.ref = ImageReference(t10k, feats, batch_size=args.batch)
        k = getattr(self.model, "num_classes", None)
        g = torch.Generator().manual_seed(1)
        self.noise = torch.randn(self.n, *run.sample_shape, generator=g)
        self.opt_noise = torch.randn(min(256, self.n), *run.sample_shape, generator=g).to(device)
        self.null = None if k is None else torch.full((args.batch,), k, dtype=torch.long, device=device)
        self.rows: list[dict] = []

    def cond(self, n: int) -> Optional[Tensor]:
        """The null label for ``n`` images (None: an unconditional model)."""
        return None if self.null is None else self.null[:n]

    def net(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The network as diffusers' loop calls it: ``net(x_t, t)``, the null label added."""
        return self.model(x_t, t) if self.null is None else self.model(x_t, t, self.cond(len(x_t)))

    def images(self, draw: Callable) -> tuple[Tensor, int]:
        """``draw(noise)`` over the shared noise in batches: the images, and the evaluations a batch took."""
        out, calls = [], 0
        for i in range(0, self.n, self.args.batch):
            x, c = draw(self.noise[i : i + self.args.batch].to(self.device))
            out.append(x.float().cpu())
            calls = c
        return torch.cat(out).reshape(self.n, *self.run.image_shape), calls

    def record(self, library: str, method: str, spacing, nfe: int, draw: Callable) -> None:
        t0 = time.time()
        x, calls = self.images(draw)
        row = dict(
            library=library,
            method=method,
            spacing=spacing,
            nfe=calls,
            nfe_target=nfe,
            fid=self.ref(x)["fid"],
            seconds=round(time.time() - t0, 1),
        )
        self.rows.append(row)
        if not self.args.quiet:
            print(
                f"mnist {library:9s} {method:20s} {str(spacing):10s} NFE {calls:4d} "
                f"{self.ref.fid_name} {row['fid']:.3f}",
                flush=True,
            )

    def floor(self) -> None:
        """Real digits against real digits: n random held-out train5k digits (sorted by class) vs t10k."""
        pick = torch.randperm(len(self.held), generator=torch.Generator().manual_seed(0))[: self.n]
        fid = self.ref(self.held[pick])["fid"]
        self.rows.append(dict(library="truth", method="train5k vs t10k", spacing=None, nfe=0, fid=fid))

    def difflab_entries(self, nfe: int) -> None:
        """difflab's samplers at their default spacings."""
        for label, sampler, spacing in DIFFLAB_CURVES:
            spacing = spacing or dl.samplers.SAMPLERS[sampler].default_spacing
            steps = (nfe + 1) // 2 if sampler == "heun" else nfe
            self.record(
                "difflab",
                label,
                spacing,
                nfe,
                lambda z: (
                    dl.sample(self.model, self.proc, z.shape, sampler, steps, cond=self.cond(len(z)), noise=z,
                              spacing=spacing),
                    steps if sampler != "heun" else 2 * steps - 1,
                ),
            )

    def optimised_entry(self, nfe: int) -> None:
        """dpmpp_3m on noise levels fitted to the network on 256 other noise draws."""
        sig = dl.samplers.optimize_sigmas(
            self.model,
            self.proc,
            self.opt_noise.shape,
            nfe,
            "dpmpp_3m",
            noise=self.opt_noise,
            cond=self.cond(len(self.opt_noise)),
            max_evals=self.args.max_evals * nfe,
        )
        self.record(
            "difflab",
            "dpmpp_3m optimised",
            "optimised",
            nfe,
            lambda z: (
                dl.sample(self.model, self.proc, z.shape, "dpmpp_3m", cond=self.cond(len(z)), noise=z,
                          sigmas=sig),
                nfe,
            ),
        )

    def diffusers_entries(self, nfe: int) -> None:
        """diffusers' schedulers in their own loop on the same network."""
        for name, spacing in DIFFUSERS_ENTRIES:
            self.record(
                "diffusers",
                name,
                spacing,
                nfe,
                lambda z: diffusers_loop(self.net, self.proc, z, name, nfe, spacing),
            )


def mnist_benchmark(args) -> dict:
    """Every entry at each NFE of ``args.nfe`` up to 100 (else 10): the rows and the run's facts."""
    bench = MnistBench(args)
    t_start = time.time()
    bench.floor()
    nfes = [x for x in args.nfe if x <= 100] or [10]
    with torch.no_grad():
        for nfe in nfes:
            bench.difflab_entries(nfe)
            if nfe <= args.optimise_up_to:
                bench.optimised_entry(nfe)
            if diffusers_installed():
                bench.diffusers_entries(nfe)
    return {
        "command": "python " + " ".join(["benchmarks/sampler_quality.py", *sys.argv[1:]]),
        "image_size": bench.size,
        "metric": bench.ref.fid_name,
        "n": bench.n,
        "device": str(bench.device),
        "seconds": round(time.time() - t_start, 1),
        "rows": bench.rows,
    }
