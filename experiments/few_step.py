"""Few-step students of one teacher on digits: consistency distillation, progressive distillation,
guided (latent-consistency-style) distillation and consistency training from scratch, against the
teacher at 1 to 64 steps (not part of the difflab package).

    python experiments/few_step.py --out docs/few_step          # about 25 minutes on 2 CPU cores
    python experiments/few_step.py --size tiny --out /tmp/fs    # the code path in a minute
    python experiments/few_step.py --mnist --out docs/few_step  # 14x14 MNIST: about an hour on 2 cores

Training runs go to --runs (default runs/few_step; a finished run there is reused).

scikit-learn's 8x8 digits, split once (seed 0) into 1,497 training and 300 held-out images, as in
experiments/processes.py, whose judge is used: a small CNN trained on the real training digits gives
the accuracy of the requested class and the Frechet distance in its features against the held-out
digits, beside the floor (real training digits against held-out ones) and the distance's noise
(one setting from two independent noises). The within-class spread (difflab.evaluation.within_class_spread,
pixels) is given as a ratio to the held-out digits'. Seconds per 1,000 samples are the sampling time on
this machine's CPU (one thread), in the same run.

The teacher is configs/digits.yaml's class-conditional eps-MLP on the DDPM chain (cosine, T = 1000),
trained on the training split; every student trains on the same split with ``difflab distill``'s
defaults unless SIZES says otherwise, and the CT run is configs/digits_ct.yaml.
"""

from __future__ import annotations

import argparse
import json
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

import difflab as dl  # noqa: E402
from difflab.evaluation import within_class_spread  # noqa: E402
from difflab.evaluation.plots import pyplot  # noqa: E402
from difflab.files import atomic_write_text  # noqa: E402
from difflab.training import load as load_run  # noqa: E402
from difflab.training.distill_run import ROUNDS_DIR, distill  # noqa: E402
from experiments.mnist import measure_setup, mnist_config  # noqa: E402
from experiments.processes import PROCESSES, Judge, run_config, split_digits, train_run  # noqa: E402
from experiments.runs import RowCache  # noqa: E402
from experiments.sampling import SampleEvaluator, fid_noise, tolerance  # noqa: E402
from experiments.settings import DEFAULT_MNIST_ROOT  # noqa: E402
from experiments.settings import SIZES as MNIST_SIZES  # noqa: E402

COMMAND = "python experiments/few_step.py"
REPO = HERE.parent

SIZES = {
    "tiny": dict(teacher_steps=8, n=40, clf_epochs=1, cd_steps=4, pd_steps=2, pd_start=8, guided_steps=4,
                 ct_steps=8, teacher_nfes=(1, 4, 10), guidances=(1.0, 3.0)),
    "cpu": dict(teacher_steps=2000, n=1000, clf_epochs=30, cd_steps=12000, pd_steps=1500, pd_start=64,
                guided_steps=6000, ct_steps=4000, teacher_nfes=(1, 2, 4, 8, 10, 16, 32, 50, 64),
                guidances=(1.0, 2.0, 3.0)),
}


class Evaluator:
    """Samples of a network at a setting, judged: FD, accuracy, within-class spread, seconds per 1,000."""

    def __init__(self, judge: Judge, x_held, y_held, n: int) -> None:
        self.judge, self.n = judge, n
        self.real_spread = within_class_spread(x_held, y_held)

    def __call__(self, run, sampler: str, steps: int, guidance: float = 1.0, seed: int = 3) -> dict:
        labels = torch.arange(self.n) % 10
        g = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        x = dl.sample(run.ema_model, run.proc, (self.n, 64), sampler, steps, cond=labels, guidance=guidance, generator=g)
        seconds = time.perf_counter() - start
        return {**self.judge_images(x, labels), "sec_per_1000": 1000 * seconds / self.n}

    def judge_images(self, x, labels) -> dict:
        """FD, accuracy and relative spread of samples [n, 64]."""
        images = x.clamp(-1, 1).reshape(len(x), 1, 8, 8)
        return {**self.judge(images, labels), "spread": within_class_spread(images, labels) / self.real_spread}


def ct_config(steps: int) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "digits_ct.yaml").read_text())
    cfg["steps"], cfg["ckpt_every"], cfg["log_every"] = steps, steps, max(1, steps // 10)
    cfg["sample"] = dict(cfg["sample"], every=-1)
    return cfg


def student(teacher: Path, out: Path, method: str, data, say, **kwargs) -> dict:
    """``distill`` into ``out``, or the finished student there (kept); its training seconds."""
    started = (out / "checkpoints").exists() or (out / ROUNDS_DIR).exists()
    result = distill(teacher, out, method, data=data, resume=started, progress=False, say=say, **kwargs)
    return {"seconds": sum(r.get("seconds") or 0.0 for r in result["rounds"]),
            "rounds": len(result["rounds"]), "kept": all(r.get("kept") for r in result["rounds"])}


def rounds_of(folder: Path) -> list:
    """A progressive distillation's run folders: its finished earlier rounds (by name), then ``folder``."""
    earlier = folder / ROUNDS_DIR
    return (sorted(earlier.iterdir()) if earlier.is_dir() else []) + [folder]


def run_experiment(out="docs/few_step", size: str = "cpu", command: str = COMMAND,
                   runs_dir: Optional[str] = None, teacher_steps: Optional[int] = None) -> dict:
    S = dict(SIZES[size], **({"teacher_steps": teacher_steps} if teacher_steps else {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(runs_dir if runs_dir is not None else "runs/few_step")
    torch.set_num_threads(1)  # a 64-wide MLP: one thread is fastest, and robust on a busy machine
    x_train, y_train, x_held, y_held = split_digits()
    judge = Judge(x_train, y_train, x_held, y_held, S["clf_epochs"])
    ev = Evaluator(judge, x_held, y_held, S["n"])
    data = (x_train, y_train)
    log = []

    def say(line: str) -> None:
        log.append(line)
        print(line, file=sys.stderr, flush=True)

    res = {"command": command + (f" --size {size}" if size != "cpu" else "")
           + (f" --teacher-steps {teacher_steps}" if teacher_steps else "") + f" --out {out}"
           + ("" if runs == Path("runs/few_step") else f" --runs {runs}"),
           "size": size, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in S.items()},
           "classifier_held_out_accuracy": judge.held_accuracy,
           "floor": judge.floor(S["n"]), "runs": {}, "rows": []}
    teacher = runs / "teacher"
    res["runs"]["teacher"] = {"train_seconds": train_run(run_config(PROCESSES["eps-DDPM"], S["teacher_steps"]),
                                                          teacher, data)}
    res["runs"]["consistency"] = student(teacher, runs / "cd", "consistency", data, say,
                                         train_steps=S["cd_steps"])
    res["runs"]["progressive"] = student(teacher, runs / "pd", "progressive", data, say, train_steps=S["pd_steps"],
                                         start_steps=S["pd_start"], steps=4)
    res["runs"]["guided"] = student(teacher, runs / "guided", "guided", data, say, train_steps=S["guided_steps"])
    res["runs"]["consistency training"] = {"train_seconds": train_run(ct_config(S["ct_steps"]), runs / "ct", data)}

    t = load_run(teacher)
    for w in S["guidances"]:
        for k in S["teacher_nfes"]:
            res["rows"].append({"model": "teacher", "sampler": "ddim", "steps": k, "nfe": k, "guidance": w,
                                **ev(t, "ddim", k, w)})
        res["rows"].append({"model": "teacher", "sampler": "dpmpp_2m", "steps": 10, "nfe": 10, "guidance": w,
                            **ev(t, "dpmpp_2m", 10, w)})
    noise = [ev(t, "ddim", 10, 1.0, seed=s)["fd"] for s in (3, 4)]
    res["fd_noise"] = abs(noise[0] - noise[1])
    for name, folder in (("consistency", "cd"), ("consistency training", "ct")):
        run = load_run(runs / folder)
        for k in (1, 2, 4):
            res["rows"].append({"model": name, "sampler": "consistency", "steps": k, "nfe": k, "guidance": 1.0,
                                **ev(run, "consistency", k)})
    guided = load_run(runs / "guided")
    for w in S["guidances"]:
        for k in (1, 2, 4):
            res["rows"].append({"model": "guided", "sampler": "consistency", "steps": k, "nfe": k, "guidance": w,
                                **ev(guided, "consistency", k, w)})
    for folder in rounds_of(runs / "pd"):
        run = load_run(folder)
        k = len(run.config.distill.sigmas) - 1
        for w in S["guidances"]:  # the student's own guidance pair: 2 calls per step where w != 1
            res["rows"].append({"model": "progressive", "sampler": "ddim", "steps": k, "nfe": k * (1 if w == 1 else 2),
                                "guidance": w, **ev(run, "ddim", k, w)})
    res["renoised"] = renoised(t, ev, S)
    res["second_step"] = second_step(load_run(runs / "cd"), ev)
    res["must_show"] = must_show(res)
    atomic_write_text(out / "metrics.json", json.dumps(res, indent=1))
    write_table(res, out / "table.md")
    plot(res, out / "fd_vs_nfe.png")
    return res


def renoised(teacher, ev: Evaluator, S: dict, levels=(0.11, 0.42, 1.0)) -> list:
    """What multistep consistency sampling asks of the teacher's ODE, done exactly: the teacher's own
    DDIM samples (64 steps, w = 1), re-noised to sigma and solved again by 64 DDIM steps from there."""
    n, proc = ev.n, teacher.proc
    steps = max(S["teacher_nfes"])
    labels = torch.arange(n) % 10
    g = torch.Generator().manual_seed(3)
    first = dl.sample(teacher.ema_model, proc, (n, 64), "ddim", steps, cond=labels, generator=g)
    rows = [{"sigma": 0.0, **ev.judge_images(first, labels)}]
    for sigma in levels:
        z = torch.randn(first.shape, generator=g)
        levels_below = dl.samplers.karras_sigmas(steps, proc.sigma_min, sigma)
        again = dl.sample(teacher.ema_model, proc, first.shape, "ddim", sigmas=levels_below, cond=labels,
                          noise=(first + sigma * z) / (1 + sigma * sigma) ** 0.5)
        rows.append({"sigma": sigma, **ev.judge_images(again, labels)})
    return rows


def second_step(run, ev: Evaluator) -> list:
    """The 2-step consistency student with its second level at each of the chain's timesteps below."""
    rows = []
    for t in (62, 124, 249, 374, 499, 749):
        sigma = float(run.proc.sigma_of(torch.tensor(t)))
        labels = torch.arange(ev.n) % 10
        x = dl.sample(run.ema_model, run.proc, (ev.n, 64), "consistency", cond=labels,
                      sigmas=[run.proc.sigma_max, sigma], generator=torch.Generator().manual_seed(3))
        rows.append({"timestep": t, "sigma": sigma, **ev.judge_images(x, labels)})
    return rows


def _row(res: dict, model: str, steps: int, guidance: float = 1.0, sampler: Optional[str] = None) -> dict:
    for r in res["rows"]:
        if (r["model"], r["steps"], r["guidance"]) == (model, steps, guidance) and sampler in (None, r["sampler"]):
            return r
    raise KeyError((model, steps, guidance))


def must_show(res: dict) -> dict:
    """The issue's checks, each with its numbers (measured, then compared)."""
    t10 = min(_row(res, "teacher", 10, 1.0, s)["fd"] for s in ("ddim", "dpmpp_2m"))
    cd1, cd2 = _row(res, "consistency", 1), _row(res, "consistency", 2)
    out = {"cd_1_step": {"accuracy": cd1["accuracy"], "fd": cd1["fd"], "teacher_fd_10_nfe": t10,
                         "fd_ratio": cd1["fd"] / t10, "spread": cd1["spread"],
                         "pass": cd1["accuracy"] >= 0.9 and cd1["fd"] <= 1.5 * t10 and cd1["spread"] >= 0.8},
           "cd_2_better_than_1": {"fd_1": cd1["fd"], "fd_2": cd2["fd"], "pass": cd2["fd"] < cd1["fd"]}}
    for w in res["settings"]["guidances"]:
        pd4, t4, t64 = _row(res, "progressive", 4, w), _row(res, "teacher", 4, w, "ddim"), \
            _row(res, "teacher", max(res["settings"]["teacher_nfes"]), w, "ddim")
        out[f"pd_4_steps_w{w:g}"] = {"fd": pd4["fd"], "teacher_4_ddim": t4["fd"], "teacher_64_ddim": t64["fd"],
                                     "pass": pd4["fd"] < t4["fd"] and pd4["fd"] <= 1.5 * t64["fd"]}
        g4 = _row(res, "guided", 4, w)
        t50 = _row(res, "teacher", 50 if 50 in res["settings"]["teacher_nfes"] else
                   max(res["settings"]["teacher_nfes"]), w, "ddim")
        out[f"guided_4_steps_w{w:g}"] = {"accuracy": g4["accuracy"], "teacher_50_accuracy": t50["accuracy"],
                                         "pass": abs(g4["accuracy"] - t50["accuracy"]) <= 0.03}
    return out


def write_table(res: dict, path: Path) -> None:
    lines = ["| model | sampler | steps | network calls | w | FD | accuracy | spread | s / 1000 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {r['guidance']:g} | {r['fd']:.1f} "
                     f"| {100 * r['accuracy']:.1f}% | {r['spread']:.2f} | {r['sec_per_1000']:.3f} |")
    lines += ["", f"FD: Frechet distance in the digits classifier's features against the 300 held-out digits. Floor "
              f"(real training digits): {res['floor']:.2f}; the FD's noise (teacher, DDIM 10 steps, two noises): "
              f"{res['fd_noise']:.2f}. Spread: within-class spread over the held-out digits'. Network calls: a "
              "guided teacher or progressive student calls its network twice per step (the guidance pair)."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(res["settings"]["guidances"]), figsize=(4 * len(res["settings"]["guidances"]), 3.6),
                             squeeze=False)
    for ax, w in zip(axes[0], res["settings"]["guidances"]):
        for k, (model, marker) in enumerate((("teacher", "o"), ("consistency", "s"), ("progressive", "^"),
                                             ("guided", "D"), ("consistency training", "v"))):
            rows = sorted((r for r in res["rows"] if r["model"] == model and r["guidance"] == w
                           and r["sampler"] != "dpmpp_2m"), key=lambda r: r["nfe"])
            if rows:
                ax.plot([r["nfe"] for r in rows], [r["fd"] for r in rows], marker=marker, color=f"C{k}", label=model)
        ax.axhline(res["floor"], color="k", ls=":", label="floor (real digits)")
        ax.set(xscale="log", yscale="log", xlabel="network calls", title=f"w = {w:g}")
    axes[0][0].set_ylabel("Frechet distance")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- progressive at w = 1
def progressive_check(out="docs/few_step", size: str = "cpu", command: str = COMMAND,
                      runs_dir: Optional[str] = None) -> dict:
    """Where the progressive student loses the teacher's w = 1 samples: (a) a v student trained only
    to copy its eps teacher's denoiser (the re-parameterisation phase for all its steps but the last,
    whose learning rate the cosine decay has brought to 0; no halving), sampled on the
    first round's 32 levels beside the teacher there; (b) students that keep the teacher's eps
    (``--set diffusion.prediction=eps``: no re-parameterisation, its own eps loss), 64 -> 4 steps;
    (c) a teacher trained with v-prediction from the start (so its student needs no re-parameterisation)
    and its v student, 64 -> 4 steps."""
    S = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(runs_dir if runs_dir is not None else "runs/few_step")
    torch.set_num_threads(1)
    x_train, y_train, x_held, y_held = split_digits()
    ev = Evaluator(Judge(x_train, y_train, x_held, y_held, S["clf_epochs"]), x_held, y_held, S["n"])
    data = (x_train, y_train)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    res = {"command": command + " --progressive-check" + (f" --size {size}" if size != "cpu" else "")
           + ("" if runs_dir is None else f" --runs {runs_dir}") + f" --out {out}",
           "settings": {k: S[k] for k in ("teacher_steps", "pd_steps", "pd_start", "n")}, "rows": []}
    train_run(run_config(PROCESSES["eps-DDPM"], S["teacher_steps"]), runs / "teacher", data)
    teacher = load_run(runs / "teacher")
    first = S["pd_start"] // 2
    copy_steps = (2000, 6000) if size == "cpu" else (4,)

    def ddim_rows(name: str, run) -> None:
        for w in S["guidances"]:
            for k in (4, first, S["pd_start"]):
                res["rows"].append({"model": name, "steps": k, "guidance": w, **ev(run, "ddim", k, w)})

    ddim_rows("teacher", teacher)
    for n_steps in copy_steps:  # all steps but the last (the most validate allows) re-parameterise
        res[f"copy_{n_steps}"] = student(runs / "teacher", runs / f"pd_copy_{n_steps}", "progressive", data, say,
                                         train_steps=n_steps, start_steps=S["pd_start"], steps=first,
                                         overrides=[f"distill.reparam_steps={n_steps - 1}"])
        run = load_run(runs / f"pd_copy_{n_steps}")
        res["rows"].append({"model": f"v copy of the teacher ({n_steps} steps)", "steps": first, "guidance": 1.0,
                            **ev(run, "ddim", first, 1.0)})
    train_run(run_config(dict(PROCESSES["eps-DDPM"], prediction="v"), S["teacher_steps"]), runs / "teacher_v", data)
    ddim_rows("v teacher", load_run(runs / "teacher_v"))
    for name, extra, folder, source in (
            ("eps student", ["diffusion.prediction=eps"], "pd_eps", "teacher"),
            ("eps student, lr 1e-4", ["diffusion.prediction=eps", "optim.lr=1e-4"], "pd_eps_lr", "teacher"),
            ("v teacher's student", [], "pd_of_v", "teacher_v")):
        folder = runs / folder
        res[name] = student(runs / source, folder, "progressive", data, say, train_steps=S["pd_steps"],
                            start_steps=S["pd_start"], steps=4, overrides=extra)
        for f in rounds_of(folder):
            run = load_run(f)
            k = len(run.config.distill.sigmas) - 1
            for w in S["guidances"]:
                res["rows"].append({"model": name, "steps": k, "guidance": w, **ev(run, "ddim", k, w)})
    atomic_write_text(out / "progressive_check.json", json.dumps(res, indent=1))
    return res


# ----------------------------------------------------------------------------- MNIST
# The reduced CPU size of docs/experiments (14x14 MNIST, its class-conditional U-Net, linear
# schedule, eps) with a shorter teacher run, and the students of difflab distill's defaults.
MNIST = {"tiny": dict(teacher_steps=4, cd_steps=4, pd_steps=2, pd_start=8, noise_seeds=2),
         "cpu": dict(teacher_steps=3000, cd_steps=1500, pd_steps=600, pd_start=32, noise_seeds=3)}


def run_mnist(out="docs/few_step", size: str = "cpu", root: str = DEFAULT_MNIST_ROOT, command: str = COMMAND,
              runs_dir: Optional[str] = None, cd_steps: Optional[int] = None, progressive: bool = True) -> dict:
    """1-, 2- and 4-step students of an MNIST teacher against the teacher at 4, 10 and 50 steps: FID in
    the MNIST classifier's features (t10k reference, train5k floor), accuracy, seconds per 1,000.
    ``cd_steps`` replaces the consistency student's optimizer steps; ``progressive=False`` leaves the
    progressive student out."""
    M, S = dict(MNIST[size], **({} if cd_steps is None else {"cd_steps": cd_steps})), dict(MNIST_SIZES[size], floor_28=False)
    S["mnist_steps"] = M["teacher_steps"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(runs_dir if runs_dir is not None else "runs/few_step") / "mnist"
    res: dict = {"command": command + " --mnist" + (f" --size {size}" if size != "cpu" else "")
                 + ("" if cd_steps is None else f" --cd-steps {cd_steps}") + ("" if progressive else " --no-progressive")
                 + ("" if runs_dir is None else f" --runs {runs_dir}") + f" --out {out}",
                 "size": size, "settings": M}
    ref, _, _, _, clf_dir = measure_setup(res, S, runs, root, "cpu", None, progress=False)
    teacher_cfg = mnist_config(S, root, "cpu")
    teacher_cfg["ckpt_every"] = teacher_cfg["steps"]
    res["teacher"] = {"train_seconds": train_run(teacher_cfg, runs / "teacher", None), "config": teacher_cfg}
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    cd = runs / ("cd" if cd_steps is None else f"cd_{cd_steps}")  # (a student of other steps is another run)
    res["consistency"] = student(runs / "teacher", cd, "consistency", None, say, train_steps=M["cd_steps"])
    if progressive:
        res["progressive"] = student(runs / "teacher", runs / "pd", "progressive", None, say,
                                     train_steps=M["pd_steps"], start_steps=M["pd_start"], steps=4)
    labels = torch.arange(S["n"]) % 10
    rows = []

    def evaluate(name: str, folder: Path, sampler: str, steps: int, seed: int = 0) -> dict:
        run = load_run(folder)
        cache = RowCache(runs / "rows.json", f"{size}/n={S['n']}/classifier={clf_dir}")
        key = f"{name}@{run.step}"
        row = SampleEvaluator(run, ref, S, runs, "cpu", cache).evaluate(sampler, steps, 1.0, labels, seed=seed,
                                                                        key_extra=key)
        return {"model": name, "train_step": run.step, **row, "sec_per_1000": 1000 * row["seconds"] / S["n"]}

    for k in (1, 2, 4, 10, 50):
        rows.append(evaluate("teacher", runs / "teacher", "ddim", k))
    rows.append(evaluate("teacher", runs / "teacher", "dpmpp_2m", 10))
    res["fid_noise"] = fid_noise([rows[-2]] + [evaluate("teacher", runs / "teacher", "ddim", 50, seed=10_000 * j)
                                               for j in range(1, M["noise_seeds"])])
    res["tolerance"] = tolerance(rows[-2]["fid"], res["fid_noise"])
    for k in (1, 2, 4):
        rows.append(evaluate("consistency", cd, "consistency", k))
    for folder in rounds_of(runs / "pd") if progressive else []:
        rows.append(evaluate("progressive", folder, "ddim", len(load_run(folder).config.distill.sigmas) - 1))
    res["rows"] = rows
    atomic_write_text(out / "mnist_metrics.json", json.dumps(res, indent=1))
    write_mnist_table(res, out / "mnist_table.md")
    return res


def write_mnist_table(res: dict, path: Path) -> None:
    lines = [f"| model | sampler | steps | {res['metric']} | accuracy | s / 1000 |", "| --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['fid']:.2f} | {100 * r['accuracy']:.1f}% "
                     f"| {r['sec_per_1000']:.1f} |")
    floor = res["floor"]
    lines += ["", f"{res['metric']}: FID in the MNIST classifier's features against t10k, at {res['image_size']}x"
              f"{res['image_size']}. Floor (real train5k digits, as many as the samples): "
              f"{floor['subsets_of_n']['mean']:.2f}" if "subsets_of_n" in floor else "",
              f"Tolerance (the teacher's DDIM-50 FID from {len(res['fid_noise']['fid'])} noises): "
              f"+{res['tolerance']['fid']:.2f}."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/few_step")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--runs", default=None, help="where the training runs go (default runs/few_step)")
    p.add_argument("--mnist", action="store_true", help="the MNIST part (14x14) instead of the digits")
    p.add_argument("--teacher-steps", type=int, help="the digits teacher's training steps (default: its config's 2,000)")
    p.add_argument("--mnist-root", default=DEFAULT_MNIST_ROOT, help="the MNIST folder")
    p.add_argument("--cd-steps", type=int, help="MNIST: the consistency student's optimizer steps (default 1,500)")
    p.add_argument("--no-progressive", action="store_true", help="MNIST: leave the progressive student out")
    p.add_argument("--progressive-check", action="store_true",
                   help="digits: where the progressive student loses the teacher's w = 1 samples (progressive_check.json)")
    args = p.parse_args(argv)
    if (args.cd_steps is not None or args.no_progressive) and not args.mnist:
        p.error("--cd-steps and --no-progressive belong to the MNIST part: add --mnist")
    if args.progressive_check and (args.mnist or args.teacher_steps):
        p.error("--progressive-check uses the digits teacher of 2,000 steps: drop --mnist and --teacher-steps")
    if args.cd_steps is not None and args.cd_steps < 1:
        p.error(f"--cd-steps must be a positive number of optimizer steps, got {args.cd_steps}")
    if args.progressive_check:
        res = progressive_check(args.out, args.size, COMMAND, args.runs)
        for r in res["rows"]:
            print(f"{r['model']:40s} {r['steps']:3d} steps, w = {r['guidance']:g}: FD {r['fd']:.1f}, "
                  f"{100 * r['accuracy']:.1f}%, spread {r['spread']:.2f}")
        return 0
    if args.mnist:
        run_mnist(args.out, args.size, args.mnist_root, COMMAND, args.runs, args.cd_steps, not args.no_progressive)
        print((Path(args.out) / "mnist_table.md").read_text())
        return 0
    res = run_experiment(args.out, args.size, COMMAND, args.runs, args.teacher_steps)
    print((Path(args.out) / "table.md").read_text())
    print(json.dumps(res["must_show"], indent=1))
    print(f"wrote {args.out}/metrics.json, table.md and fd_vs_nfe.png ({shlex.join(sys.argv)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
