"""A distillation run: a few-step student of a trained run, trained into a run folder (``difflab distill``).

    progressive   rounds of progressive distillation (Salimans & Ho 2022), start_steps -> ... -> steps:
                  round k trains a v-predicting student (x0 where the process has no v) from its
                  teacher's weights on :class:`.progressive.ProgressiveDistillationLoss`; the rounds
                  before the last are run folders in OUT/rounds/<steps>, the last is OUT itself
    consistency   consistency distillation (Song et al. 2023, :class:`.consistency.ConsistencyDistillationLoss`):
                  the teacher's network in ``models.ConsistencyModel``, the trainer's EMA as target
    guided        the same with the guidance scale as the student's input and a guided teacher
                  (latent consistency models, Luo et al. 2023)

The student's config is the teacher's (or a given one, which must describe the teacher's process
and data shape) with the method's changes and a ``distill`` section naming the teacher; it starts
from the teacher's EMA weights. Every folder is an ordinary run folder (``dl.load``,
``difflab sample --ckpt OUT``, which keeps the student's sampler and steps) and resumes like one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ..models import ConsistencyModel
from ..samplers.timesteps import sampling_sigmas
from ..validation import is_int, positive_int
from .build import build_process
from .checkpoint import LoadedRun, latest_checkpoint, load, read_checkpoint
from .config import DISTILL_METHODS, TrainConfig, apply_overrides, config_diff, field_overrides, load_config
from .consistency import ConsistencyDistillationLoss
from .distill import Phased, TeacherDenoiserLoss, same_levels
from .latent import autoencoder_folder
from .progressive import ProgressiveDistillationLoss, halve
from .trainer import Trainer

__all__ = ["distill", "student_config", "ROUNDS_DIR"]

ROUNDS_DIR = "rounds"  # OUT/rounds/<steps>: the progressive rounds before the last
# Consistency distillation's defaults (--set overrides them): the discretisation doubles from 4 to 32
# intervals (Song et al. 2023 fix N = 18; measured on digits in docs/few_step.md), and the
# target network is the trainer's EMA with mu = 0.95 (Song et al.'s CD value)
CONSISTENCY_DISTILLATION = ("consistency.s0=4", "consistency.s1=32", "ema.decay=0.95")
REPARAM_STEPS = 500  # a v student of an eps teacher first learns the teacher's denoiser (distill.reparam_steps)


def distill(
    teacher: Union[str, Path, LoadedRun],
    out: Union[str, Path],
    method: str,
    *,
    config: Union[str, Path, TrainConfig, None] = None,
    train_steps: Optional[int] = None,
    start_steps: int = 64,
    steps: int = 4,
    overrides: Sequence[str] = (),
    data: Optional[tuple] = None,
    seed: int = 0,
    device: Optional[str] = None,
    cpu_threads: Optional[int] = None,
    resume: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = lambda line: None,
) -> dict:
    """Distil the run ``teacher`` (run folder, checkpoint, export or :class:`LoadedRun`) into ``out``.

    ``method``: progressive, consistency or guided. ``config``: the student's config (default: the
    teacher's); ``overrides``: ``"key=value"`` changes applied after the method's (e.g.
    ``"consistency.s1=64"``). ``train_steps``: optimizer steps of the student (of each round, for
    progressive; default: the config's ``steps``). Progressive: from ``start_steps`` teacher steps
    (DDIM on its default levels) down to ``steps`` student steps, both powers of two apart.
    ``data=(x, labels)``: the images the students train on instead of the config's data set (as
    ``Trainer(data=...)``: e.g. the teacher's own training split). ``resume=True`` continues an
    interrupted distillation in ``out`` (finished rounds are kept).
    A round stopped by ``max_time`` ends the call (the next round needs its finished student).
    Returns {"out", "checkpoint", "rounds": [one dict per round trained or kept], "finished"}.
    """
    if method not in DISTILL_METHODS:
        raise ValueError(f"method must be one of {', '.join(DISTILL_METHODS)}, got {method!r}")
    if train_steps is not None:
        train_steps = positive_int("train_steps", train_steps)
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    out = Path(out)
    run = teacher if isinstance(teacher, LoadedRun) else load(teacher)
    _check_out(run, out, resume)
    base = config if isinstance(config, TrainConfig) else (load_config(config) if config is not None else run.config)
    _check_teacher(run, base)
    common = field_overrides(seed=int(seed), steps=train_steps, device=device, cpu_threads=cpu_threads)
    if method != "progressive":
        cfg = student_config(base, run, method, list(common) + list(overrides))
        _check_teacher(run, cfg)  # (after --set: an override may change the process or the data)
        result = _train_round(cfg, out, run, method, resume, progress, say, data)
        return {"out": str(out), "checkpoint": result["checkpoint"], "rounds": [result],
                "finished": not result["stopped_early"]}
    rounds = _progressive_plan(run, start_steps, steps)
    folders = [out / ROUNDS_DIR / f"{len(s) - 1:03d}" for s in rounds[:-1]] + [out]
    _check_rounds(folders, student_config(base, run, method, list(common) + list(overrides), sigmas=rounds[0]))
    results, current = [], run
    for k, (levels, folder) in enumerate(zip(rounds, folders)):
        cfg = student_config(base, current, method, list(common) + list(overrides), sigmas=levels)
        _check_teacher(current, cfg)
        say(f"progressive distillation, round {k + 1} of {len(rounds)}: {2 * (len(levels) - 1)} -> "
            f"{len(levels) - 1} steps, into {folder}")
        results.append(_train_round(cfg, folder, current, method, resume, progress, say, data))
        if results[-1]["stopped_early"]:  # (max_time) the next round needs this one's finished student
            say(f"round {k + 1} stopped at step {results[-1]['step']} of {cfg.steps}: resume to finish it and "
                "the rounds after it")
            break
        current = load(folder)
    return {"out": str(out), "checkpoint": results[-1]["checkpoint"], "rounds": results,
            "finished": not results[-1]["stopped_early"] and len(results) == len(rounds)}


def student_config(base: TrainConfig, teacher: LoadedRun, method: str, overrides: Sequence[str] = (),
                   sigmas: Optional[Sequence[float]] = None) -> TrainConfig:
    """The student's config: ``base`` with the method's changes, the ``distill`` section naming
    ``teacher``, then ``overrides``."""
    proc = teacher.proc
    # a captured step (cuda_graph, compile: step) replays one step's draws: the students' losses read
    # their levels and curriculum on the host, per step
    changes = [f"distill.method={method}", f"distill.teacher={Path(teacher.path).resolve()}",
               f"distill.teacher_step={teacher.step}", "sample.every=0", "cuda_graph=false"]
    if base.compile == "step":
        changes.append("compile=model")
    if teacher.config.latent.autoencoder is not None:  # the autoencoder the teacher's latents came from: its copy
        folder = autoencoder_folder(Path(teacher.path), teacher.config.latent.autoencoder)
        changes.append(f"latent.autoencoder={folder.resolve()}")
    if method == "progressive":
        # v (or x0) by default, as Salimans & Ho recommend; a --set diffusion.prediction (e.g. the teacher's
        # eps) is kept, and the student then learns its teacher's denoiser first only if it differs
        default = "v" if "v" in type(proc).predictions else "x0"
        prediction = apply_overrides(base, [f"diffusion.prediction={default}",
                                            *overrides]).diffusion.resolved_prediction
        if prediction != proc.prediction:
            changes.append(f"distill.reparam_steps={_reparam_steps(base, overrides)}")
        levels = [float(v) for v in sigmas]
        changes += [f"diffusion.prediction={prediction}", f"distill.sigmas={levels}", "sample.sampler=ddim",
                    f"sample.steps={len(levels) - 1}"]
    else:
        # the student's network predicts v where its teacher's predicts eps: its x0 = a x_t - s v stays
        # finite where the signal vanishes (an eps network's x0 = (x_t - s eps) / a multiplies its
        # error by 1 / a = 2e4 at the DDPM chain's top level), and v = eps where the noise is small
        net_prediction = getattr(teacher.ema_model, "net_prediction", None) or proc.prediction
        if net_prediction == "eps" and "v" in type(proc).predictions:
            net_prediction = "v"
            changes.append(f"distill.reparam_steps={_reparam_steps(base, overrides)}")
        changes += ["diffusion.prediction=x0", f"consistency.net_prediction={net_prediction}",
                    f"consistency.boundary={proc.sigma_min!r}", *CONSISTENCY_DISTILLATION,
                    "sample.sampler=consistency", "sample.steps=1"]
        if method == "guided":
            if teacher.num_classes is None:
                raise ValueError(f"guided distillation needs a class-conditional teacher with label dropout; "
                                 f"{str(teacher.path)!r} is unconditional: use --method consistency")
            changes += ["model.kwargs.guidance_embed=true", "cond_drop_prob=0"]
        else:
            changes += ["sample.guidance=1.0"]
    return apply_overrides(base, changes + list(overrides)).validate()


def _reparam_steps(base: TrainConfig, overrides: Sequence[str]) -> int:
    """The re-parameterisation phase of a student of ``steps`` steps: REPARAM_STEPS, at most half of
    them (a resumed student keeps the phase it started with, whatever its new steps)."""
    return min(REPARAM_STEPS, apply_overrides(base, list(overrides)).steps // 2)


def _progressive_plan(run: LoadedRun, start_steps: int, steps: int) -> list[list[float]]:
    """The students' levels, round by round: the teacher's ``start_steps`` levels (its DDIM spacing)
    halved until ``steps`` remain."""
    start_steps, steps = positive_int("start_steps", start_steps), positive_int("steps", steps)
    ratio = start_steps // steps
    if start_steps % steps or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(f"progressive distillation halves the teacher's start_steps = {start_steps} (--start-steps) "
                         f"down to the student's steps = {steps} (--student-steps): start_steps must be steps times "
                         "a power of two (>= 2), e.g. 64 and 4")
    if getattr(run.ema_model, "distilled_sigmas", None) is not None:
        levels = torch.as_tensor(run.ema_model.distilled_sigmas, dtype=torch.float64)
        if len(levels) - 1 != start_steps:
            raise ValueError(f"{str(run.path)!r} is a progressive student of {len(levels) - 1} steps: distil it with "
                             f"start_steps = {len(levels) - 1} (--start-steps {len(levels) - 1})")
    else:
        proc = run.proc
        levels = sampling_sigmas(proc, start_steps, "trailing" if proc.discrete else proc.default_spacing)
    plan = []
    while len(levels) - 1 > steps:
        levels = halve(levels)
        plan.append(levels.tolist())
    return plan


def _train_round(cfg: TrainConfig, out: Path, teacher: LoadedRun, method: str, resume: bool, progress: bool,
                 say: Callable[[str], None], data: Optional[tuple] = None) -> dict:
    """Train one student into ``out`` (a finished one is kept when resuming)."""
    continued = False
    if latest_checkpoint(out) is not None:
        saved = read_checkpoint(latest_checkpoint(out), verify=False)
        if not resume:
            raise FileExistsError(f"{str(out)!r} already holds a run; pass --resume (resume=True) to continue the "
                                  "distillation, or choose another output folder")
        # the phase it started with (set from its steps then): a resume with more steps keeps it
        cfg = apply_overrides(cfg, [f"distill.reparam_steps={saved['config'].distill.reparam_steps}"])
        diff = config_diff(saved["config"], cfg)
        if diff:
            lines = ", ".join(f"{k} (checkpoint: {a!r}, now: {b!r})" for k, a, b in diff)
            raise ValueError(f"cannot resume the distillation in {str(out)!r}: its config differs in {lines}; "
                             "resume with the same settings, or distil into another folder")
        if int(saved["state"]["step"]) >= cfg.steps:
            say(f"{out}: finished (step {saved['state']['step']}), kept")
            return {"out": str(out), "checkpoint": str(latest_checkpoint(out)), "steps": cfg.steps, "kept": True,
                    "step": int(saved["state"]["step"]), "stopped_early": False}
        continued = True
    tproc = teacher.proc
    teacher_net = teacher.ema_model
    teacher_net.eval()
    proc = build_process(cfg)
    if method == "progressive":
        loss_fn = ProgressiveDistillationLoss(proc, teacher_net, tproc, _teacher_levels(cfg, teacher),
                                              clip_x0=tproc.clip_x0)
    else:
        c = cfg.consistency
        loss_fn = ConsistencyDistillationLoss(proc, teacher_net, tproc, total_steps=cfg.steps, s0=c.s0, s1=c.s1,
                                              start_step=cfg.distill.reparam_steps,
                                              solver=c.solver, guidance=c.guidance if method == "guided" else None,
                                              c=c.huber_c, clip_x0=tproc.clip_x0)
    if cfg.distill.reparam_steps:
        boundary = (proc.sigma_min, cfg.consistency.boundary) if cfg.consistency_model else None
        loss_fn = Phased(TeacherDenoiserLoss(proc, teacher_net, tproc, tproc.clip_x0, boundary),
                         cfg.distill.reparam_steps, loss_fn)
    with Trainer(cfg, out, loss_fn=loss_fn, data=data, resume=continued, progress=progress) as trainer:
        if trainer.cpu_threads_note:
            say(trainer.cpu_threads_note)
        if not continued:  # the teacher's weights: the student and its average start there
            for module in (trainer.model, trainer.ema.model):
                _load_teacher(module, teacher_net, method, teacher.path)
        result = trainer.train()
    return {"out": str(out), "checkpoint": result["checkpoint"], "steps": cfg.steps, "step": result["step"],
            "seconds": result["total_seconds"], "loss": result["loss"], "stopped_early": result["step"] < cfg.steps}


def _teacher_levels(cfg: TrainConfig, teacher: LoadedRun) -> list[float]:
    """The teacher's levels of a progressive round: the student's with the teacher's midpoints."""
    own = getattr(teacher.ema_model, "distilled_sigmas", None)
    if own is not None:
        return list(own)
    student = len(cfg.distill.sigmas) - 1
    proc = teacher.proc
    return sampling_sigmas(proc, 2 * student, "trailing" if proc.discrete else proc.default_spacing).tolist()


def _inner(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ConsistencyModel (the student's), else the module itself."""
    return module.net if isinstance(module, ConsistencyModel) else module


def _load_teacher(student: torch.nn.Module, teacher: torch.nn.Module, method: str, path) -> None:
    """The teacher's weights into the student's network: all of them must fit, and the student may
    have only its guidance embedding (zero-initialised, so it starts as the teacher) besides."""
    target = _inner(student)
    missing, unexpected = target.load_state_dict(_inner(teacher).state_dict(), strict=False)
    extra = [k for k in missing if not (method == "guided" and ".guidance_embed." in f".{k}")]
    if extra or unexpected:
        raise ValueError(f"the weights of {str(path)!r} do not fit the student's network (missing {extra[:4]}, "
                         f"unexpected {unexpected[:4]}): distil with the teacher's model config")


def _check_rounds(folders: Sequence[Path], first: TrainConfig) -> None:
    """Before a resumed progressive distillation trains anything: every round it started has the
    step count asked for now (a round extended by a resume would make the next round's teacher
    another one than its checkpoint names, and that round unresumable)."""
    for folder in folders:
        ck = latest_checkpoint(folder)
        if ck is None:
            continue
        saved = read_checkpoint(ck, verify=False)["config"]
        if saved.steps != first.steps:
            raise ValueError(f"the progressive round in {str(folder)!r} was trained with {saved.steps} steps, not "
                             f"{first.steps}: resume it with --steps {saved.steps} (train_steps={saved.steps}), or "
                             "distil into another folder")


def _check_out(run: LoadedRun, out: Path, resume: bool) -> None:
    source = Path(run.path).resolve()
    target = out.resolve()
    if target == source or target in source.parents:
        raise ValueError(f"out {str(out)!r} holds the teacher ({str(run.path)!r}); distil into another folder")
    if resume and latest_checkpoint(out) is None and not (out / ROUNDS_DIR).is_dir():
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: no distillation was started there; start "
                                "without --resume")
    if not resume and (latest_checkpoint(out) is not None or (out / ROUNDS_DIR).is_dir()):
        raise FileExistsError(f"{str(out)!r} already holds a distillation (or a run); pass --resume (resume=True) "
                              "to continue it, or choose another output folder")


def _check_teacher(run: LoadedRun, cfg: TrainConfig) -> None:
    """The config must describe the teacher's process (its noise levels; the prediction may differ)
    and its data's shape: the student learns the teacher's ODE at the teacher's resolution."""
    proc = build_process(cfg)
    tproc = run.proc
    if not same_levels(proc, tproc):
        raise ValueError(f"the config's process ({proc!r}) is not the teacher's ({tproc!r}): a student learns its "
                         "teacher's noise levels; use the teacher's diffusion section (or omit --config)")
    if cfg.data.name != run.config.data.name or cfg.data.kwargs != run.config.data.kwargs \
            or cfg.data.flatten != run.config.data.flatten:
        raise ValueError(f"the config's data ({cfg.data.name!r}, {cfg.data.kwargs}, flatten={cfg.data.flatten}) is "
                         f"not the teacher's ({run.config.data.name!r}, {run.config.data.kwargs}, flatten="
                         f"{run.config.data.flatten}); the student needs the teacher's data at its resolution "
                         f"{tuple(run.image_shape)}")
