"""Text conditioning on captioned digits, judged from pixels (not part of the difflab package).

    python experiments/text.py --out docs/text                  # about 15 minutes on 2 CPU cores
    python experiments/text.py --size tiny --out /tmp/text      # the code path in a minute

Two runs on the same captioned digits (scikit-learn's 8x8 digits on a 16x16 canvas, position and
stroke varied: configs/digits_text.yaml), each reused when finished (--runs, default runs/text):

- ``text``: configs/digits_text.yaml, the text-conditioned U-Net with its jointly trained encoder;
- ``control``: the same U-Net and training conditioned on the digit's class alone (no cross-attention,
  ``data.kwargs.labels: digit``, 10% label dropout), which knows nothing of position or stroke.

The judges involve no diffusion model: the class by difflab's small CNN trained on other renderings of
the same source digits (another seed: other positions and strokes), position and stroke measured from
the pixels by ``difflab.evaluation.attributes`` (centre of mass; ink mass over half the boundary).
Prompts: every (digit, position, stroke) combination, a caption each drawn from the grammar (not the
training captions), ``--per-combo`` samples each; the combinations split into those seen in training
and the held-out ones (a bold 7, a thin 2, a 4 on the right, a 9 at the top left: each digit and each
value was seen, never together). Accuracy of each attribute, and of all three at once, per guidance
scale; binomial standard errors beside them. The held-out combinations get ``held_out_factor`` times
as many samples (they are few). Each set is sampled twice: from the one caption, and from the digit,
the position and the stroke as three captions joined by " AND " (composable diffusion: the guidance
of each added; the config's partial captions, ``omit_prob``, teach each alone). The control is
sampled for the same prompts with the digit's label and scored against the prompts' positions and
strokes: chance is 1/9 and 1/2.

    python experiments/text.py --source mnist --text-run runs/mnist_text --out docs/text/mnist

judges a run of configs/mnist_text.yaml (latent, captioned MNIST with position, stroke and size;
trained by the CLI as its header says) the same way, with a judge trained on renderings of the
train5k split in ../shared/data/mnist (the run's digits are t10k's); no control. A digits run trained
elsewhere (another seed, batch or step count of configs/digits_text.yaml) is judged the same way:

    python experiments/text.py --text-run runs/text_s1 --guidances 3 --no-composed --out docs/text/seeds/s1

``--negative`` adds rows ``*_negative``: each prompt sampled again (the same noise) with a negative prompt,
the other value of its stroke ("a thin 2 ..." away from "bold strokes"; diffusers' negative_prompt).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
if __package__ in (None, "") and sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: import from the repository root

import torch  # noqa: E402
import yaml  # noqa: E402

from difflab.data import captioned as cap  # noqa: E402
from difflab.data.grids import save_image_grid  # noqa: E402
from difflab.evaluation import attributes as attr  # noqa: E402
from difflab.evaluation.classifier import train_classifier  # noqa: E402
from difflab.files import atomic_write_text  # noqa: E402
from difflab.training import load as load_run  # noqa: E402
from experiments.processes import train_run  # noqa: E402

COMMAND = "python experiments/text.py"
REPO = HERE.parent
VARIED = ("position", "stroke")

SIZES = {
    "tiny": dict(steps=6, n_train=300, clf_renderings=1, clf_epochs=1, per_combo=1, held_out_factor=2,
                 guidances=(1.0, 3.0), clf_n_mnist=200,
                 sample_steps=4, digits=(0, 2, 4, 7, 9)),
    "cpu": dict(steps=None, n_train=None, clf_renderings=5, clf_epochs=20, per_combo=4, held_out_factor=4,
                clf_n_mnist=20_000, guidances=(1.0, 2.0, 3.0, 5.0), sample_steps=25, digits=tuple(range(10))),
}


def configs(size: dict) -> tuple[dict, dict]:
    """The text run's config (configs/digits_text.yaml, shortened for --size tiny) and the control's."""
    text = yaml.safe_load((REPO / "configs" / "digits_text.yaml").read_text())
    if size["steps"] is not None:
        text["steps"] = size["steps"]
    if size["n_train"] is not None:
        text["data"]["kwargs"]["n"] = size["n_train"]
    text["ckpt_every"], text["log_every"] = text["steps"], max(1, text["steps"] // 10)
    text["sample"] = dict(text["sample"], every=-1)
    control = copy.deepcopy(text)
    kw = {k: v for k, v in text["model"]["kwargs"].items()
          if k not in ("max_length", "text_width", "text_depth", "text_heads", "cross_attention_levels", "pooled_context",
                       "vocab")}
    control["model"] = {"name": "unet", "kwargs": dict(kw, num_classes=10)}
    control["data"]["kwargs"]["labels"] = "digit"
    return text, control


def combinations(digits: Sequence[int], held_out, varied: Sequence[str] = VARIED) -> tuple[list, list]:
    """(seen, held-out) lists of (digit, *values of ``varied``): a combination is held out when it
    shows one of the held-out (digit, attribute, value) pairs."""
    seen, held = [], []
    for d in digits:
        for values in itertools.product(*(cap.ATTRIBUTES[name] for name in varied)):
            said = dict(zip(varied, values))
            hit = any(d == hd and said.get(name) == value for hd, name, value in held_out)
            (held if hit else seen).append((d, *values))
    return seen, held


def captions_for(combos: list, per_combo: int, seed: int, composed: bool = False,
                varied: Sequence[str] = VARIED) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Captions from the grammar (a new word order and synonyms per sample) and what they ask for;
    ``composed``: the digit and each attribute as captions of their own joined by " AND " (the
    guidance of each added: composable diffusion, ``difflab.samplers.denoiser``)."""
    prompts, want = [], {"digit": [], **{name: [] for name in varied}}
    for i, (d, *values) in enumerate(combos):
        said = dict(zip(varied, values))
        for j in range(per_combo):
            k = seed * 1_000_003 + i * per_combo + j
            prompts.append(" AND ".join([cap.caption(d, seed=k)] + [cap.caption(None, **{name: v}, seed=k + 1 + m)
                                                                    for m, (name, v) in enumerate(said.items())])
                           if composed else cap.caption(d, **said, seed=k))
            want["digit"].append(d)
            for name, v in said.items():
                want[name].append(cap.ATTRIBUTES[name].index(v))
    return prompts, {k: torch.tensor(v) for k, v in want.items()}


def negatives_for(combos: list, per_combo: int, seed: int, varied: Sequence[str] = VARIED) -> list[str]:
    """A negative prompt a sample (``--negative``): the other value of each two-valued attribute asked
    for ("thin" for a bold prompt; stroke and size), a caption without a digit from the grammar."""
    out = []
    for i, (d, *values) in enumerate(combos):
        other = {name: next(v for v in cap.ATTRIBUTES[name] if v != value)
                 for name, value in zip(varied, values) if len(cap.ATTRIBUTES[name]) == 2}
        for j in range(per_combo):
            out.append(cap.caption(None, **other, seed=seed * 1_000_003 + i * per_combo + j + 7))
    return out


def judge(images: torch.Tensor, want: dict, clf, layout) -> dict:
    """Per-sample hits of the class and of each attribute in ``want``, and of all at once, and their
    accuracies with standard errors."""
    with torch.no_grad():
        digit = torch.cat([clf(b).argmax(1) for b in images.split(500)])
    measured = attr.measure_attributes(images, layout=layout)
    hits = {"class": digit == want["digit"]}
    for name in want:
        if name != "digit":
            hits[name] = measured[name] == want[name]
    hits["all"] = torch.stack(list(hits.values())).all(0)
    n = len(images)
    out = {"n": n}
    for k, h in hits.items():
        p = h.float().mean().item()
        out[k] = round(p, 4)
        out[f"{k}_se"] = round(math.sqrt(max(p * (1 - p), 1e-12) / n), 4)
    return out


def by_pair(images: torch.Tensor, want: dict, clf, layout, held_out) -> dict:
    """Held-out samples judged per held-out (digit, attribute, value) pair: "7 stroke bold" -> the
    accuracies of the class, of that attribute and of everything at once, and the classes drawn."""
    out = {}
    for d, name, value in held_out:
        rows = (want["digit"] == d) & (want[name] == cap.ATTRIBUTES[name].index(value))
        if rows.any():
            sub = judge(images[rows], {k: v[rows] for k, v in want.items()}, clf, layout)
            with torch.no_grad():
                drawn = torch.bincount(clf(images[rows]).argmax(1), minlength=10).tolist()
            out[f"{d} {name} {value}"] = {"n": sub["n"], "class": sub["class"], name: sub[name], "all": sub["all"],
                                          "classes_drawn": drawn}
    return out


def draw(run, prompts=None, labels=None, guidance=1.0, steps=25, seed=0, batch=400, negative=None) -> torch.Tensor:
    """Samples for the prompts (text run, with ``negative`` prompts if given) or labels (control), in
    batches, DDIM."""
    n = len(prompts) if prompts is not None else len(labels)
    out = []
    for i in range(0, n, batch):
        kw = ({"prompts": prompts[i:i + batch]} if prompts is not None else {"labels": labels[i:i + batch]})
        if negative is not None:
            kw["negative_prompts"] = negative[i:i + batch]
        k = len(next(iter(kw.values())))
        out.append(run.sample(k, "ddim", steps, guidance=guidance, seed=seed + i, **kw))
    return torch.cat(out)


def judge_classifier(source: str, varied: tuple, size: dict, root: Optional[str]):
    """The class judge: a small CNN on renderings with other attributes than the model's data (seed 2;
    MNIST: of the folder's train5k split, the model's is t10k), tested on seed 1's renderings; and the data
    set whose layout the attributes are measured against."""
    kw = dict(source=source, attributes=varied, held_out=())
    if source == "mnist":
        kw.update(root=root)
        fit = cap.captioned_digits(size["clf_n_mnist"], seed=2, mnist_split="train5k", **kw)
        test = cap.captioned_digits(size["clf_n_mnist"] // 10, seed=1, mnist_split="t10k", **kw)
    else:
        src = cap.captioned_digits(source="digits", seed=0, attributes=varied)
        fit = cap.captioned_digits(size["clf_renderings"] * len(src), seed=2, **kw)
        test = cap.captioned_digits(None, seed=1, **kw)
    clf, record = train_classifier(fit.images, fit.digits, test_images=test.images, test_labels=test.digits,
                                   num_classes=10, epochs=size["clf_epochs"], seed=0)
    return clf, record, fit, test


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/text"))
    parser.add_argument("--runs", type=Path, default=Path("runs/text"))
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--source", choices=("digits", "mnist"), default="digits",
                        help="digits: train configs/digits_text.yaml and its control into --runs; mnist: judge "
                             "--text-run, a run of configs/mnist_text.yaml trained by the CLI (no control)")
    parser.add_argument("--text-run", type=Path, default=None,
                        help="judge this trained run (needed with --source mnist; with digits: no training, no control)")
    parser.add_argument("--guidances", type=float, nargs="+", default=None, help="the scales to sample at")
    parser.add_argument("--no-composed", action="store_true", help="skip the composed (\" AND \") prompts")
    parser.add_argument("--negative", action="store_true",
                        help="also sample each prompt with a negative prompt, the other stroke (and size): rows *_negative")
    parser.add_argument("--data-root", default="../shared/data/mnist", help="with --source mnist: MNIST's folder")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.source == "mnist":  # twice the combinations (size varies) and latent decoding: fewer samples
        size = dict(size, per_combo=1, guidances=(1.0, 3.0), clf_epochs=5) if args.size == "cpu" else \
            dict(size, guidances=(3.0,))
    if args.guidances:
        size = dict(size, guidances=tuple(args.guidances))
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"command": f"{COMMAND} " + shlex.join(argv if argv is not None else sys.argv[1:]), "size": args.size,
                 "source": args.source}
    mnist = args.source == "mnist"
    if mnist and args.text_run is None:
        parser.error("--source mnist needs --text-run (a run of configs/mnist_text.yaml, trained by the CLI)")

    control = None
    if args.text_run is not None:
        text = load_run(args.text_run)
        res["steps"] = {"text": text.step}
        varied = tuple(text.config.data.kwargs.get("attributes", cap.ATTRIBUTES))
    else:
        text_cfg, control_cfg = configs(size)
        seconds = {}
        for name, cfg in (("text", text_cfg), ("control", control_cfg)):
            start = time.perf_counter()
            train_run(cfg, args.runs / name, None)
            seconds[name] = round(time.perf_counter() - start, 1)
        res["train_seconds_this_call"] = seconds
        text, control = load_run(args.runs / "text"), load_run(args.runs / "control")
        res["steps"] = {"text": text.step, "control": control.step}
        varied = VARIED
    clf, record, fit, test = judge_classifier(args.source, varied, size, args.data_root)
    res["judge"] = {"class_accuracy_on_real": round(record["test_accuracy"], 4), "renderings": len(fit),
                    "epochs": size["clf_epochs"],
                    "attributes_on_real": judge(test.images, {"digit": test.digits, **test.attributes}, clf,
                                                test.layout)}

    # the run's own held-out combinations (its data config's held_out; the default otherwise)
    held = text.config.data.kwargs.get("held_out")
    held_out = (tuple((int(d), a, v) for d, a, v in held) if held is not None
                else tuple(h for h in cap.DEFAULT_HELD_OUT if h[1] in varied))
    seen, held = combinations(size["digits"], held_out, varied)
    res["combinations"] = {"seen": len(seen), "held_out": len(held), "held_out_pairs": [list(h) for h in held_out]}
    rows = []
    for w in size["guidances"]:
        row = {"guidance": w}
        # (a negative prompt replaces guidance's unconditional branch: there is none at w = 1)
        forms = ("",) + (() if args.no_composed else ("_composed",)) + (("_negative",) if args.negative and w != 1 else ())
        for form, (split, combos, seed) in itertools.product(forms, (("seen", seen, 0), ("held_out", held, 1))):
            per = size["per_combo"] * (size["held_out_factor"] if split == "held_out" else 1)
            prompts, want = captions_for(combos, per, seed, composed=form == "_composed", varied=varied)
            negative = negatives_for(combos, per, seed, varied) if form == "_negative" else None
            start = time.perf_counter()
            images = draw(text, prompts=prompts, guidance=w, steps=size["sample_steps"], seed=seed, negative=negative)
            row[split + form] = judge(images, want, clf, test.layout)
            if split == "held_out":
                row[split + form]["by_pair"] = by_pair(images, want, clf, test.layout, held_out)
            row[split + form]["seconds_per_1000"] = round(1000 * (time.perf_counter() - start) / len(images), 1)
            if w == 3.0 and split == "held_out":  # the held-out prompts, a row each (the first sample of each)
                save_image_grid(images[::per][: 8 * (len(combos) // 8)], args.out / f"text_held_out{form}.png", nrow=8)
                res[f"figure_held_out{form}_prompts"] = prompts[::per][: 8 * (len(combos) // 8)]
            if w == 3.0 and split == "seen" and not form:  # a row per prompt, ten prompts spread over the digits
                spread = list(range(0, len(combos), max(1, len(combos) // 10)))[:10]
                pick = [r * size["per_combo"] + j for r in spread for j in range(size["per_combo"])]
                save_image_grid(images[pick], args.out / "text_samples.png", nrow=size["per_combo"])
                res["figure_prompts"] = [prompts[r * size["per_combo"]] for r in spread]
        rows.append(row)
        print(json.dumps(row), flush=True)
    res["text"] = rows

    if control is not None:
        prompts, want = captions_for(seen + held, size["per_combo"], 2, varied=varied)
        images = draw(control, labels=want["digit"], guidance=3.0, steps=size["sample_steps"], seed=2)
        res["control"] = {"guidance": 3.0, **judge(images, want, clf, test.layout)}
        print(json.dumps(res["control"]), flush=True)
    atomic_write_text(args.out / "text_results.json", json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
