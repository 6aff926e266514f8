"""``difflab eval``: how good is a trained model, in one command.

    difflab eval --ckpt runs/mnist --ref ../shared/data/mnist --n 10000 --sampler ddim --steps 50
    difflab eval --ckpt runs/mnist --sampler ddim,dpmpp_2m --sweep steps=10,20,50,100
    difflab eval --ckpt runs/mnist --sweep guidance=0,1,2,3,5

Images: FID, precision and recall (k = 3) in the features of a classifier trained by
``difflab train-classifier`` (labelled "FID (mnist-cnn features)") or of Inception-v3 when its
weights are given; the accuracy of conditional samples (the classifier's verdict against the
requested class); the floor (FID of held-out real images against the reference); bits/dim of
held-out images: the variational bound of the DDPM chain, the probability-flow ODE likelihood
(:mod:`difflab.evaluation.likelihood`) of any process, or both (``--likelihood``). 2D toys:
sliced Wasserstein, MMD, precision/recall and per-mode coverage against fresh draws. Writes
``metrics.json``, ``summary.md``, sweep plots and sample grids into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .. import data
from ..devices import resolve_device
from ..files import atomic_write_text
from ..data.grids import save_image_grid
from ..processes import model_attribute
from ..evaluation import CountedModel, report
from ..evaluation.likelihood import bits_per_dim as ode_bits_per_dim
from ..evaluation.plots import scatter_panels
from ..models.superres import NEEDS_LOWRES, lowres_model
from ..evaluation.classifier import ClassifierFeatures, load_classifier
from ..evaluation.fid import inception_features
from ..training import load as load_run
from ..training.generate import generate
from ._errors import check_memory
from .train_classifier import DEFAULT_MNIST_ROOT

__all__ = ["add_parser", "run_eval", "parse_sweep", "EvalSetting"]

SWEEP_KEYS = ("steps", "guidance")
# Held-out split (floor and bits/dim) and reference split per data set.
SPLITS = {"mnist": {"ref": "t10k", "heldout": "train5k"}}

PR_K = 3  # neighbours of the precision / recall radii (Kynkaanniemi et al. 2019)
# Likelihoods --likelihood computes: "auto" is the VLB for the DDPM chain, the ODE for the others.
LIKELIHOODS = ("auto", "vlb", "ode", "both")


def parse_sweep(text: str) -> tuple[str, list]:
    """``"steps=10,20,50"`` -> ("steps", [10, 20, 50]); ``"guidance=0,1,3"`` -> ("guidance", [0.0, 1.0, 3.0])."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or key not in SWEEP_KEYS or not values.strip():
        raise ValueError(f"--sweep must look like steps=10,20,50 or guidance=0,1,3 (keys: {', '.join(SWEEP_KEYS)}), got {text!r}")
    cast = int if key == "steps" else float
    try:
        out = [cast(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {key}: cannot read {values!r} as a list of {cast.__name__}s") from None
    if key == "steps" and any(v < 1 for v in out):
        raise ValueError(f"--sweep steps: every value must be >= 1, got {out}")
    return key, out


class EvalSetting(dict):
    """One way of sampling: sampler, steps, guidance (and the sweep it belongs to)."""


def _balanced_labels(n: int, num_classes: int) -> Tensor:
    return torch.arange(n) % num_classes


@torch.no_grad()
def draw_samples(run, n: int, sampler: str, steps: int, guidance: float, labels: Optional[Tensor],
                 seed: int, batch_size: int, device=None, eta: float = 0.0) -> tuple[Tensor, dict]:
    """n samples in batches (batch i seeded seed + i), with wall time and model evaluations."""
    model = CountedModel(run.ema_model)
    out, start = [], time.perf_counter()
    for b, i in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - i)
        lab = None if labels is None else labels[i : i + m]
        out.append(generate(model, run.proc, m, run.sample_shape, image_shape=run.image_shape, sampler=sampler,
                            steps=steps, guidance=guidance, labels=lab, seed=seed + b, eta=eta,
                            device=device, autoencoder=run.autoencoder).float().cpu())  # (latent runs: decoded)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return torch.cat(out), {"seconds": seconds, "model_calls": model.calls,
                            "calls_per_batch": model.calls / math.ceil(n / batch_size)}


def _ref_file(args) -> bool:
    """Whether --ref names a file of images (which has no splits), not a folder or a data set."""
    return bool(args.ref) and Path(args.ref).is_file()


def _dataset(run) -> str:
    return run.config.data.name


def load_images(name_or_path: Optional[str], run, split: Optional[str]) -> tuple[Tensor, Optional[Tensor], str]:
    """Reference images (and labels) from a folder of MNIST IDX files, a data set name, a .pt file
    of images, or (None) the checkpoint's own training data; returns (images, labels, description)."""
    cfg = run.config.data
    if name_or_path is None:
        name, kwargs = cfg.name, dict(cfg.kwargs)
        if split is not None:
            kwargs["split"] = split
    else:
        p = Path(name_or_path)
        if p.is_file():
            x, y = _read_ref_file(p)
            return _as_model_images(x, run, f"--ref {p}"), y, str(p)
        if p.is_dir():
            name, kwargs = "mnist", {"root": str(p), "split": split or "t10k"}
        elif name_or_path in data.registry.names():
            name = name_or_path
            kwargs = dict(cfg.kwargs) if cfg.name == name else {}
            if name == "mnist":
                kwargs.setdefault("root", DEFAULT_MNIST_ROOT)
                kwargs["split"] = split or "t10k"
        else:
            raise FileNotFoundError(
                f"--ref {name_or_path!r} is neither a file, a folder of MNIST IDX files, nor a data set "
                f"({', '.join(data.registry.names())})"
            )
    x, y = data.load(name, **kwargs)
    desc = f"{name} ({kwargs.get('split', 'all')})"
    return _as_model_images(x, run, "the reference images"), y, desc


_REF_HELP = ("--ref takes a .pt file holding a tensor of images [N, C, H, W] in [-1, 1] (or a dict with "
             "'images' and optionally 'labels'), a folder of MNIST IDX files, or a data set name")


def _read_ref_file(p: Path) -> tuple[Tensor, Optional[Tensor]]:
    """Images (and labels) from a ``--ref`` file written by ``torch.save``."""
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError (not a zip), EOFError, ...
        raise ValueError(f"--ref {str(p)!r} cannot be read by torch.load ({type(err).__name__}); "
                         f"{_REF_HELP}") from None
    if isinstance(obj, dict):
        if "images" not in obj:
            raise ValueError(f"--ref {str(p)!r} holds a dict with keys {sorted(map(str, obj))} but no 'images'; "
                             f"{_REF_HELP}")
        x, y = obj["images"], obj.get("labels")
    else:
        x, y = obj, None
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"--ref {str(p)!r}: expected a float tensor of images [N, C, H, W], got {got}; {_REF_HELP}")
    if y is not None and (not isinstance(y, Tensor) or y.shape != (len(x),)):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"--ref {str(p)!r}: 'labels' must be a tensor [{len(x)}] (one per image), got {got}")
    x = x.float()
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1 - 1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"--ref {str(p)!r}: images must lie in [-1, 1] as the samples do, got values in "
                         f"[{lo:.4g}, {hi:.4g}]; scale [0, 1] images by 2 * x - 1 and 0..255 ones by x / 127.5 - 1")
    if lo >= 0 and hi > 0:
        print(f"difflab eval: warning: --ref {str(p)!r} has no negative value (range [{lo:.4g}, {hi:.4g}]): if "
              "its images are in [0, 1], scale them by 2 * x - 1 (samples lie in [-1, 1])", file=sys.stderr)
    return x, y


def _as_model_images(x: Tensor, run, what: str) -> Tensor:
    """``x`` in the model's image shape (flat data reshaped), or ValueError naming ``what``."""
    image_shape = tuple(run.image_shape)
    if tuple(x.shape[1:]) != image_shape:
        if x[0].numel() == math.prod(image_shape):
            return x.reshape(len(x), *image_shape)
        raise ValueError(f"{what}: images of shape {tuple(x.shape[1:])} but the model makes {image_shape}")
    return x


def _feature_network(args, dataset: str):
    clf = None
    clf_dir = Path(args.classifier or f"classifiers/{dataset}")
    if (clf_dir / "classifier.json").is_file():
        clf = load_classifier(clf_dir)
    if args.features == "inception" or (args.features == "auto" and args.inception_weights):
        return inception_features(args.inception_weights), clf
    if clf is None:
        raise FileNotFoundError(
            f"no feature network: no classifier in {clf_dir}. Train one with "
            f"`difflab train-classifier --data {dataset} --out {clf_dir}` (a few minutes on a CPU), "
            "or pass --inception-weights PATH for Inception features"
        )
    return ClassifierFeatures(clf), clf


def _settings(args) -> list[EvalSetting]:
    samplers = [s for s in args.sampler.split(",") if s]
    base = [EvalSetting(sampler=s, steps=args.steps, guidance=args.guidance, sweep="base") for s in samplers]
    if not args.sweep:
        return base
    out = []
    for text in args.sweep:
        key, values = parse_sweep(text)
        for s in samplers:
            for v in values:
                setting = EvalSetting(sampler=s, steps=args.steps, guidance=args.guidance, sweep=key)
                setting[key] = v
                out.append(setting)
    return out


def run_eval(args) -> dict:
    """The eval command's work, from parsed arguments; returns what it writes to metrics.json."""
    if args.n < PR_K + 1:
        raise ValueError(f"--n must be >= {PR_K + 1} (precision and recall use each sample's {PR_K} nearest "
                         f"neighbours among the others), got {args.n}")
    for flag, value in (("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--bpd-n", args.bpd_n), ("--bpd-timesteps", args.bpd_timesteps)):
        if value < 0:
            raise ValueError(f"{flag} must be >= 0 (0: {'skip' if flag == '--bpd-n' else 'all T'}), got {value}")
    if args.ode_steps < 1:
        raise ValueError(f"--ode-steps (RK4 steps of the probability-flow ODE) must be >= 1, got {args.ode_steps}")
    if args.bpd_bins is not None and args.bpd_bins < 2:  # 0 read as "unset" (17 or 256) before
        raise ValueError(f"--bpd-bins (levels of the data) must be >= 2, got {args.bpd_bins}; 256 for 8-bit "
                         "images, 17 for digits (leave it out for the data set's own)")
    args = argparse.Namespace(**vars(args))  # the caller's namespace keeps its --device text
    args.device = resolve_device(args.device, "--device", default=torch.device("cpu"))
    out = Path(args.out or f"eval/{Path(args.ckpt).name}")
    run = load_run(args.ckpt, device=args.device)
    sampler, steps = run.sampling_defaults()  # (a few-step student's own)
    args.sampler = args.sampler or sampler
    args.steps = args.steps if args.steps is not None else steps
    if lowres_model(run.ema_model) is not None:  # before the feature network is looked for
        raise ValueError(NEEDS_LOWRES)
    likelihoods = likelihood_methods(args.likelihood, run.proc) if args.bpd_n > 0 else []
    if likelihoods and run.autoencoder is not None:  # its bound is on latents, not on the pixels' levels
        print("note: no bits/dim for a latent diffusion model (its likelihood is of the autoencoder's latents, not "
              "of the images' pixels); FID and the rest measure its decoded images", file=sys.stderr)
        likelihoods = []
    # the samples are kept on the CPU (in batches, then gathered: twice at once), before hours of sampling;
    # images, not a latent run's latents: each batch is decoded as it is made, and the images are kept
    check_memory(2 * args.n * math.prod(run.image_shape) * 4, torch.device("cpu"), f"--n {args.n}",
                 "lower --n (FID and precision/recall settle with a few thousand samples)")

    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    settings = _settings(args)
    dataset = _dataset(run)
    toy = dataset == "toy2d"
    nc = run.num_classes
    result: dict = {"ckpt": str(Path(args.ckpt).resolve()), "dataset": dataset, "n": args.n, "seed": args.seed,
                    "num_classes": nc, "rows": []}
    if toy:
        toy_name = run.config.data.kwargs.get("dataset", "swiss_roll")
        g = torch.Generator().manual_seed(args.seed + 10_007)
        ref, ref_labels = data.toy2d.make(toy_name, max(args.n, 2000), g, labels=True)
        other = data.toy2d.make(toy_name, args.n, g)
        result["reference"] = f"fresh draws of {toy_name}"
        result["floor"] = report.toy_metrics(other, ref, ref_labels, k=PR_K)
        ref_obj = None
    else:
        ref_split = args.ref_split or SPLITS.get(dataset, {}).get("ref")
        ref, ref_labels, desc = load_images(args.ref, run, ref_split)
        if len(ref) < PR_K + 1:
            raise ValueError(f"the reference {desc} holds {len(ref)} images; precision and recall need "
                             f"{PR_K + 1} at least (thousands for a meaningful FID)")
        features, clf = _feature_network(args, dataset)
        ref_obj = report.ImageReference(ref, features, clf, batch_size=args.batch_size, k=PR_K)
        dims = ref_obj.feats.shape[1]
        if args.n < dims and not args.quiet:
            print(f"difflab eval: note: {args.n} samples are fewer than the {dims} feature dimensions: the FID "
                  "is biased upward at this --n; compare FIDs at equal --n only", file=sys.stderr)
        result["reference"] = desc
        result["metric"] = ref_obj.fid_name
        if clf is not None:
            result["classifier"] = {k: clf.meta.get(k) for k in ("dataset", "train_split", "test_split", "test_accuracy")}
        floor_split = args.floor_split or SPLITS.get(dataset, {}).get("heldout")
        if floor_split and floor_split != "none" and _ref_file(args):
            # a file has no held-out split: the floor would score the reference against itself
            result["floor_skipped"] = f"--ref is a file ({args.ref}): no held-out split of it for a floor"
        elif floor_split and floor_split != "none":
            held, held_labels, hdesc = load_images(args.ref if args.ref else None, run, floor_split)
            result["floor"] = {"images": hdesc, **ref_obj(held, held_labels)}
    for setting in settings:
        guidance = float(setting["guidance"])
        labels = _balanced_labels(args.n, nc) if (nc and args.labels == "balanced") else None
        if labels is None and guidance != 1.0:
            raise ValueError(f"guidance {guidance} needs a class-conditional model and --labels balanced")
        samples, timing = draw_samples(run, args.n, setting["sampler"], int(setting["steps"]), guidance, labels,
                                       args.seed, args.batch_size, args.device, args.eta)
        row = dict(setting, **timing)
        if toy:
            row.update(report.toy_metrics(samples, ref, ref_labels, k=PR_K))
            scatter_panels({"data": ref[: args.n], f"{setting['sampler']}, {setting['steps']} steps": samples},
                           out / "samples" / f"{setting['sampler']}_{setting['steps']}_g{guidance:g}.png")
        else:
            row.update(ref_obj(samples, labels))
            k = min(100, args.n)
            save_image_grid(samples[:k], out / "samples" / f"{setting['sampler']}_{setting['steps']}_g{guidance:g}.png",
                            nrow=10)
        result["rows"].append(row)
        if not args.quiet:
            main = f"FID {row['fid']:.3f}" if "fid" in row else f"SW {row['sliced_wasserstein']:.4f}"
            print(f"  {setting['sampler']:>9} steps={setting['steps']:<4} guidance={guidance:<4g} {main} "
                  f"({timing['seconds']:.1f} s)", flush=True)
    if not toy and likelihoods:
        images = heldout_images(run, args, dataset)
        found = {m: (vlb_bits_per_dim if m == "vlb" else pf_ode_bits_per_dim)(run, args, *images) for m in likelihoods}
        result["bits_per_dim"] = found[likelihoods[0]]
        if len(found) == 2:
            result["bits_per_dim_ode"] = found["ode"]
    write_outputs(result, out, toy)
    return result


def likelihood_methods(choice: str, proc) -> list[str]:
    """The bits/dim ``--likelihood`` asks for, in report order: "vlb" (the DDPM chain's variational
    bound), "ode" (the probability-flow ODE, any process); "auto": the first for the chain, else the second."""
    if choice == "auto":
        return ["vlb"] if proc.discrete else ["ode"]
    if choice in ("vlb", "both") and not proc.discrete:
        raise ValueError(f"--likelihood {choice}: the variational bound is the discrete DDPM chain's, and this run's "
                         f"process is {type(proc).__name__}; use --likelihood ode (the probability-flow ODE, "
                         "any process) or auto")
    return ["vlb", "ode"] if choice == "both" else [choice]


def heldout_images(run, args, dataset: str) -> tuple[Tensor, Optional[Tensor], str, int]:
    """The held-out images of bits/dim, their labels (the null label for a conditional model: the
    unconditional likelihood), a description and the levels of the data."""
    split = args.bpd_split or SPLITS.get(dataset, {}).get("heldout")
    # held-out images of the reference's source; a --ref file has no split: the run's own data
    x, _, desc = load_images(args.ref if args.ref and not _ref_file(args) else None, run, split)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # splits may be sorted by class
    x = x[order[: args.bpd_n]].reshape(-1, *run.sample_shape)
    bins = args.bpd_bins if args.bpd_bins is not None else (17 if dataset == "digits" else 256)
    cond = None if not run.num_classes else torch.full((len(x),), run.num_classes, dtype=torch.long)
    return x, cond, desc, bins


def _in_batches(fn, x: Tensor, cond: Optional[Tensor], args) -> tuple[Tensor, float]:
    """fn(x batch, cond batch) over ``x`` in --batch-size batches on --device; values and seconds."""
    device = args.device or "cpu"
    vals, start = [], time.perf_counter()
    for i in range(0, len(x), args.batch_size):
        c = None if cond is None else cond[i : i + args.batch_size].to(device)
        vals.append(fn(x[i : i + args.batch_size].to(device), c).cpu())
    return torch.cat(vals), time.perf_counter() - start


def _summary(v: Tensor, desc: str, cond: Optional[Tensor], bins: int, seconds: float) -> dict:
    return {"images": desc, "n": len(v), "mean": float(v.mean()), "stderr": float(v.std() / math.sqrt(len(v))),
            "bins": bins, "cond": "unconditional (null label)" if cond is not None else "unconditional",
            "seconds": seconds}


def vlb_bits_per_dim(run, args, x: Tensor, cond: Optional[Tensor], desc: str, bins: int) -> dict:
    """The variational bound on held-out images, in bits/dim (mean and standard error)."""
    g = torch.Generator().manual_seed(args.seed)
    K = None if args.bpd_timesteps == 0 else args.bpd_timesteps
    v, seconds = _in_batches(lambda xb, c: run.proc.vlb_bits_per_dim(
        run.ema_model, xb, c, num_timesteps=K, clip_x0=True, bins=bins, generator=g), x, cond, args)
    learned = bool(model_attribute(run.ema_model, "learn_sigma"))  # (vlb_bits_per_dim then reads the network's own)
    return {"method": "vlb", **_summary(v, desc, cond, bins, seconds), "timesteps": "all" if K is None else K,
            "variance": "learned" if learned else "posterior"}


def pf_ode_bits_per_dim(run, args, x: Tensor, cond: Optional[Tensor], desc: str, bins: int) -> dict:
    """The probability-flow ODE likelihood of held-out images in bits/dim (mean and standard error):
    ``--ode-steps`` RK4 steps, Hutchinson's divergence with one Rademacher probe per image and
    uniform dequantisation within each level's bin, so that in expectation it bounds -log2 P of
    the ODE model's grid probability from above, as the variational bound does the chain's."""
    device = torch.device(args.device or "cpu")
    g = torch.Generator(device=device).manual_seed(args.seed)
    v, seconds = _in_batches(lambda xb, c: ode_bits_per_dim(
        run.ema_model, run.proc, xb, c, bins=bins, dequantize=True, generator=g, steps=args.ode_steps,
        divergence="hutchinson"), x, cond, args)
    return {"method": "pf-ode", **_summary(v, desc, cond, bins, seconds), "steps": args.ode_steps,
            "divergence": "hutchinson (1 Rademacher probe)", "dequantized": True}


def write_outputs(result: dict, out: Path, toy: bool) -> None:
    report.write_json(out / "metrics.json", result)
    rows = result["rows"]
    lines = [f"# Evaluation of {result['ckpt']}", "",
             f"Reference: {result['reference']}; n = {result['n']} samples per setting; seed {result['seed']}.", ""]
    if toy:
        cols = ["sampler", "steps", "guidance", "sliced_wasserstein", "mmd2", "precision", "recall",
                "modes_covered", "num_modes", "seconds"]
        heads = ["sampler", "steps", "guidance", "sliced W2", "MMD^2", "precision", "recall", "modes covered",
                 "modes", "seconds"]
        floor_cols = cols[3:9]
    else:
        name = result["metric"]
        cols = ["sampler", "steps", "guidance", "fid", "precision", "recall", "accuracy", "model_calls", "seconds"]
        heads = ["sampler", "steps", "guidance", name, "precision", "recall", "accuracy", "model calls", "seconds"]
        floor_cols = ["fid", "precision", "recall", "accuracy"]
        if "classifier" in result:
            c = result["classifier"]
            lines += [f"Features: {name.split('(')[1].rstrip(')')} (classifier trained on {c['dataset']} {c['train_split']}, "
                      f"test accuracy {100 * c['test_accuracy']:.2f}% on {c['test_split']}). These are not Inception FIDs.", ""]
    if "floor" in result:
        lines += ["## Floor (real data against the reference)", "",
                  report.markdown_table([result["floor"]], floor_cols,
                                        [h for c, h in zip(cols, heads) if c in floor_cols]), ""]
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        sub = [r for r in rows if r["sweep"] == sweep]
        lines += [f"## {'Samples' if sweep == 'base' else 'Sweep over ' + sweep}", "", report.markdown_table(sub, cols, heads), ""]
        if sweep == "steps":
            ys = ["sliced_wasserstein"] if toy else ["fid"]
            report.plot_sweep(sub, "steps", ys, out / "sweep_steps.png", group="sampler", logx=True,
                              labels={"fid": result.get("metric", "FID"), "steps": "solver steps"})
            lines += ["![metric vs steps](sweep_steps.png)", ""]
        if sweep == "guidance":
            ys = ["sliced_wasserstein"] if toy else ["fid", "accuracy"]
            report.plot_sweep(sub, "guidance", [y for y in ys if y in sub[0]], out / "sweep_guidance.png", group="sampler",
                              labels={"fid": result.get("metric", "FID"), "guidance": "guidance scale w"})
            lines += ["![metric vs guidance](sweep_guidance.png)", ""]
    likelihoods = [result[k] for k in ("bits_per_dim", "bits_per_dim_ode") if k in result]
    if likelihoods:
        lines += ["## Likelihood", ""]
    for b in likelihoods:
        if b["method"] == "vlb":
            lines += [f"Variational bound on {b['n']} held-out images ({b['images']}): **{b['mean']:.3f} ± {b['stderr']:.3f} bits/dim** "
                      f"({b['cond']}; {b['timesteps']} KL terms{' (stratified estimate)' if b['timesteps'] != 'all' else ''}; "
                      f"{b['bins']}-level discretized decoder).", ""]
        else:
            lines += [f"Probability-flow ODE on {b['n']} held-out images ({b['images']}): **{b['mean']:.3f} ± {b['stderr']:.3f} "
                      f"bits/dim** ({b['cond']}; {b['steps']} RK4 steps, {b['divergence']}; uniformly dequantised "
                      f"{b['bins']}-level data).", ""]
    atomic_write_text(out / "summary.md", "\n".join(lines))


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FID / precision / recall / accuracy / bits-per-dim of a checkpoint, with sweeps")
    p.add_argument("--ckpt", required=True, help="run or checkpoint folder (from difflab train)")
    p.add_argument("--ref", default=None,
                   help="reference images: a folder of MNIST IDX files, a data set name, or a .pt file (default: the training data)")
    p.add_argument("--ref-split", default=None, help="split of the reference (mnist: t10k)")
    p.add_argument("--floor-split", default=None, help="held-out split for the floor (mnist: train5k; 'none' to skip)")
    p.add_argument("--n", type=int, default=10000, help="samples per setting (default 10000)")
    p.add_argument("--sampler", help="sampler, or several separated by commas (default: ddim; a few-step "
                   "student's own)")
    p.add_argument("--steps", type=int, help="default: 50; a few-step student's own")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--labels", default="balanced", choices=("balanced", "none"),
                   help="conditional models: equal numbers of each class (default) or the null label")
    p.add_argument("--sweep", action="append", default=[], help="steps=10,20,50,100 or guidance=0,1,2,3,5 (repeatable)")
    p.add_argument("--features", default="auto", choices=("auto", "cnn", "inception"))
    p.add_argument("--classifier", default=None, help="classifier folder (default: classifiers/<dataset>)")
    p.add_argument("--inception-weights", default=None, help="FID Inception weights (.pth); implies Inception features")
    p.add_argument("--bpd-n", type=int, default=256, help="held-out images for bits/dim (0: skip)")
    p.add_argument("--bpd-split", default=None, help="held-out split for bits/dim (mnist: train5k)")
    p.add_argument("--bpd-timesteps", type=int, default=50, help="KL terms per image (stratified); 0: all T")
    p.add_argument("--bpd-bins", type=int, default=None, help="levels of the data (256; digits: 17)")
    p.add_argument("--likelihood", default="auto", choices=LIKELIHOODS,
                   help="bits/dim by the DDPM chain's variational bound (vlb), the probability-flow ODE of any "
                        "process (ode) or both; auto: vlb for the DDPM chain, ode otherwise")
    p.add_argument("--ode-steps", type=int, default=64, help="RK4 steps of the probability-flow ODE (4 network "
                   "evaluations each, with a backward pass)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--out", default=None, help="output folder (default: eval/<ckpt name>)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_main)


def _main(args) -> int:
    res = run_eval(args)
    out = Path(args.out or f"eval/{Path(args.ckpt).name}")
    if "floor" in res and "fid" in res["floor"]:
        print(f"floor: {res['metric']} of {res['floor']['images']} = {res['floor']['fid']:.3f}")
    for key in ("bits_per_dim", "bits_per_dim_ode"):
        if key in res:
            b = res[key]
            how = "variational bound" if b["method"] == "vlb" else "probability-flow ODE"
            print(f"bits/dim ({how}): {b['mean']:.3f} ± {b['stderr']:.3f} on {b['n']} held-out images")
    print(f"wrote {out / 'metrics.json'} and {out / 'summary.md'}")
    return 0
