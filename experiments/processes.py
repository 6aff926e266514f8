"""One network, one training budget, every process: digits sampled at 1 to 35 network evaluations
(not part of the difflab package).

    python experiments/processes.py --out docs/processes          # about 12 minutes on 2 CPU cores
    python experiments/processes.py --size tiny --out /tmp/p      # the code path in seconds

Training runs go to --runs (default runs/processes, beside the docs; a finished run there is reused).

scikit-learn's 8x8 digits are split once (seed 0) into 1,497 training and 300 held-out images.
The eps-DDPM chain, EDM, flow matching (independent coupling), OT-CFM and the 2-rectified flow
(reflow of the flow: pairs from its own ODE, then training from its weights) train configs/digits.yaml's
class-conditional MLP with the same steps, batch and seed. Each is sampled with guidance w at 1, 2,
5, 10 and 35 network evaluations (Euler, DPM-Solver++ 2M, and Heun where the count is odd; each on
the process's default noise levels and on equal steps in its own time, and the DDPM chain also on
"trailing" timesteps; the table shows the best), judged by a small CNN trained on the real training digits: its
accuracy on the requested classes, and the Frechet distance in its features against the held-out
digits, beside the floor (real training digits against the held-out ones, same sizes) and the
Frechet distance's own noise (two sample sets of one setting from independent noise).
Writes OUT/metrics.json, OUT/fd_vs_nfe.png and the table of docs/processes.md (OUT/table.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
if __package__ in (None, "") and sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: import from the repository root

import torch  # noqa: E402
import yaml  # noqa: E402

import difflab as dl  # noqa: E402
from difflab.evaluation.classifier import ClassifierFeatures, accuracy, train_classifier  # noqa: E402
from difflab.evaluation.fid import extract_features, frechet_distance  # noqa: E402
from difflab.evaluation.plots import pyplot  # noqa: E402
from difflab.files import atomic_write_text  # noqa: E402
from difflab.samplers import SAMPLERS  # noqa: E402
from difflab.samplers.timesteps import default_spacing  # noqa: E402
from difflab.training import Trainer, TrainConfig  # noqa: E402
from difflab.training.config import config_diff  # noqa: E402
from difflab.training import load as load_run  # noqa: E402
from difflab.training.reflow import ReflowLoss, generate_pairs, straightness  # noqa: E402
from experiments.runs import logged_seconds  # noqa: E402

COMMAND = "python experiments/processes.py"
REPO = HERE.parent

# The processes compared: name -> the config's diffusion section.
PROCESSES = {
    "eps-DDPM": {"process": "ddpm", "schedule": "cosine", "T": 1000, "prediction": "eps"},
    "EDM": {"process": "edm"},
    "flow": {"process": "flow"},
    "OT-CFM": {"process": "flow", "process_kwargs": {"coupling": "ot"}},
}
REFLOW = "2-rectified flow"

SIZES = {
    "tiny": dict(steps=8, n=40, pairs=64, pair_steps=4, nfes=(1, 5), clf_epochs=1, ref_steps=6, guidance=3.0),
    "cpu": dict(steps=2000, n=1000, pairs=4000, pair_steps=100, nfes=(1, 2, 5, 10, 35), clf_epochs=30,
                ref_steps=1000, guidance=3.0),
}


def split_digits(seed: int = 0, held_out: int = 300):
    """scikit-learn's digits [N, 1, 8, 8] in [-1, 1]: (train images, train labels, held-out images, labels)."""
    x, y = dl.data.load("digits")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    held, train = perm[:held_out], perm[held_out:]
    return x[train], y[train], x[held], y[held]


def run_config(diffusion: dict, steps: int) -> dict:
    """configs/digits.yaml with another process and step count (same network, batch, seed)."""
    cfg = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    cfg["diffusion"] = copy.deepcopy(diffusion)
    cfg["steps"], cfg["ckpt_every"], cfg["log_every"] = steps, steps, max(1, steps // 10)
    cfg["sample"] = dict(cfg["sample"], every=-1)
    return cfg


def train_run(cfg: dict, out: Path, data, *, loss_fn=None, init: Optional[dict] = None) -> Optional[float]:
    """Train ``cfg`` on ``data`` into ``out`` (a finished run is reused); returns the run's training
    seconds (its log's, so a reused run reports the time it took)."""
    finished = False
    if (out / "config.yaml").is_file():
        try:
            run = load_run(out)
        except (FileNotFoundError, ValueError):
            run = None
        if run is not None:
            # a finished run is reused only for the config it was trained with: another one (a changed
            # experiment) would be measured under the wrong name, silently
            diff = config_diff(run.config, TrainConfig.from_dict(cfg))
            if diff:
                lines = ", ".join(f"{k} (run: {a!r}, now: {b!r})" for k, a, b in diff)
                raise ValueError(f"{str(out)!r} holds a run of another config: {lines}. Delete the folder to "
                                 "train it again, or give the experiment another runs folder")
            finished = run.step >= cfg["steps"]
    if not finished:
        with Trainer(TrainConfig.from_dict(cfg), out, data=data, loss_fn=loss_fn, progress=False) as trainer:
            if init is not None and trainer.step == 0:
                trainer.model.load_state_dict(init)
                trainer.ema.model.load_state_dict(init)
            trainer.train()
    return logged_seconds(out)


def samplers_at(nfe: int, proc) -> list[tuple[str, int, str]]:
    """(sampler, steps, spacing) triples that make ``nfe`` network evaluations: Euler and
    DPM-Solver++(2M) with nfe steps, Heun (2 steps - 1 evaluations) where nfe is odd; each on the
    sampler's default spacing for the process and on "uniform" (the chain: also "trailing").
    Log-SNR and rho-7 levels end at sigma_min, so at 2 steps the second is spent between sigma_min
    and 0: the other spacings keep few-step settings from being judged on a wasted step."""
    steps = [("euler", nfe), ("dpmpp_2m", nfe)] + ([("heun", (nfe + 1) // 2)] if nfe % 2 == 1 else [])
    out = []
    for sampler, k in steps:
        spacings = {default_spacing(proc, SAMPLERS[sampler].default_spacing), "uniform"}
        if proc.discrete:
            spacings.add("trailing")
        out += [(sampler, k, sp) for sp in sorted(spacings)]
    return out


class Judge:
    """The classifier of real digits and the held-out features the samples are compared with."""

    def __init__(self, x_train, y_train, x_held, y_held, epochs: int) -> None:
        self.clf, record = train_classifier(x_train, y_train, test_images=x_held, test_labels=y_held,
                                            epochs=epochs, seed=0)
        self.held_accuracy = record.get("test_accuracy")
        self.features = ClassifierFeatures(self.clf, "digits-cnn")
        self.held = extract_features(self.features, x_held)
        self.x_train = x_train

    def floor(self, n: int, seed: int = 0) -> float:
        """FD of n real training digits (drawn with replacement when n exceeds them) against the held-out ones."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(self.x_train), (n,), generator=g)
        return frechet_distance(self.held, extract_features(self.features, self.x_train[idx]))

    def __call__(self, images, labels) -> dict:
        return {"fd": frechet_distance(self.held, extract_features(self.features, images)),
                "accuracy": accuracy(self.clf, images, labels)}


def draw(run, n: int, sampler: str, steps: int, guidance: float, seed: int, spacing: Optional[str] = None):
    """n guided samples as images [n, 1, 8, 8] with their requested labels (n / 10 per class)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    x = dl.sample(run.ema_model, run.proc, (n, 64), sampler, steps, cond=labels, guidance=guidance, generator=g,
                  spacing=spacing)
    return x.clamp(-1, 1).reshape(n, 1, 8, 8), labels


def run_experiment(out="docs/processes", size: str = "cpu", command: str = COMMAND,
                   runs_dir: Optional[str] = None) -> dict:
    S = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir if runs_dir is not None else "runs/processes")
    torch.set_num_threads(1)  # a 64-wide MLP: one thread is fastest, and robust on a busy machine
    x_train, y_train, x_held, y_held = split_digits()
    judge = Judge(x_train, y_train, x_held, y_held, S["clf_epochs"])
    res = {"command": command + (f" --size {size}" if size != "cpu" else "") + f" --out {out}"
           + ("" if runs_dir == Path("runs/processes") else f" --runs {runs_dir}"),
           "size": size, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in S.items()},
           "classifier_held_out_accuracy": judge.held_accuracy,
           "floor": judge.floor(S["n"]), "runs": {}, "rows": []}
    data = (x_train, y_train)
    runs = {}
    for name, diffusion in PROCESSES.items():
        seconds = train_run(run_config(diffusion, S["steps"]), runs_dir / name, data)
        runs[name] = load_run(runs_dir / name)
        res["runs"][name] = {"train_seconds": seconds, "process": repr(runs[name].proc)}

    # Reflow: (noise, sample) pairs from the flow's own ODE, then the same budget from its weights.
    flow = runs["flow"]
    g = torch.Generator().manual_seed(1)
    pair_labels = torch.arange(S["pairs"]) % 10
    noise, samples = generate_pairs(flow.ema_model, flow.proc, S["pairs"], (64,), steps=S["pair_steps"],
                                    cond=pair_labels, guidance=1.0, generator=g)
    reflow_cfg = run_config(PROCESSES["flow"], S["steps"])
    seconds = train_run(reflow_cfg, runs_dir / "reflow", (samples.reshape(-1, 1, 8, 8), pair_labels),
                        loss_fn=ReflowLoss(flow.proc, noise), init=flow.ema_model.state_dict())
    runs[REFLOW] = load_run(runs_dir / "reflow")
    res["runs"][REFLOW] = {"train_seconds": seconds, "pairs": S["pairs"], "pair_steps": S["pair_steps"]}
    probe = torch.randn(min(S["n"], 500), 64, generator=torch.Generator().manual_seed(2))
    probe_labels = torch.arange(len(probe)) % 10
    for name in ("flow", "OT-CFM", REFLOW):
        res["runs"][name]["straightness"] = float(straightness(runs[name].ema_model, runs[name].proc, probe,
                                                                steps=S["pair_steps"], cond=probe_labels))

    for name, run in runs.items():
        for nfe in S["nfes"]:
            for sampler, steps, spacing in samplers_at(nfe, run.proc):
                images, labels = draw(run, S["n"], sampler, steps, S["guidance"], seed=3, spacing=spacing)
                res["rows"].append({"process": name, "nfe": nfe, "sampler": sampler, "steps": steps,
                                    "spacing": spacing, **judge(images, labels)})
    # The reference: the eps-DDPM chain with DDPM's own sampler at all T steps, twice from independent noise.
    ddpm = runs["eps-DDPM"]
    refs = [judge(*draw(ddpm, S["n"], "ddpm", S["ref_steps"], S["guidance"], seed=s)) for s in (3, 4)]
    res["reference"] = {"sampler": "ddpm", "steps": S["ref_steps"], "fd": refs[0]["fd"],
                        "accuracy": refs[0]["accuracy"], "fd_noise": abs(refs[0]["fd"] - refs[1]["fd"]),
                        "fd_second_draw": refs[1]["fd"]}
    atomic_write_text(out / "metrics.json", json.dumps(res, indent=1))
    write_table(res, out / "table.md")
    plot(res, out / "fd_vs_nfe.png")
    return res


def best_rows(res: dict) -> dict:
    """(process, nfe) -> the row of the sampler with the lowest FD there."""
    best: dict = {}
    for row in res["rows"]:
        key = (row["process"], row["nfe"])
        if key not in best or row["fd"] < best[key]["fd"]:
            best[key] = row
    return best


def write_table(res: dict, path: Path) -> None:
    nfes = res["settings"]["nfes"]
    best = best_rows(res)
    lines = ["| process | " + " | ".join(f"{k} NFE" for k in nfes) + " |",
             "| --- | " + " | ".join("---" for _ in nfes) + " |"]
    for name in res["runs"]:
        cells = []
        for k in nfes:
            row = best[(name, k)]
            cells.append(f"{row['fd']:.1f} ({100 * row['accuracy']:.0f}%, {row['sampler']}, {row['spacing']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = res["reference"]
    lines += ["", f"Cells: Frechet distance in the classifier's features against the held-out digits (accuracy of the "
              f"requested class, best sampler). Floor (real digits): {res['floor']:.2f}. eps-DDPM with DDPM's "
              f"sampler at {ref['steps']} steps: {ref['fd']:.2f} ({100 * ref['accuracy']:.0f}%), and "
              f"{ref['fd_second_draw']:.2f} from independent noise (the FD's noise: {ref['fd_noise']:.2f})."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    best = best_rows(res)
    nfes = res["settings"]["nfes"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in res["runs"]:
        ax.plot(nfes, [best[(name, k)]["fd"] for k in nfes], marker="o", label=name)
    ax.axhline(res["floor"], color="k", ls=":", label="floor (real digits)")
    ax.axhline(res["reference"]["fd"], color="gray", ls="--", label=f"eps-DDPM, {res['reference']['steps']} steps")
    ax.set(xscale="log", yscale="log", xlabel="network evaluations", ylabel="Frechet distance (classifier features)",
           title="digits: one network, every process")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/processes")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--runs", default=None, help="where the training runs go (default runs/processes)")
    args = p.parse_args(argv)
    res = run_experiment(args.out, args.size, COMMAND, args.runs)
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {args.out}/metrics.json and fd_vs_nfe.png ({shlex.join(sys.argv)})")
    return 0 if res else 1


if __name__ == "__main__":
    raise SystemExit(main())
