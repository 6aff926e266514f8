"""experiments/video.py --size tiny (docs/video.md's measures of a trained video network): the code path on a
one-step run, and the instruments checked on real clips, where the answers are known."""

import json

import pytest
import torch

import difflab as dl
from difflab.training import Trainer, apply_overrides, load_config
from experiments import video
from scripts import REPO


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """configs/moving_digits.yaml at a width of 8 channels, one step of 4 clips: a run to load."""
    out = tmp_path_factory.mktemp("run")
    cfg = apply_overrides(load_config(REPO / "configs" / "moving_digits.yaml"), [
        "steps=1", "batch_size=4", "log_every=1", "ckpt_every=1", "sample.every=-1", "data.kwargs.n=8",
        "model.kwargs.channels=8"])
    Trainer(cfg, out, progress=False).train()
    return out


def test_an_unconditional_run_is_judged_beside(tiny_run, tmp_path):
    """--unconditional-run: a run of the config without labels adds its clips and frame-by-frame clips;
    a conditional run given there is refused."""
    uncond = tmp_path / "uncond"
    cfg = apply_overrides(load_config(REPO / "configs" / "moving_digits.yaml"), [
        "steps=1", "batch_size=4", "log_every=1", "ckpt_every=1", "sample.every=-1", "data.kwargs.n=8",
        "model.kwargs.channels=8", "model.kwargs.num_classes=null", "cond_drop_prob=0.0", "sample.guidance=1.0"])
    Trainer(cfg, uncond, progress=False).train()
    out = tmp_path / "out"
    assert video.main(["--run", str(tiny_run), "--out", str(out), "--size", "tiny", "--steps", "2",
                       "--unconditional-run", str(uncond)]) == 0
    res = json.loads((out / "video.json").read_text())
    assert res["unconditional_run"]["run_step"] == 1
    rows = [r for r in res["generation"] if "unconditional model" in r]
    assert rows == ["video, unconditional model (step1)", "frame by frame, unconditional model (step1)"]
    assert all(0 <= res["generation"][r]["identity"]["same_class"] <= 1 for r in rows)
    assert (out / "video_unconditional_model_frames.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        video.main(["--run", str(tiny_run), "--out", str(out), "--size", "tiny", "--unconditional-run", str(tiny_run)])


def test_tiny_writes_every_measure_and_figure(tiny_run, tmp_path):
    out = tmp_path / "out"
    assert video.main(["--run", str(tiny_run), "--out", str(out), "--size", "tiny", "--steps", "2"]) == 0
    res = json.loads((out / "video.json").read_text())
    assert "--size tiny" in res["command"] and res["run_step"] == 1
    gen = res["generation"]
    assert set(gen) == {"real clips (the floor)", "real clips, frames shuffled", "video, guided",
                        "video, unconditional", "frame by frame, guided", "frame by frame, unconditional",
                        "video, conditional, w = 1"}
    for row in gen.values():
        assert 0 <= row["identity"]["same_class"] <= row["identity"]["frame_agreement"] <= 1
        assert row["fd_window"] >= 0 and row["fd_frame"] >= 0
    assert set(res["fd_floor_one_frame_a_clip"]) == {"fd_window", "fd_frame"}
    # real clips keep their digit: a frame order changes no class, and the measures see the same frames
    assert gen["real clips, frames shuffled"]["fd_window"] == pytest.approx(gen["real clips (the floor)"]["fd_window"])
    errs = res["prediction"]["errors_px"]
    rg = res["reconstruction_guidance"]
    assert set(rg["sweep"]["mean_error_px"]) == {"0", "4", "16"} and sorted(rg["chosen"]) == [4.0, 16.0]
    assert rg["sweep"]["clips"] == video.SIZES["tiny"]["sweep"]
    guided = [f"model, reconstruction guidance w_r = {w:g}" for w in rg["chosen"]]
    assert list(errs) == ["model", *guided, "copy the last frame", "constant velocity, straight",
                          "constant velocity with bounces", "the real frames (rounding to whole pixels)"]
    assert list(res["interpolation"]["errors_px"])[:2] == ["model", guided[0]]
    assert f"prediction, w_r = {rg['chosen'][0]:g}" in rg and f"interpolation, w_r = {rg['chosen'][0]:g}" in rg
    assert len(errs["model"]["per_frame"]) == 8 - video.GIVEN
    assert errs["the real frames (rounding to whole pixels)"]["mean"] <= 0.5 ** 0.5
    assert len(res["interpolation"]["errors_px"]["model"]["per_frame"]) == 6
    rp = res["prediction_repaint"]
    assert rp["clips"] == video.SIZES["tiny"]["repaint"] and rp["resample"] == 2
    w = f"{res['reconstruction_guidance']['chosen'][0]:g}"
    assert set(rp["errors_px"]) == {"model, RePaint", "model, replacement (the same clips)", "copy the last frame",
                                    f"model, RePaint and reconstruction guidance w_r = {w}",
                                    f"model, reconstruction guidance w_r = {w} (the same clips)"}
    assert len(rp["errors_px"]["model, RePaint"]["per_frame"]) == 8 - video.GIVEN
    md = (out / "video_tables.md").read_text()
    assert "| video, unconditional |" in md and "| constant velocity with bounces |" in md
    assert "| prediction, RePaint r = 2, j = 1 (2 clips): centre-of-mass error (px) |" in md
    for name in ("video_samples.gif", "video_frame_by_frame.gif", "video_samples_frames.png", "video_prediction.png",
                 "video_interpolation.png", "video_inpainting.png", "video_prediction_reconstruction.png",
                 "video_interpolation_reconstruction.png"):
        assert (out / name).stat().st_size > 0
    # a rerun reads the drawn clips back from the run's cache: the same numbers
    assert video.main(["--run", str(tiny_run), "--out", str(out), "--size", "tiny", "--steps", "2"]) == 0
    again = json.loads((out / "video.json").read_text())
    assert again["generation"]["video, guided"]["identity"] == gen["video, guided"]["identity"]
    assert again["prediction"]["errors_px"] == errs
    assert again["reconstruction_guidance"]["sweep"] == rg["sweep"]


def test_a_masked_run_is_judged_on_the_same_clips_beside_the_conditional_run(tiny_run, tmp_path):
    """--masked-run: a mask-conditioned run (configs/moving_digits_masked.yaml, one step) predicts,
    interpolates and fills the clips the conditional run did: the baselines are the same numbers, the
    conditional run's rows are read from OUT/video.json; a run of another model is refused."""
    masked = tmp_path / "masked"
    cfg = apply_overrides(load_config(REPO / "configs" / "moving_digits_masked.yaml"), [
        "steps=1", "batch_size=4", "log_every=1", "ckpt_every=1", "data.kwargs.n=8", "model.kwargs.channels=8",
        "sample.every=-1"])
    Trainer(cfg, masked, progress=False).train()
    out = tmp_path / "out"
    assert video.main(["--run", str(tiny_run), "--out", str(out), "--size", "tiny", "--steps", "2"]) == 0
    assert video.main(["--masked-run", str(masked), "--out", str(out), "--size", "tiny", "--steps", "2"]) == 0
    res, prev = (json.loads((out / f).read_text()) for f in ("video_masked.json", "video.json"))
    assert "--masked-run" in res["command"] and res["run_step"] == 1 and res["conditional_run"]["run_step"] == 1
    errs, old = res["prediction"]["errors_px"], prev["prediction"]["errors_px"]
    w_r = f"{prev['reconstruction_guidance']['chosen'][0]:g}"
    assert list(errs)[:4] == ["masked model", "masked model, guided w = 3", f"masked model, reconstruction guidance "
                              f"w_r = {w_r}", "conditional run, model"]
    assert set(res["prediction"]["variants"]) == set(list(errs)[1:3])
    assert errs["conditional run, model"] == old["model"]
    for name in ("copy the last frame", "constant velocity, straight", "constant velocity with bounces",
                 "the real frames (rounding to whole pixels)"):
        assert errs[name] == old[name]
    assert len(errs["masked model"]["per_frame"]) == 8 - video.GIVEN
    inter = res["interpolation"]["errors_px"]
    assert inter["straight line between the given frames"] == prev["interpolation"]["errors_px"][
        "straight line between the given frames"] and "conditional run, model" in inter
    assert res["inpainting"]["real_motion"] == prev["inpainting"]["real_motion"]
    gen = res["generation"]
    assert {"masked model, nothing given, guided", "masked model, nothing given, unconditional",
            "conditional run, video, guided"} <= set(gen)
    assert all(0 <= r["identity"]["same_class"] <= 1 for r in gen.values())
    assert "| masked model | " in (out / "video_masked_tables.md").read_text()
    for name in ("video_masked_prediction.png", "video_masked_interpolation.png", "video_masked_inpainting.png",
                 "video_masked_samples_frames.png"):
        assert (out / name).stat().st_size > 0
    with pytest.raises(SystemExit):
        video.main(["--masked-run", str(tiny_run), "--out", str(out), "--size", "tiny"])


def test_windows_are_the_sprites_of_real_clips():
    """The 8x8 window of a real frame holds all its sprite's ink (the sprite, give or take its blank
    margin): the classifier reads the digit it would read from the sprite itself."""
    md = dl.data.moving_digits(20, frames=3, seed=5)
    win = video.crops(md.clips)  # [60, 1, 8, 8]
    sprites = dl.data.load("digits")[0][md.indices[:, 0]]  # [20, 1, 8, 8]
    ink = (win > -1).sum((1, 2, 3)).reshape(20, 3)
    assert torch.equal(ink, (sprites > -1).sum((1, 2, 3))[:, None].expand(20, 3))  # every inked pixel inside
    # the window is the sprite shifted by at most its blank margin (a roll that wraps only blank pixels)
    for k in range(60):
        sprite = sprites[k // 3, 0]
        assert any(torch.equal(sprite.roll((dy, dx), (0, 1)), win[k, 0]) for dy in range(-2, 3) for dx in range(-2, 3))


def test_true_centres_and_baselines_on_exact_physics():
    """true_centres lies within half a pixel an axis of the drawn frames' centres; on a clean track
    of the data's physics (no rounding) the bouncing baseline is exact for clips that do not bounce
    between the two given frames (its velocity is their difference)."""
    md = dl.data.moving_digits(30, frames=8, seed=4)
    truth, ink = video.true_centres(md)
    assert ((dl.evaluation.centre_of_mass(md.clips) - truth).abs() <= 0.5 + 1e-9).all()
    base = video.prediction_baselines(truth, 2, ink, 16)
    ahead = range(2, 8)
    v = md.velocities[:, 0]
    clean = torch.isclose(md.positions[:, 0, 1], md.positions[:, 0, 0] + v, atol=1e-12).all(1)
    assert 10 < clean.sum() < 30
    assert video.errors(base["constant velocity with bounces"][clean], truth[clean], ahead)["mean"] < 1e-9
    assert video.errors(base["constant velocity with bounces"][~clean], truth[~clean], ahead)["mean"] > 0.1
    straight = truth[:, 1:2] + v[:, None] * (torch.arange(8, dtype=torch.float64)[None, :, None] - 1)
    torch.testing.assert_close(base["constant velocity, straight"][clean], straight[clean])
    torch.testing.assert_close(base["copy the last frame"], truth[:, 1:2].expand(30, 8, 2))
    line = video.interpolation_baseline(truth)
    torch.testing.assert_close(line[:, [0, 7]], truth[:, [0, 7]])
    err = video.errors(truth + torch.tensor([3.0, 4.0], dtype=torch.float64), truth, ahead)
    assert err["mean"] == pytest.approx(5.0) and err["per_frame"] == [5.0] * 6
