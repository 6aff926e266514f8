"""Moving digits (difflab.data.moving): the clips' shapes and determinism, the bouncing law against a
step-by-step loop, the pixels against the sprites pasted by hand, the MNIST source on the tests'
MNIST-format fixture, and the refusals of bad options."""

import math

import pytest
import torch

import difflab as dl
from difflab.data.moving import bounce, moving_digits


def paste(sprite: torch.Tensor, corner, canvas: int) -> torch.Tensor:
    """A background canvas with ``sprite`` at the top-left corner (row, col), by plain slicing."""
    out = torch.full((canvas, canvas), -1.0)
    r, c = int(corner[0]), int(corner[1])
    S = sprite.shape[-1]
    out[r : r + S, c : c + S] = sprite
    return out


def bounce_by_steps(p0: float, v: float, span: float, frames: int) -> list[float]:
    """The law as stated: step by v, mirror at a wall and flip v, as often as needed."""
    p, out = p0, [p0]
    for _ in range(frames - 1):
        p += v
        while p < 0 or p > span:
            if p < 0:
                p, v = -p, -v
            else:
                p, v = 2 * span - p, -v
        out.append(p)
    return out


def test_shapes_dtypes_and_ranges():
    md = moving_digits(6, frames=5, digits=2, speed=(0.5, 2.0), seed=3)
    assert md.clips.shape == (6, 5, 1, 16, 16) and md.clips.dtype == torch.float32
    assert md.clips.min() == -1.0 and md.clips.max() == 1.0
    assert md.labels.shape == md.indices.shape == (6, 2) and md.labels.dtype == md.indices.dtype == torch.long
    assert md.positions.shape == (6, 2, 5, 2) and md.positions.dtype == torch.float64
    assert md.velocities.shape == (6, 2, 2) and (md.sprite_size, md.canvas) == (8, 16)
    assert md.positions.min() >= 0 and md.positions.max() <= 8  # the corner stays in [0, canvas - size]
    speed = md.velocities.norm(dim=-1)
    assert speed.min() >= 0.5 and speed.max() <= 2.0
    _, labels = dl.data.digits.load()
    assert torch.equal(md.labels, labels[md.indices])
    assert dl.data.moving_digits is moving_digits and isinstance(md, dl.data.MovingDigits)


def test_deterministic_per_seed_and_the_first_clips_do_not_depend_on_n():
    a, b, c = moving_digits(4, seed=7), moving_digits(4, seed=7), moving_digits(4, seed=8)
    longer = moving_digits(40, seed=7)
    for field in ("clips", "labels", "positions", "velocities", "indices"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
        assert torch.equal(getattr(a, field), getattr(longer, field)[:4]), field
    assert not torch.equal(a.positions, c.positions) and not torch.equal(a.clips, c.clips)


def test_bounce_is_the_step_by_step_reflection_for_any_number_of_bounces():
    span, v = 5.0, 3.7
    t = torch.arange(30, dtype=torch.float64)  # v t / span: about 22 bounces
    assert bounce(1.3 + v * t, span).tolist() == pytest.approx(bounce_by_steps(1.3, v, span, 30), abs=1e-9)
    assert bounce(1.3 - v * t, span).tolist() == pytest.approx(bounce_by_steps(1.3, -v, span, 30), abs=1e-9)


def test_positions_follow_the_reflection_law():
    md = moving_digits(50, frames=12, digits=2, speed=(1.0, 3.0), seed=1)
    span = md.canvas - md.sprite_size
    flips = 0
    for n in range(50):
        for k in range(2):
            for axis in range(2):
                want = bounce_by_steps(float(md.positions[n, k, 0, axis]), float(md.velocities[n, k, axis]), span, 12)
                assert md.positions[n, k, :, axis].tolist() == pytest.approx(want, abs=1e-9)
                steps = md.positions[n, k, 1:, axis] - md.positions[n, k, :-1, axis]
                flips += int((steps[1:] * steps[:-1] < 0).sum())
    assert flips > 50  # the law is tested on many bounces, not only on straight lines


def test_a_frame_is_the_sprite_pasted_at_the_nearest_pixel_of_its_position():
    md = moving_digits(10, frames=6, seed=2)
    sprites = dl.data.digits.load()[0][:, 0]
    corners = md.pixel_positions
    assert (corners - md.positions).abs().max() <= 0.5
    for n in range(10):
        for t in range(6):
            want = paste(sprites[md.indices[n, 0]], corners[n, 0, t], 16)
            assert torch.equal(md.clips[n, t, 0], want)


def test_two_digits_combine_by_the_pixelwise_maximum():
    md = moving_digits(20, frames=4, digits=2, canvas=12, seed=4)
    sprites = dl.data.digits.load()[0][:, 0]
    overlaps = 0
    for n in range(20):
        for t in range(4):
            one, two = (paste(sprites[md.indices[n, k]], md.pixel_positions[n, k, t], 12) for k in (0, 1))
            assert torch.equal(md.clips[n, t, 0], torch.maximum(one, two))
            overlaps += int(((one > -1) & (two > -1)).any())
    assert overlaps > 10  # inked pixels of both digits meet: the max is tested where it matters


def test_mnist_source(mnist_dir):
    md = moving_digits(3, frames=4, canvas=40, speed=(2.0, 4.0), source="mnist", root=mnist_dir, seed=0)
    images, labels = dl.data.mnist.load(mnist_dir, split="t10k")
    assert md.clips.shape == (3, 4, 1, 40, 40) and md.sprite_size == 28
    assert torch.equal(md.labels, labels[md.indices])
    assert md.positions.max() <= 12
    for t in range(4):
        assert torch.equal(md.clips[1, t, 0], paste(images[md.indices[1, 0], 0], md.pixel_positions[1, 0, t], 40))
    default = moving_digits(1, frames=2, source="mnist", root=mnist_dir, split="train5k")
    assert default.canvas == 64  # Moving MNIST's canvas


@pytest.mark.parametrize("kwargs, words", [
    ({"frames": 1}, ["frames", ">= 2"]),
    ({"canvas": 8}, ["canvas", "larger than the 8x8", "canvas=16"]),
    ({"canvas": 5}, ["canvas", "canvas=16"]),
    ({"speed": (2.0, 1.0)}, ["reversed", "speed=(1.0, 2.0)"]),
    ({"speed": (-1.0, 1.0)}, ["speed", ">= 0"]),
    ({"speed": (0.5, 9.0)}, ["16 - 8 = 8 pixels a frame", "enlarge the canvas"]),
    ({"speed": "fast"}, ["speed", "pair (low, high)"]),
    ({"speed": (0.5, math.inf)}, ["speed", "pair (low, high)"]),
    ({"digits": 3}, ["digits", "1 or 2"]),
    ({"digits": 0}, ["digits", "1 or 2"]),
    ({"source": "cifar"}, ["source", "'digits', 'mnist'"]),
    ({"source": "mnist"}, ["root=", "source='digits'"]),
    ({"root": "/data/mnist"}, ["root=", "drop root"]),
    ({"n": 0}, ["n (the number of clips)", "positive integer"]),
    ({"seed": 1.5}, ["seed", "integer"]),
])
def test_bad_options_are_refused_with_the_fix(kwargs, words):
    kwargs = {"n": 2, **kwargs}
    with pytest.raises(ValueError) as err:
        moving_digits(**kwargs)
    for word in words:
        assert word in str(err.value)
