"""Video diffusion on moving digits, measured (issue 27's must-shows; not part of the difflab package).

    difflab train --config configs/moving_digits.yaml --out runs/moving_digits   # the network
    python experiments/video.py --run runs/moving_digits --out docs/video        # these measures

A trained class-conditional ``VideoUNet`` (8 frames of one sklearn digit on a 16x16 canvas) is
judged from its clips' pixels with two instruments built on the real data:

- **a digit classifier** (:func:`difflab.evaluation.classifier.train_classifier`, a small CNN) trained
  on scikit-learn's 8x8 digits (1,497 of them; 300 held out for its accuracy). It reads each frame's
  digit from the 8x8 window around the frame's centre of mass (:func:`crops`): **identity over
  time** is the share of clips whose every later frame gets the first frame's class, and the
  **per-frame Frechet distance** (FD) is taken in its 128 features, against the windows of real
  frames, beside its floor (other real frames, as many as the generated ones);
- **the motion measure** (:func:`difflab.evaluation.motion_residual`): the RMS distance between a
  clip's centre-of-mass track and the best constant-velocity path with bounces (real clips: 0.35 px).

Clips are drawn by DDIM (``--steps``, 50) from the same noise for every model: the video network
guided by its class label (w = 3, as the config samples), given the label without guidance (w = 1)
and unconditional, and the image-model
baseline, the same network with its temporal layers masked out (``model.frame_by_frame()``; the
run trained a fifth of its clips as independent frames, Ho et al.'s joint training, so its
spatial layers are an image model of the frames). Unconditional clips are where identity is the
network's own doing: a guided frame-by-frame model is told the class at every frame.

The tasks go through :func:`difflab.editing.inpaint` with space-time masks
(:mod:`difflab.editing.masks`), DDIM and the replacement method, the true label given (w = 1):

- **prediction**: frames 0 and 1 of real clips given, frames 2..7 generated; the error is the
  distance between each generated frame's centre of mass and the true one (the data's exact
  continuous position plus the sprite's own ink centre), beside baselines that see the same two
  frames' centres of mass: the last frame copied, constant velocity (a straight line), and constant
  velocity bouncing off the walls (given the sprite's true ink offset, i.e. where the walls are for
  the centre of mass: the physics with the velocity estimated from two rounded frames);
- **frame interpolation**: frames 0 and 7 given, 1..6 generated, beside the straight line between them;
- **video inpainting**: the canvas's middle 8x8 box filled in every frame.

**Reconstruction guidance** (Ho et al. 2022, sec. 3.1; ``inpaint(reconstruction_guidance=w_r)``)
for prediction and interpolation: w_r is picked on other clips (seed 14, ``sweep`` of them) as the
weight of ``SIZES[size]["weights"]`` with the least mean prediction error, then the two best
weights predict the same held-out clips as the replacement method, the best interpolates, and the
best with RePaint's resampling predicts RePaint's clips.

**A mask-conditioned run** (``--masked-run RUN``, configs/moving_digits_masked.yaml: the network reads
[x_t, (1 - m) y, m], trained on a mix of the tasks; :mod:`difflab.models.masked`) is judged by
:func:`evaluate_masked` on the same held-out clips with the same noise, the same error functions and
the same settings (DDIM, the true label at w = 1 for the tasks; w = 3 and unconditional for clips
generated with nothing given), beside the baselines and the conditional run's rows read from
``OUT/video.json``; it writes ``video_masked.json`` and its figures:

    python experiments/video.py --masked-run runs/moving_digits_masked --out docs/video
"""

from __future__ import annotations

import argparse
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
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

import difflab as dl  # noqa: E402
from difflab.data.clips import save_clips_gif, save_frame_grid  # noqa: E402
from difflab.data.moving import bounce  # noqa: E402
from difflab.editing import masks  # noqa: E402
from difflab.evaluation.classifier import ClassifierFeatures, train_classifier  # noqa: E402
from difflab.evaluation.fid import extract_features, frechet_distance  # noqa: E402
from difflab.evaluation.motion import INK_LEVEL, centre_of_mass, motion_residual  # noqa: E402
from difflab.files import atomic_write, atomic_write_text  # noqa: E402
from difflab.models.masked import masked_model  # noqa: E402
from experiments.processes import split_digits  # noqa: E402

COMMAND = "python experiments/video.py"
SPEED = (0.5, 1.5)  # the config's speed range, pixels a frame: the motion fit's max_speed too
SPRITE = 8
GIVEN = 2  # prediction: frames given
SIZES = {
    # n: generated clips per model; pred: clips predicted (and n // 2 interpolated); real: reference clips
    "tiny": dict(n=4, pred=4, inpaint=2, real=16, clf_epochs=1, repaint=2, sweep=2, weights=(4.0, 16.0)),
    "cpu": dict(n=100, pred=100, inpaint=16, real=1000, clf_epochs=30, repaint=100, sweep=20,
                weights=(2.0, 4.0, 8.0, 16.0, 32.0)),
}
SEEDS = {"real": 11, "floor": 12, "tasks": 13, "sweep": 14, "noise": 0}  # data seeds apart from the training set's (0)
# reconstruction guidance's weights w_r tried on the sweep clips: SIZES[size]["weights"]


# ---------------------------------------------------------------------------- the instruments
def crops(clips: Tensor, size: int = SPRITE) -> Tensor:
    """[N * T, C, size, size]: each frame's digit, the ``size`` x ``size`` window that holds the most
    ink (pixels above :data:`~difflab.evaluation.motion.INK_LEVEL`, weighted as the centre of mass
    weighs them), the one nearest the window centred on the centre of mass among equals. A window
    centred on the centre of mass alone cuts off a column of lopsided digits (a 7's or a 1's ink
    leans to one side of its sprite); on a real frame this window holds every inked pixel of the
    sprite (tested), so the classifier reads the digit it would read from the sprite itself."""
    N, T, C, H, W = clips.shape
    frames = clips.reshape(N * T, C, H, W)
    ink = (frames.double().mean(1, keepdim=True) - INK_LEVEL).clamp(min=0)  # [NT, 1, H, W]
    held = F.avg_pool2d(ink, size, stride=1).flatten(1) * size * size  # [NT, (H-size+1)(W-size+1)]
    com = centre_of_mass(clips).reshape(N * T, 2)  # (row, col), NaN without ink
    com = torch.where(torch.isnan(com), torch.tensor([(H - 1) / 2, (W - 1) / 2], dtype=com.dtype), com)
    rows, cols = torch.meshgrid(torch.arange(H - size + 1), torch.arange(W - size + 1), indexing="ij")
    centred = com - (size - 1) / 2  # the corner of the window centred on the centre of mass
    dist = (rows.flatten()[None] - centred[:, :1]) ** 2 + (cols.flatten()[None] - centred[:, 1:]) ** 2
    # the most ink; among windows within a hundredth of a pixel's ink of it, the nearest
    best = torch.where(held >= held.max(1, keepdim=True).values - 1e-2, -dist, -math.inf).argmax(1)
    r = (best // (W - size + 1))[:, None] + torch.arange(size)  # [NT, size]
    c = (best % (W - size + 1))[:, None] + torch.arange(size)
    i = torch.arange(N * T)[:, None, None]
    return frames.permute(0, 2, 3, 1)[i, r[:, :, None], c[:, None, :]].permute(0, 3, 1, 2).contiguous()


class Judge:
    """The digit classifier (trained on the real 8x8 digits) and its reading of clips."""

    def __init__(self, epochs: int, seed: int = 0) -> None:
        x_train, y_train, x_held, y_held = split_digits(seed)
        self.clf, record = train_classifier(x_train, y_train, test_images=x_held, test_labels=y_held, epochs=epochs,
                                            seed=seed)
        self.held_accuracy = record["test_accuracy"]
        self.features = ClassifierFeatures(self.clf, "digits-cnn")

    @torch.no_grad()
    def classes(self, clips: Tensor) -> Tensor:
        """[N, T] long: the class of each frame's digit window."""
        N, T = clips.shape[:2]
        return self.clf(crops(clips.clamp(-1, 1))).argmax(1).reshape(N, T)

    def identity(self, clips: Tensor, labels: Optional[Tensor] = None) -> dict:
        """Identity over time: ``same_class`` is the share of clips whose every frame has the first
        frame's class; ``frame_agreement`` the share of later frames (1 .. T-1) that do (for
        frames of independent random classes about sum_c p_c^2, a tenth for ten equal classes);
        with ``labels``, ``label_accuracy`` is the share of frames of the requested class."""
        k = self.classes(clips)
        agree = k[:, 1:] == k[:, :1]
        out = {"same_class": round(float(agree.all(1).double().mean()), 4),
               "frame_agreement": round(float(agree.double().mean()), 4)}
        if labels is not None:
            out["label_accuracy"] = round(float((k == labels[:, None]).double().mean()), 4)
        return out

    def frame_features(self, clips: Tensor, window: bool) -> Tensor:
        """The classifier's features [N * T, 128] of every frame: of its digit window (``window``)
        or of the whole frame (the network pools to 4x4 whatever the size)."""
        frames = crops(clips.clamp(-1, 1)) if window else clips.clamp(-1, 1).flatten(0, 1)
        return extract_features(self.features, frames)


def motion(clips: Tensor) -> dict:
    """The bouncing-path residual (pixels) of each clip's centre-of-mass track: median, 90th
    percentile, share within 1 pixel (a clip with an inkless frame has no track: counted apart)."""
    r = motion_residual(clips.clamp(-1, 1), SPRITE, max_speed=SPEED[1])
    ok = r[torch.isfinite(r)]
    if len(ok) == 0:
        return {"median": None, "p90": None, "within_1px": 0.0, "no_track": len(r)}
    return {"median": round(float(ok.median()), 4), "p90": round(float(ok.quantile(0.9)), 4),
            "within_1px": round(float((r <= 1).double().mean()), 4), "no_track": int(len(r) - len(ok))}


# ---------------------------------------------------------------------------- positions
def true_centres(md) -> tuple[Tensor, Tensor]:
    """([N, T, 2], [N, 1, 2]): where each real clip's digit's centre of mass truly is, the exact
    continuous corner (``md.positions``) plus the sprite's own ink centre o, read from frame 0
    (where the sprite is pasted with its corner at ``md.pixel_positions``); and o."""
    o = centre_of_mass(md.clips[:, :1])[:, 0] - md.pixel_positions[:, 0, 0].double()  # [N, 2]
    return md.positions[:, 0] + o[:, None], o[:, None]


def prediction_baselines(track: Tensor, given: int, ink_offset: Tensor, canvas: int) -> dict:
    """Centre-of-mass tracks [N, T, 2] from the first ``given`` frames' centres of mass ``track``
    alone: the last given frame copied; a straight line at the last two frames' velocity v; and
    that velocity bouncing off the walls, the corner c = centre - o moving on
    bounce(c_last + v (t - k + 1), L) (given the sprite's ink offset o, where the walls lie for the
    centre of mass: the data's physics with v from two rounded frames)."""
    T, k = track.shape[1], given
    ahead = torch.arange(T, dtype=torch.float64)[None, :, None] - (k - 1)
    last, v = track[:, k - 1 : k], track[:, k - 1 : k] - track[:, k - 2 : k - 1]
    bounced = bounce(last - ink_offset + v * ahead, float(canvas - SPRITE)) + ink_offset
    return {"copy the last frame": last.expand_as(track).clone(),
            "constant velocity, straight": last + v * ahead,
            "constant velocity with bounces": bounced}


def interpolation_baseline(track: Tensor) -> Tensor:
    """The straight line between the first and last frames' centres of mass, [N, T, 2]."""
    T = track.shape[1]
    t = torch.arange(T, dtype=torch.float64)[None, :, None] / (T - 1)
    return track[:, :1] + (track[:, -1:] - track[:, :1]) * t


def errors(track: Tensor, truth: Tensor, frames: Sequence[int]) -> dict:
    """The distance (pixels) between ``track`` and ``truth`` on ``frames``: the mean over every
    clip and frame, and the mean per frame (a frame without ink has no centre: counted apart)."""
    d = (track[:, list(frames)] - truth[:, list(frames)]).norm(dim=-1)  # [N, len(frames)]
    ok = torch.isfinite(d)
    per_frame = [round(float(d[:, j][ok[:, j]].mean()), 3) if ok[:, j].any() else None for j in range(d.shape[1])]
    return {"mean": round(float(d[ok].mean()), 4) if ok.any() else None, "per_frame": per_frame,
            "no_ink": int((~ok).sum())}


# ---------------------------------------------------------------------------- drawing, cached
def cached(cache: Optional[Path], name: str, make) -> tuple[Tensor, Optional[float]]:
    """(``make()`` clamped to [-1, 1], the seconds it took), stored in ``cache``: a rerun reads both
    back instead of sampling again (the seconds of the run that drew them)."""
    path = None if cache is None else cache / f"{name}.pt"
    if path is not None and path.is_file():
        stored = torch.load(path)
        return (stored["clips"], stored["seconds"]) if isinstance(stored, dict) else (stored, None)
    start = time.perf_counter()
    x = make().clamp(-1, 1).float()
    seconds = round(time.perf_counter() - start, 1)
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save({"clips": x, "seconds": seconds}, tmp))
    return x, seconds


def pairs(truth: Tensor, result: Tensor, m: int) -> Tensor:
    """[2m, T, C, H, W]: the first m clips, each the real clip's row over the result's row."""
    return torch.stack([truth[:m], result[:m]], 1).flatten(0, 1)


# ---------------------------------------------------------------------------- the experiment
def prediction_row(pred: dict, predicted: Tensor, md, real_track: Tensor, truth: Tensor, ink: Tensor, judge,
                   seconds) -> dict:
    """The prediction row: the models' errors ``pred`` per predicted frame, then the baselines' and the
    real frames' (the rounding floor), and the predicted clips' identity and motion."""
    ahead = range(GIVEN, md.clips.shape[1])
    for name, track in prediction_baselines(real_track, GIVEN, ink, md.clips.shape[-2]).items():
        pred[name] = errors(track, truth, ahead)
    pred["the real frames (rounding to whole pixels)"] = errors(real_track, truth, ahead)
    return {"clips": len(md.clips), "given": GIVEN, "errors_px": pred,
            "identity": judge.identity(predicted, md.labels[:, 0]), "motion": motion(predicted),
            "sampling_seconds": seconds}


def box_inpainting(fill, name: str, md, m: int, noise: Tensor, judge) -> tuple[Tensor, dict]:
    """Video inpainting: the middle box (a quarter of the canvas in from each side) filled in every
    frame of the first ``m`` clips by ``fill`` (an evaluation's sampler); the clips and their row."""
    T, _, H, W = md.clips.shape[1:]
    box = (H // 4, W // 4, H - H // 4, W - W // 4)
    filled, seconds = fill(name, md.clips[:m], masks.across_frames(dl.editing.box_mask((H, W), *box), T),
                           md.labels[:m, 0], noise[:m])
    return filled, {"clips": m, "box_x0_y0_x1_y1": list(box), "identity": judge.identity(filled, md.labels[:m, 0]),
                    "motion": motion(filled), "real_motion": motion(md.clips[:m]), "sampling_seconds": seconds}


def evaluate(run, out: Path, size: str = "cpu", steps: int = 50, guidance: float = 3.0,
             cache: Optional[Path] = None, command: str = COMMAND, unconditional=None) -> dict:
    """Every measure of the module's docstring for the loaded ``run``; figures and video.json in ``out``.
    ``unconditional``: a loaded run of the same config trained without labels, whose clips (and
    frame-by-frame clips) are judged beside the conditional run's unconditional branch."""
    cfg = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    model, proc = run.ema_model, run.proc
    frame_model = model.frame_by_frame()
    T, C, H, W = run.sample_shape
    data = dict(frames=T, canvas=H, digits=1, speed=SPEED)
    res = {"command": command, "run": str(run.path), "run_step": run.step, "size": size, "sampler": "ddim",
           "steps": steps, "guidance": guidance, "seeds": SEEDS, "clip_shape": [T, C, H, W]}
    clock = time.perf_counter()

    judge = Judge(cfg["clf_epochs"])
    res["classifier"] = {"held_out_accuracy": round(judge.held_accuracy, 4), "epochs": cfg["clf_epochs"]}
    real = dl.data.moving_digits(cfg["real"], seed=SEEDS["real"], **data)
    floor = dl.data.moving_digits(cfg["n"], seed=SEEDS["floor"], **data)
    reference = {w: judge.frame_features(real.clips, w) for w in (True, False)}

    def row(clips: Tensor, labels: Optional[Tensor] = None) -> dict:
        r = {"identity": judge.identity(clips, labels), "motion": motion(clips)}
        r["fd_window"] = round(frechet_distance(reference[True], judge.frame_features(clips, True)), 3)
        r["fd_frame"] = round(frechet_distance(reference[False], judge.frame_features(clips, False)), 3)
        return r

    n = cfg["n"]
    order = torch.argsort(torch.rand(n, T, generator=torch.Generator().manual_seed(0)), 1)
    rows = {"real clips (the floor)": row(floor.clips, floor.labels[:, 0]),
            "real clips, frames shuffled": row(floor.clips[torch.arange(n)[:, None], order])}
    res["real_crop_accuracy"] = rows["real clips (the floor)"]["identity"]["label_accuracy"]
    # the floor of as many frames drawn one a clip (n T digits, not n digits seen T times each): the
    # FD of frames rewards variety between frames, which a clip of one digit does not have
    many = dl.data.moving_digits(n * T, seed=SEEDS["floor"] + 10, **data)
    single = many.clips[torch.arange(n * T), torch.arange(n * T) % T][:, None]  # [nT, 1, C, H, W]
    res["fd_floor_one_frame_a_clip"] = {
        f"fd_{name}": round(frechet_distance(reference[w], judge.frame_features(single, w)), 3)
        for name, w in (("window", True), ("frame", False))}

    labels = torch.arange(n) % 10
    noise = torch.randn(n, T, C, H, W, generator=torch.Generator().manual_seed(SEEDS["noise"]))
    settings = {"video, guided": (model, labels, guidance), "video, unconditional": (model, None, 1.0),
                "frame by frame, unconditional": (frame_model, None, 1.0),
                "frame by frame, guided": (frame_model, labels, guidance),
                "video, conditional, w = 1": (model, labels, 1.0)}
    if unconditional is not None:  # a whole run without labels: not a 10%-dropout branch of a conditional one
        res["unconditional_run"] = {"run": str(unconditional.path), "run_step": unconditional.step}
        tag = f"step{unconditional.step}"
        settings[f"video, unconditional model ({tag})"] = (unconditional.ema_model, None, 1.0)
        settings[f"frame by frame, unconditional model ({tag})"] = (unconditional.ema_model.frame_by_frame(), None, 1.0)

    def save() -> None:  # after every part, so a long run's finished parts are on disk
        res["seconds"] = round(time.perf_counter() - clock, 1)
        atomic_write_text(out / "video.json", json.dumps(res, indent=1) + "\n")
        atomic_write_text(out / "video_tables.md", tables(res))

    drawn = {}

    def generate(name: str) -> None:
        net, cond, w = settings[name]
        drawn[name], seconds = cached(cache, name.replace(", ", "_").replace(" = ", "").replace(" ", "_"),
                                      lambda: dl.sample(net, proc, noise.shape, "ddim", steps, cond=cond,
                                                        guidance=w, noise=noise))
        rows[name] = row(drawn[name], cond)
        rows[name]["sampling_seconds"] = seconds
        res["generation"] = rows
        save()

    for name in list(settings)[:3]:  # the guided frame-by-frame clips after the prediction: the must-shows first
        generate(name)
    for name in list(settings)[5:]:  # the unconditional run's
        generate(name)
        if name.startswith("video"):
            save_frame_grid(drawn[name][:min(10, n)], out / "video_unconditional_model_frames.png", scale=3)
    shown = min(10, n)
    save_clips_gif(torch.cat([drawn["video, guided"][:shown], drawn["video, unconditional"][:shown]]),
                   out / "video_samples.gif", nrow=shown, fps=4, scale=4)
    save_clips_gif(drawn["frame by frame, unconditional"][:shown], out / "video_frame_by_frame.gif", nrow=shown,
                   fps=4, scale=4)
    save_frame_grid(drawn["video, guided"][:shown], out / "video_samples_frames.png", scale=3)
    save_frame_grid(drawn["video, unconditional"][:shown], out / "video_unconditional_frames.png", scale=3)
    save_frame_grid(drawn["frame by frame, unconditional"][:shown], out / "video_frame_by_frame_frames.png", scale=3)

    # ---- tasks on real clips through dl.editing.inpaint with space-time masks
    md = dl.data.moving_digits(cfg["pred"], seed=SEEDS["tasks"], **data)
    truth, ink = true_centres(md)
    real_track = centre_of_mass(md.clips)
    task_noise = torch.randn(md.clips.shape, generator=torch.Generator().manual_seed(SEEDS["noise"] + 1))

    def fill(name: str, clips: Tensor, mask: Tensor, labels: Tensor, noise: Tensor, **options):
        return cached(cache, name, lambda: dl.editing.inpaint(
            model, proc, clips, mask, "ddim", steps, cond=labels, noise=noise,
            generator=torch.Generator().manual_seed(SEEDS["noise"] + 2), **options))

    predicted, seconds = fill("prediction", md.clips, masks.future_frames_mask(T, (H, W), GIVEN), md.labels[:, 0],
                              task_noise)
    ahead = range(GIVEN, T)
    pred = {"model": errors(centre_of_mass(predicted), truth, ahead)}
    res["prediction"] = prediction_row(pred, predicted, md, real_track, truth, ink, judge, seconds)
    save()
    k = min(4, cfg["inpaint"])
    save_frame_grid(pairs(md.clips, predicted, k), out / "video_prediction.png", scale=3)
    # RePaint's resampling (Lugmayr et al.: r = j = 10 in the paper; here r = j = 5) on the first clips
    r_, j_ = (5, 5) if steps > 5 else (2, max(1, steps - 1))
    q = cfg["repaint"]
    resampled, seconds = fill(f"prediction_repaint_r{r_}_j{j_}_n{q}", md.clips[:q],
                              masks.future_frames_mask(T, (H, W), GIVEN), md.labels[:q, 0], task_noise[:q],
                              resample=r_, jump_length=j_)
    res["prediction_repaint"] = {
        "clips": q, "resample": r_, "jump_length": j_, "sampling_seconds": seconds,
        "errors_px": {"model, RePaint": errors(centre_of_mass(resampled), truth[:q], ahead),
                      "model, replacement (the same clips)": errors(centre_of_mass(predicted[:q]), truth[:q], ahead),
                      "copy the last frame": errors(prediction_baselines(real_track[:q], GIVEN, ink[:q], H)[
                          "copy the last frame"], truth[:q], ahead)}}
    save()
    generate("frame by frame, guided")
    generate("video, conditional, w = 1")  # the label without guidance: what guidance costs the motion

    half = max(1, len(md.clips) // 2)
    between, seconds = fill("interpolation", md.clips[:half], masks.between_frames_mask(T, (H, W), keep=(0, T - 1)),
                   md.labels[:half, 0], task_noise[:half])
    inner = range(1, T - 1)
    res["interpolation"] = {
        "clips": half, "given": [0, T - 1],
        "errors_px": {"model": errors(centre_of_mass(between), truth[:half], inner),
                      "straight line between the given frames": errors(interpolation_baseline(real_track[:half]),
                                                                       truth[:half], inner),
                      "the real frames (rounding to whole pixels)": errors(real_track[:half], truth[:half], inner)},
        "identity": judge.identity(between, md.labels[:half, 0]), "motion": motion(between),
        "sampling_seconds": seconds}
    save()
    save_frame_grid(pairs(md.clips, between, k), out / "video_interpolation.png", scale=3)

    filled, res["inpainting"] = box_inpainting(fill, "inpainting", md, cfg["inpaint"], task_noise, judge)

    save()
    save_frame_grid(pairs(md.clips, filled, k), out / "video_inpainting.png", scale=3)

    # ---- reconstruction guidance (Ho et al. 2022, sec. 3.1): w_r picked on other clips, then the held-out ones
    future = masks.future_frames_mask(T, (H, W), GIVEN)
    sweep = dl.data.moving_digits(cfg["sweep"], seed=SEEDS["sweep"], **data)
    sweep_truth, _ = true_centres(sweep)
    sweep_noise = torch.randn(sweep.clips.shape, generator=torch.Generator().manual_seed(SEEDS["noise"] + 3))
    tried, sweep_seconds = {}, {}
    for w in (0.0, *cfg["weights"]):
        clips, sweep_seconds[f"{w:g}"] = fill(f"sweep_prediction_rg{w:g}", sweep.clips, future, sweep.labels[:, 0],
                                              sweep_noise, reconstruction_guidance=w)
        tried[f"{w:g}"] = errors(centre_of_mass(clips), sweep_truth, ahead)["mean"]
    best = sorted(cfg["weights"], key=lambda w: tried[f"{w:g}"])[:2]  # the two least errors on the sweep clips
    rg = {"sweep": {"clips": cfg["sweep"], "seed": SEEDS["sweep"], "mean_error_px": tried,
                    "sampling_seconds": sweep_seconds}, "chosen": best}
    res["reconstruction_guidance"] = rg
    errs = res["prediction"]["errors_px"]
    for w in best:
        guided, seconds = fill(f"prediction_rg{w:g}", md.clips, future, md.labels[:, 0], task_noise,
                               reconstruction_guidance=w)
        name = f"model, reconstruction guidance w_r = {w:g}"
        rg[f"prediction, w_r = {w:g}"] = {"identity": judge.identity(guided, md.labels[:, 0]),
                                          "motion": motion(guided), "sampling_seconds": seconds}
        # the table's rows: replacement ("model") first, then these, then the baselines
        items = list(errs.items())
        errs = dict(items[:1 + best.index(w)] + [(name, errors(centre_of_mass(guided), truth, ahead))]
                    + items[1 + best.index(w):])
        res["prediction"]["errors_px"] = errs
        save()
        if w == best[0]:
            save_frame_grid(pairs(md.clips, guided, k), out / "video_prediction_reconstruction.png", scale=3)
            best_guided = guided
    w = best[0]
    # both: RePaint's resampling with reconstruction guidance, on RePaint's clips
    both, seconds = fill(f"prediction_repaint_r{r_}_j{j_}_rg{w:g}_n{q}", md.clips[:q], future, md.labels[:q, 0],
                         task_noise[:q], resample=r_, jump_length=j_, reconstruction_guidance=w)
    rp = res["prediction_repaint"]["errors_px"]
    rp[f"model, RePaint and reconstruction guidance w_r = {w:g}"] = errors(centre_of_mass(both), truth[:q], ahead)
    rp[f"model, reconstruction guidance w_r = {w:g} (the same clips)"] = errors(centre_of_mass(best_guided[:q]),
                                                                                truth[:q], ahead)
    res["prediction_repaint"]["sampling_seconds_with_reconstruction_guidance"] = seconds
    save()
    between_rg, seconds = fill(f"interpolation_rg{w:g}", md.clips[:half],
                               masks.between_frames_mask(T, (H, W), keep=(0, T - 1)), md.labels[:half, 0],
                               task_noise[:half], reconstruction_guidance=w)
    items = list(res["interpolation"]["errors_px"].items())
    res["interpolation"]["errors_px"] = dict(
        items[:1] + [(f"model, reconstruction guidance w_r = {w:g}", errors(centre_of_mass(between_rg),
                                                                           truth[:half], inner))] + items[1:])
    rg[f"interpolation, w_r = {w:g}"] = {"identity": judge.identity(between_rg, md.labels[:half, 0]),
                                         "motion": motion(between_rg), "sampling_seconds": seconds}
    save()
    save_frame_grid(pairs(md.clips, between_rg, k), out / "video_interpolation_reconstruction.png", scale=3)
    return res


# ---------------------------------------------------------------------------- a mask-conditioned run
def _from_conditional(previous: Optional[dict], size: str, steps: int) -> Optional[dict]:
    """``video.json`` of the conditional run where it measured the same clips (same size, seeds and
    steps), else None."""
    if not previous or previous.get("size") != size or previous.get("seeds") != SEEDS or \
            previous.get("steps") != steps:
        return None
    return previous


def evaluate_masked(run, out: Path, size: str = "cpu", steps: int = 50, guidance: float = 3.0,
                    cache: Optional[Path] = None, command: str = COMMAND) -> dict:
    """The tasks of :func:`evaluate` for a mask-conditioned run (``dl.editing.inpaint`` binds the
    clips and the mask to it): prediction from frames 0 and 1, interpolation between 0 and 7 and
    the middle box, on the same clips, from the same noise (seeds of :data:`SEEDS`), with the same
    error functions, beside the baselines and the conditional run's rows (``out/video.json``); and
    clips generated with nothing given (an all-ones mask), guided at ``guidance`` and unconditional,
    from the generation rows' noise. Writes ``video_masked.json``, ``video_masked_tables.md`` and
    the figures ``video_masked_*.png``."""
    cfg = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    model, proc = run.ema_model, run.proc
    T, C, H, W = run.sample_shape
    data = dict(frames=T, canvas=H, digits=1, speed=SPEED)
    previous_path = out / "video.json"
    previous = _from_conditional(json.loads(previous_path.read_text()) if previous_path.is_file() else None,
                                 size, steps)
    res = {"command": command, "run": str(run.path), "run_step": run.step, "size": size, "sampler": "ddim",
           "steps": steps, "guidance": guidance, "seeds": SEEDS, "clip_shape": [T, C, H, W],
           "conditional_run": None if previous is None else {"run": previous["run"], "run_step": previous["run_step"],
                                                             "from": str(previous_path)}}
    clock = time.perf_counter()

    def save() -> None:
        res["seconds"] = round(time.perf_counter() - clock, 1)
        atomic_write_text(out / "video_masked.json", json.dumps(res, indent=1) + "\n")
        atomic_write_text(out / "video_masked_tables.md", tables(res))

    judge = Judge(cfg["clf_epochs"])
    res["classifier"] = {"held_out_accuracy": round(judge.held_accuracy, 4), "epochs": cfg["clf_epochs"]}
    md = dl.data.moving_digits(cfg["pred"], seed=SEEDS["tasks"], **data)
    truth, ink = true_centres(md)
    real_track = centre_of_mass(md.clips)
    task_noise = torch.randn(md.clips.shape, generator=torch.Generator().manual_seed(SEEDS["noise"] + 1))

    def fill(name: str, clips: Tensor, mask: Tensor, labels: Optional[Tensor], noise: Tensor, w: float = 1.0,
             **options):
        return cached(cache, name, lambda: dl.editing.inpaint(
            model, proc, clips, mask, "ddim", steps, cond=labels, guidance=w, noise=noise,
            generator=torch.Generator().manual_seed(SEEDS["noise"] + 2), **options))

    def old(task: str, *names: str) -> dict:  # the conditional run's rows of the same clips
        if previous is None or task not in previous:
            return {}
        errs = previous[task]["errors_px"]
        return {f"conditional run, {n}": errs[n] for n in names if n in errs}

    k = min(4, cfg["inpaint"])
    # ---- prediction: frames 0, 1 given
    ahead = range(GIVEN, T)
    predicted, seconds = fill("masked_prediction", md.clips, masks.future_frames_mask(T, (H, W), GIVEN),
                              md.labels[:, 0], task_noise)
    pred = {"masked model": errors(centre_of_mass(predicted), truth, ahead)}
    rg = [n for n in (previous or {}).get("prediction", {}).get("errors_px", {}) if "reconstruction" in n]
    pred.update(old("prediction", "model", *rg))
    if previous is not None and previous.get("prediction_repaint", {}).get("clips") == len(md.clips):  # all clips
        pred.update(old("prediction_repaint", *[n for n in previous["prediction_repaint"]["errors_px"]
                                                if n.startswith("model, RePaint")]))
    res["prediction"] = prediction_row(pred, predicted, md, real_track, truth, ink, judge, seconds)
    save()
    save_frame_grid(pairs(md.clips, predicted, k), out / "video_masked_prediction.png", scale=3)
    # the same clips guided by the label (w = guidance) and with reconstruction guidance at the conditional
    # run's chosen weight (not tuned again): rows after the masked model's
    w_r = float((previous or {}).get("reconstruction_guidance", {}).get("chosen", [16.0])[0])
    variants = {}
    for name, options in ((f"masked model, guided w = {guidance:g}", {"w": guidance}),
                          (f"masked model, reconstruction guidance w_r = {w_r:g}", {"reconstruction_guidance": w_r})):
        clips, seconds = fill(name.replace(", ", "_").replace(" = ", "").replace(" ", "_"), md.clips,
                              masks.future_frames_mask(T, (H, W), GIVEN), md.labels[:, 0], task_noise, **options)
        items = list(pred.items())
        pred = dict(items[:1 + len(variants)] + [(name, errors(centre_of_mass(clips), truth, ahead))]
                    + items[1 + len(variants):])
        variants[name] = {"identity": judge.identity(clips, md.labels[:, 0]), "motion": motion(clips),
                          "sampling_seconds": seconds}
        res["prediction"]["errors_px"], res["prediction"]["variants"] = pred, variants
        save()

    # ---- interpolation: frames 0 and T-1 given
    half = max(1, len(md.clips) // 2)
    inner = range(1, T - 1)
    between, seconds = fill("masked_interpolation", md.clips[:half],
                            masks.between_frames_mask(T, (H, W), keep=(0, T - 1)), md.labels[:half, 0],
                            task_noise[:half])
    errs = {"masked model": errors(centre_of_mass(between), truth[:half], inner)}
    errs.update(old("interpolation", *[n for n in (previous or {}).get("interpolation", {}).get("errors_px", {})
                                       if n.startswith("model")]))
    errs["straight line between the given frames"] = errors(interpolation_baseline(real_track[:half]),
                                                            truth[:half], inner)
    errs["the real frames (rounding to whole pixels)"] = errors(real_track[:half], truth[:half], inner)
    res["interpolation"] = {"clips": half, "given": [0, T - 1], "errors_px": errs,
                            "identity": judge.identity(between, md.labels[:half, 0]), "motion": motion(between),
                            "sampling_seconds": seconds}
    save()
    save_frame_grid(pairs(md.clips, between, k), out / "video_masked_interpolation.png", scale=3)

    # ---- video inpainting: the middle box in every frame
    filled, res["inpainting"] = box_inpainting(fill, "masked_inpainting", md, cfg["inpaint"], task_noise, judge)
    res["inpainting"]["conditional_run"] = None if previous is None else previous.get("inpainting")
    save()
    save_frame_grid(pairs(md.clips, filled, k), out / "video_masked_inpainting.png", scale=3)

    # ---- nothing given (an all-ones mask): the generation rows' noise and labels
    n = cfg["n"]
    labels = torch.arange(n) % 10
    noise = torch.randn(n, T, C, H, W, generator=torch.Generator().manual_seed(SEEDS["noise"]))
    blank, everything = torch.zeros(n, T, C, H, W), torch.ones(1, T, 1, H, W)
    real = dl.data.moving_digits(cfg["real"], seed=SEEDS["real"], **data)
    reference = {w: judge.frame_features(real.clips, w) for w in (True, False)}
    rows = {}
    for name, cond, w in (("masked model, nothing given, guided", labels, guidance),
                          ("masked model, nothing given, unconditional", None, 1.0)):
        clips, seconds = fill(name.replace(", ", "_").replace(" ", "_"), blank, everything, cond, noise, w)
        rows[name] = {"identity": judge.identity(clips, cond), "motion": motion(clips),
                      "fd_window": round(frechet_distance(reference[True], judge.frame_features(clips, True)), 3),
                      "fd_frame": round(frechet_distance(reference[False], judge.frame_features(clips, False)), 3),
                      "sampling_seconds": seconds}
        if cond is not None:
            save_frame_grid(clips[:min(10, n)], out / "video_masked_samples_frames.png", scale=3)
    if previous is not None:
        for name in ("real clips (the floor)", "video, guided", "video, unconditional"):
            if name in previous.get("generation", {}):
                rows[f"conditional run, {name}" if name.startswith("video") else name] = previous["generation"][name]
    res["generation"] = rows
    save()
    return res


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _px(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def tables(res: dict) -> str:
    """docs/video.md's tables from video.json (the parts measured so far)."""
    lines = []
    if "generation" in res:
        lines += ["| clips | same class in every frame | later frames of the first's class | frames of the "
                  "requested class | motion residual, median (px) | 90th pct | within 1 px | FD, digit windows "
                  "| FD, whole frames |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in res["generation"].items():
            i, m = r["identity"], r["motion"]
            lines.append(f"| {name} | {_pct(i['same_class'])} | {_pct(i['frame_agreement'])} | "
                         f"{_pct(i.get('label_accuracy'))} | {_px(m['median'])} | {_px(m['p90'])} | "
                         f"{_pct(m['within_1px'])} | {r['fd_window']:.2f} | {r['fd_frame']:.2f} |")
    for task in ("prediction", "prediction_repaint", "interpolation"):
        if task not in res:
            continue
        t = res[task]
        errs = t["errors_px"]
        frames = len(next(iter(errs.values()))["per_frame"])
        first = 1 if task == "interpolation" else GIVEN
        head = " | ".join(f"frame {first + j}" for j in range(frames))
        title = (f"prediction, RePaint r = {t['resample']}, j = {t['jump_length']} ({t['clips']} clips)"
                 if task == "prediction_repaint" else task)
        lines += ["", f"| {title}: centre-of-mass error (px) | mean | {head} |",
                  "|---|---|" + "---|" * frames]
        for name, e in errs.items():
            lines.append(f"| {name} | {_px(e['mean'])} | " + " | ".join(_px(v) for v in e["per_frame"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/moving_digits"), help="a trained moving-digits run")
    parser.add_argument("--out", type=Path, default=Path("docs/video"))
    parser.add_argument("--size", choices=tuple(SIZES), default="cpu")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the drawn clips (default: RUN/video_eval); a rerun reads them back")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unconditional-run", type=Path, default=None,
                        help="a run of the same config without labels (model.kwargs.num_classes=null), judged beside")
    parser.add_argument("--masked-run", type=Path, default=None,
                        help="a mask-conditioned run (configs/moving_digits_masked.yaml): judge it alone on the same "
                             "tasks, beside the conditional run's rows in OUT/video.json (video_masked.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = f"{COMMAND} " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.masked_run is not None:
        masked = dl.load(args.masked_run)
        if masked_model(masked.ema_model) is None:
            parser.error(f"--masked-run must be a mask-conditioned run (model: masked, configs/moving_digits_masked"
                         f".yaml), got model {type(masked.ema_model).__name__}")
        cache = args.cache or args.masked_run / "video_eval" / f"masked_{args.size}_ddim{args.steps}_w{args.guidance:g}_step{masked.step}"
        print(json.dumps(evaluate_masked(masked, args.out, args.size, args.steps, args.guidance, cache, command),
                         indent=1))
        return 0
    run = dl.load(args.run)
    uncond = None if args.unconditional_run is None else dl.load(args.unconditional_run)
    if uncond is not None and (uncond.num_classes is not None or uncond.sample_shape != run.sample_shape):
        parser.error(f"--unconditional-run must be an unconditional run of clips {run.sample_shape}, got "
                     f"num_classes={uncond.num_classes}, clips {uncond.sample_shape}")
    cache = args.cache or args.run / "video_eval" / f"{args.size}_ddim{args.steps}_w{args.guidance:g}_step{run.step}"
    res = evaluate(run, args.out, args.size, args.steps, args.guidance, cache, command, uncond)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
