"""``difflab sample``: draw samples from a trained checkpoint into an image grid.

    difflab sample --ckpt runs/digits --n 64 --sampler ddim --steps 50 --guidance 3 --label 7 --seed 0 --out grid.png
    difflab sample --ckpt runs/digits --label all --n 10 --guidance 3 --out rows.png   # a row per class
    difflab sample --ckpt runs/mnist_cond --device cuda --fast --n 1024 --out grid.png  # cli/speed.py
    difflab sample --ckpt runs/digits_uncond --classifier runs/digits_uncond/noisy_classifier \
        --classifier-scale 4 --label all --n 10 --out guided.png      # classifier guidance (docs/guidance.md)
    difflab sample --ckpt runs/moving_digits --n 4 --label 3 --out clips.mp4   # clips (.gif, .mp4 or a .png grid)

Classifier guidance (Dhariwal & Nichol 2021) needs a noise-aware classifier of the run's data and
process (``difflab train-classifier --noisy --ckpt RUN --out DIR``) and --label: it guides an
unconditional model, or a conditional one together with classifier-free guidance (--guidance).
"""

from __future__ import annotations

import io
import math
import sys
import warnings
from pathlib import Path

import torch

from ..devices import resolve_device
from ..data.clips import check_video_or_image_path, save_clips
from ..data.grids import make_parent
from ..files import atomic_write_bytes
from ..samplers import SAMPLERS, check_classifier, sample
from ..samplers.ddpm import VARIANCES
from ..training.checkpoint import load
from ..training.noisy_classifier import load_noisy_classifier
from ..training.generate import class_rows, prompts_for, save_grid, split_prompt
from ..training.latent import decode_latents
from ._errors import check_memory
from .speed import accelerated, add_speed_args

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a trained checkpoint into a PNG grid",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="run folder, checkpoint folder or exported .safetensors file")
    p.add_argument("--n", type=int, default=64, help="number of samples (with --label all: per class)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS),
                   help="default: ddim; a distilled or consistency-trained student's own (consistency, or ddim)")
    p.add_argument("--steps", type=int, help="default: 50; a student's own (its config's sample.steps)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--variance", choices=VARIANCES, default=None,
                   help="DDPM's step variance: posterior (beta~), beta, or learned (default for a network that "
                        "learns its variance, improved DDPM; posterior otherwise)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--classifier", default=None, metavar="DIR",
                   help="noise-aware classifier for classifier guidance (difflab train-classifier --noisy)")
    p.add_argument("--classifier-scale", type=float, default=None,
                   help="classifier guidance scale s (default 1 with --classifier; 0 = none)")
    p.add_argument("--label", default=None,
                   help="class of every sample, or 'all' for a row per class (conditional models)")
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="a text model's caption, e.g. \"a thin 3 at the top\"; repeat it for a row each "
                        "(--n samples per prompt; \"\" is the empty caption; \"a 7 AND bold\" composes two "
                        "prompts' guidance)")
    p.add_argument("--negative-prompt", action="append", default=None, metavar="TEXT",
                   help="what guidance moves away from, in place of the empty caption (e.g. \"bold strokes\"): "
                        "once for every --prompt, or once per --prompt, in order; needs --guidance != 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-x0", type=float, default=None,
                   help="clamp each step's x0 estimate to [-c, c] (default: the run's sample.clip_x0)")
    p.add_argument("--no-clip", action="store_true", help="no x0 clipping, whatever the run's config says")
    p.add_argument("--nrow", type=int, help="images per grid row (default: about sqrt(n))")
    p.add_argument("--device", default="cpu")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--save-tensor", metavar="FILE", help="also save the samples as a torch tensor (.pt)")
    p.add_argument("--out", default="samples.png",
                   help="PNG grid to write (a video model: clips.gif or clips.mp4 playing side by side, or a PNG)")
    add_speed_args(p)
    p.set_defaults(func=_main)


def _main(args) -> int:
    # everything that can be checked is checked before sampling, so a typo costs no samples
    if args.nrow is not None and args.nrow < 1:
        raise ValueError(f"--nrow (images per grid row) must be >= 1, got {args.nrow}")
    out = check_video_or_image_path(args.out, "--out", mkdir=True)  # .mp4: imageio-ffmpeg checked here
    tensor_out = _tensor_path(args.save_tensor) if args.save_tensor is not None else None
    device = resolve_device(args.device, "--device")
    run = load(args.ckpt, device=device)
    sampler, steps = run.sampling_defaults()  # a student keeps the sampler and steps it was made for
    args.sampler = args.sampler or sampler
    args.steps = args.steps if args.steps is not None else steps
    if args.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {args.steps}")
    for note in _student_notes(run.config, args):
        print(f"note: {note}", file=sys.stderr)
    deterministic = not SAMPLERS[args.sampler].stochastic({"eta": args.eta})
    net = accelerated(run.model if args.raw else run.ema_model, args, device, deterministic)
    if len(run.image_shape) not in (3, 4) and tensor_out is None:
        raise ValueError(f"{args.ckpt} makes samples of shape {tuple(run.image_shape)}, neither images nor clips, so "
                         "there is no picture to write; pass --save-tensor FILE.pt")
    if len(run.image_shape) == 4 and out.suffix.lower() not in (".gif", ".mp4", ".png"):
        raise ValueError(f"{args.ckpt} makes clips [frames, C, H, W]: --out must be a .gif or an .mp4 (the clips "
                         f"playing side by side; MP4 is lossy) or a .png (a clip a row, its frames across), got "
                         f"{str(out)!r}")
    if len(run.image_shape) != 4 and out.suffix.lower() == ".mp4":
        raise ValueError(f"--out {str(out)!r}: an MP4 is for a video model's clips; {args.ckpt} makes samples of shape "
                         f"{tuple(run.image_shape)}: write a picture such as grid.png")
    options = {}
    if args.variance is not None:
        if args.sampler != "ddpm":
            raise ValueError(f"--variance chooses DDPM's step variance; --sampler {args.sampler} has none: add "
                             "--sampler ddpm or drop --variance")
        options["variance"] = args.variance
    labels, n, nrow = None, args.n, args.nrow
    text = run.tokenizer is not None
    prompts = _prompts(args, run, text)
    negative = _negative_prompts(args, run, prompts)
    if prompts is not None:
        n, nrow = len(prompts), nrow or args.n
    classifier = _classifier(args, run, device)
    if classifier is not None and args.label is None:
        raise ValueError(f"--classifier guides towards classes: add --label (0..{classifier.num_classes - 1}, or "
                         "'all' for a row per class)")
    if classifier is not None and run.num_classes is None and args.guidance != 1.0:
        raise ValueError(f"--guidance {args.guidance:g} (classifier-free guidance) needs a class-conditional model; "
                         f"{args.ckpt} is unconditional: guide it with --classifier-scale alone")
    if args.label is None and prompts is None and args.guidance != 1.0:
        if text:
            raise ValueError(f"--guidance {args.guidance:g} needs --prompt: the caption to guide towards, e.g. "
                             "--prompt \"a bold 7 on the left\"")
        if run.num_classes is None:
            raise ValueError(f"--guidance {args.guidance:g} needs a class-conditional model; {args.ckpt} is "
                             "unconditional: leave --guidance at 1")
        raise ValueError(f"--guidance {args.guidance:g} needs --label: the class to guide towards "
                         f"(0..{run.num_classes - 1}), or 'all' for a row per class")
    if args.label is not None:
        classes = run.num_classes if classifier is None else classifier.num_classes
        if classes is None:
            raise ValueError(f"--label needs a class-conditional model or --classifier; {args.ckpt} is unconditional")
        if args.label == "all":
            labels = class_rows(classes, args.n)
            n, nrow = len(labels), nrow or args.n
        else:
            try:
                labels = int(args.label)
            except ValueError:
                raise ValueError(f"--label must be a class index 0..{classes - 1} or 'all', "
                                 f"got {args.label!r}") from None
            if classifier is not None and not 0 <= labels < classes:
                raise ValueError(f"--label must be a class index 0..{classes - 1} (the classifier's classes) or "
                                 f"'all', got {labels}")
    # the samples and the noise, and each step the network's input and output at least (its activations
    # come on top): a batch of n, 2n under guidance, (K + 1) n for a prompt composed of K parts
    what = f"--n {args.n}" + (f" ({n} samples, a row per {'prompt' if prompts else 'class'})" if n != args.n else "")
    parts = max(len(split_prompt(p)) for p in prompts) if prompts else 1
    batch = n * (parts + 1 if args.guidance != 1.0 or parts > 1 else 1)
    check_memory((2 * n + 2 * batch) * math.prod(run.sample_shape) * 4, device, what,
                 "lower --n (for more samples, run again with another --seed)")
    clip = None if args.no_clip else (args.clip_x0 if args.clip_x0 is not None else ...)
    if classifier is None:
        x = run.sample(n, args.sampler, args.steps, args.guidance, labels, args.seed, eta=args.eta,
                       clip_x0=clip, model=net, device=device, prompts=prompts, negative_prompts=negative, **options)
    else:  # (run.sample takes labels for the model only: here they may be the classifier's alone)
        cond = labels if torch.is_tensor(labels) else torch.full((n,), labels, dtype=torch.long)
        x = sample(net, run.proc, (n, *run.sample_shape), args.sampler, args.steps, args.eta, cond=cond,
                   guidance=args.guidance, generator=torch.Generator().manual_seed(args.seed), device=device,
                   clip_x0=clip, classifier=classifier, classifier_scale=args.classifier_scale, **options)
        # (a latent run's samples are latents: decoded as run.sample decodes them)
        x = decode_latents(run.autoencoder, x) if run.autoencoder is not None else x.reshape(n, *run.image_shape)
    written = []
    if x.ndim == 4:
        written.append(save_grid(x, out, nrow or max(1, round(math.sqrt(n)))))
    elif x.ndim == 5:  # clips
        written.append(save_clips(x, out))  # .gif, .mp4 or a frame grid, by the suffix
    if tensor_out is not None:
        buffer = io.BytesIO()  # serialised here, written by Python: a failed write names the file
        torch.save(x.cpu(), buffer)
        written.append(atomic_write_bytes(tensor_out, buffer.getvalue()))
    print(f"difflab sample: {n} samples from {run.path} (step {run.step}) -> "
          f"{', '.join(str(Path(w).resolve()) for w in written)}")
    return 0


def _prompts(args, run, text: bool):
    """--prompt's captions, each repeated --n times (a row each), tokenized up front so a word the
    model never saw fails before any sampling; None without --prompt."""
    if args.prompt is None:
        return None
    if not text:
        raise ValueError(f"--prompt needs a text model; {args.ckpt} takes "
                         + ("class labels: use --label" if run.num_classes is not None else "no condition"))
    if args.label is not None or args.classifier is not None:
        raise ValueError("--prompt conditions a text model: drop --label and --classifier")
    if args.n < 1:
        raise ValueError(f"--n must be a positive integer, got {args.n}")
    return _rows(args.prompt, args.n, run)


def _negative_prompts(args, run, prompts):
    """--negative-prompt's captions, one a sample (the one given for every prompt, or one per prompt),
    checked for unknown words up front; None without it."""
    if args.negative_prompt is None:
        return None
    if prompts is None:
        raise ValueError("--negative-prompt goes with --prompt (a text model's caption to guide towards)")
    if args.guidance == 1.0:
        raise ValueError("--negative-prompt takes the place of the empty caption in guidance: add --guidance W "
                         "(W != 1, e.g. 3)")
    given = args.negative_prompt
    if len(given) not in (1, len(args.prompt)):
        raise ValueError(f"give --negative-prompt once (for every prompt) or once per --prompt ({len(args.prompt)}), "
                         f"got {len(given)}")
    if len(given) == 1:
        given = given * len(args.prompt)
    return _rows(given, args.n, run)


def _rows(captions: list[str], n: int, run) -> list[str]:
    """Each caption ``n`` times (a row each), their words checked up front so that one the model never
    saw fails before any sampling (run.sample tokenizes again, and warns of truncation then)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prompts_for(captions, len(captions), run.tokenizer)
    return [c for c in captions for _ in range(n)]


def _classifier(args, run, device):
    """--classifier's noise-aware classifier (checked against the run before any sampling), or None;
    --classifier-scale defaults to 1 with it and is refused without it."""
    if args.classifier is None:
        if args.classifier_scale is not None:
            raise ValueError("--classifier-scale needs --classifier DIR (a noise-aware classifier: "
                             "difflab train-classifier --noisy --ckpt RUN --out DIR)")
        return None
    args.classifier_scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    if not (math.isfinite(args.classifier_scale) and args.classifier_scale >= 0):
        raise ValueError(f"--classifier-scale must be a finite number >= 0 (0 = no classifier guidance), got "
                         f"{args.classifier_scale:g}")
    classifier = load_noisy_classifier(args.classifier, device=device)
    check_classifier(classifier, run.proc, run.sample_shape, run.num_classes)
    return classifier


def _student_notes(cfg, args) -> list[str]:
    """What a student was not trained for, or a sampler will not read, said before it samples (it
    samples all the same)."""
    notes = []
    if cfg.model.kwargs.get("learn_sigma") and args.sampler != "ddpm":
        notes.append(f"this network learnt its variance (improved DDPM); --sampler {args.sampler} uses its mean "
                     "prediction only (--sampler ddpm reads the variance)")
    lo, hi = cfg.consistency.guidance
    if cfg.distill.method == "guided" and not lo <= args.guidance <= hi:
        notes.append(f"this guided student learnt the scales w in [{lo:g}, {hi:g}]; --guidance {args.guidance:g} lies "
                     "outside them (its output there is an extrapolation)")
    if cfg.distill.method == "progressive" and (args.sampler not in ("ddim", "euler") or args.eta != 0):
        notes.append(f"this progressive student learnt deterministic DDIM steps; --sampler {args.sampler}"
                     f"{f' --eta {args.eta:g}' if args.eta else ''} takes other steps on its levels")
    return notes


def _tensor_path(path: str) -> Path:
    """``--save-tensor``'s file, its folder created (as for --out), before any sampling."""
    p = Path(path)
    if path == "" or p.is_dir():
        raise ValueError(f"--save-tensor {path!r} is {'empty' if path == '' else 'a folder'}; name a file such as "
                         "samples.pt")
    make_parent(p, "--save-tensor")
    return p
