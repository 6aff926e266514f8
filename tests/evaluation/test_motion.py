"""Motion measured from pixels (difflab.evaluation.motion): the centre of mass against hand-made
frames and against the moving digits' true paths; the bouncing-path fit exact on clean tracks, no
worse than the true path on real clips (least squares), and far off on clips with shuffled frames."""

import math

import pytest
import torch

import difflab as dl
from difflab.evaluation.motion import centre_of_mass, fit_bouncing_path, motion_residual


def test_centre_of_mass_of_hand_made_frames():
    clips = torch.full((1, 3, 1, 5, 7), -1.0)
    clips[0, 0, 0, 2, 5] = 1.0  # one pixel: its own coordinates (row, col)
    clips[0, 1, 0, 1, 1] = 1.0  # ink 1.8 at (1, 1) and 0.9 at (4, 1): row (1.8 + 3.6) / 2.7 = 2
    clips[0, 1, 0, 4, 1] = 0.1
    clips[0, 1, 0, 0, 6] = -0.85  # below the ink level: no weight
    got = centre_of_mass(clips)
    assert got.dtype == torch.float64 and got.shape == (1, 3, 2)
    assert got[0, 0].tolist() == [2.0, 5.0]
    assert got[0, 1].tolist() == pytest.approx([2.0, 1.0], abs=1e-6)  # 0.1 in float32
    assert torch.isnan(got[0, 2]).all()  # no ink
    assert centre_of_mass(clips, level=-1.0)[0, 1, 1] > 1.0  # the faint pixel at col 6 counts now


def sprite_centres(md) -> torch.Tensor:
    """[N, 2]: the centre of mass of each clip's (first) sprite, measured on the sprite alone."""
    sprites = dl.data.digits.load()[0][md.indices[:, 0]]  # [N, 1, 8, 8]
    return centre_of_mass(sprites[:, None])[:, 0]


def test_the_centre_of_mass_of_real_clips_is_the_path_plus_the_sprites_own_centre():
    md = dl.data.moving_digits(40, frames=6, seed=5)
    track, own = centre_of_mass(md.clips), sprite_centres(md)
    torch.testing.assert_close(track, md.pixel_positions[:, 0].double() + own[:, None], rtol=0, atol=1e-9)
    assert (track - (md.positions[:, 0] + own[:, None])).abs().max() <= 0.5  # the true path, to the pixel


@pytest.mark.parametrize("frames, speed", [(8, (0.5, 1.5)), (16, (4.0, 8.0))])
def test_the_fit_is_exact_on_clean_bouncing_tracks(frames, speed):
    md = dl.data.moving_digits(100, frames=frames, speed=speed, seed=6)
    offset = torch.rand(100, 1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 7
    track = md.positions[:, 0] + offset  # a sprite whose ink centre is `offset` from its corner
    steps = track[:, 1:] - track[:, :-1]
    assert ((steps[:, 1:] * steps[:, :-1]) < 0).any(-1).any(-1).float().mean() > 0.3  # many bounce
    fit = fit_bouncing_path(track, canvas=16, size=8, max_speed=speed[1])
    assert fit.residual.max() < 1e-9
    torch.testing.assert_close(fit.path, track, rtol=0, atol=1e-9)
    assert fit.velocity.abs().max() <= speed[1] and fit.offset.min() >= 0 and fit.offset.max() <= 7
    # on an axis where the track bounces and starts off the walls, the fit is unique: the physics
    bounced = (steps[:, 1:] * steps[:, :-1] < 0).any(1)  # [N, 2]
    unique = bounced & (md.positions[:, 0, 0] > 0.1) & (md.positions[:, 0, 0] < 7.9)
    assert unique.sum() > 30
    torch.testing.assert_close(fit.velocity[unique], md.velocities[:, 0][unique], rtol=0, atol=1e-9)
    torch.testing.assert_close(fit.offset[unique], offset[:, 0][unique], rtol=0, atol=1e-9)
    torch.testing.assert_close(fit.start[unique], md.positions[:, 0, 0][unique], rtol=0, atol=1e-9)


def test_real_clips_fit_within_their_rounding_and_shuffled_frames_do_not():
    md = dl.data.moving_digits(100, frames=8, seed=7)
    real = motion_residual(md.clips, size=8, max_speed=1.5)
    # least squares: the fit is no worse than the true path (its parameters are admissible)
    true_path = md.positions[:, 0] + sprite_centres(md)[:, None]
    true_rms = (centre_of_mass(md.clips) - true_path).square().sum(-1).mean(-1).sqrt()
    assert (real <= true_rms + 1e-9).all()
    assert real.max() <= math.sqrt(0.5) and real.median() < 0.45  # within half a pixel an axis
    order = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(i)) for i in range(100)])
    shuffled = md.clips[torch.arange(100)[:, None], order]
    assert motion_residual(shuffled, size=8, max_speed=1.5).median() > 1.0 > 2 * real.median()


def test_a_clip_with_an_empty_frame_fails_the_fit():
    md = dl.data.moving_digits(3, frames=5, seed=8)
    clips = md.clips.clone()
    clips[1, 2] = -1.0
    fit = fit_bouncing_path(centre_of_mass(clips), canvas=16, size=8)
    assert fit.residual[1] == math.inf and torch.isnan(fit.path[1]).all()
    assert torch.isfinite(fit.residual[[0, 2]]).all()


def test_bad_input_is_refused_with_the_fix():
    track = torch.zeros(2, 6, 2)
    cases = [
        (lambda: centre_of_mass(torch.zeros(2, 6, 16, 16)), "[N, T, C, H, W]"),
        (lambda: centre_of_mass(torch.zeros(1, 2, 1, 4, 4), level=1.0), "level"),
        (lambda: fit_bouncing_path(track[:, :3], 16, 8), "4 or more frames"),
        (lambda: fit_bouncing_path(track[..., 0], 16, 8), "[N, T, 2]"),
        (lambda: fit_bouncing_path(track, 8, 8), "canvas > size"),
        (lambda: fit_bouncing_path(track, 16, 8, max_speed=-1), "max_speed"),
        (lambda: motion_residual(torch.zeros(1, 6, 1, 16, 12), 8), "square"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=None) as err:
            call()
        assert words in str(err.value)
