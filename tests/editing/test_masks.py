"""Masks (difflab.editing.masks): boxes, halves, PNG files, spec errors."""

import numpy as np
import pytest
import torch

from difflab import editing as E


def test_box_and_half_masks():
    m = E.box_mask((4, 6), 1, 2, 4, 4)
    assert m.shape == (4, 6) and m.sum() == 3 * 2
    assert m[2:4, 1:4].eq(1).all() and m[:2].eq(0).all() and m[:, 4:].eq(0).all()
    assert torch.equal(E.parse_mask("box:1,2,4,4", (4, 6)), m)
    bottom = E.parse_mask("half:bottom", (28, 28))
    assert bottom[14:].eq(1).all() and bottom[:14].eq(0).all()
    left = E.half_mask((5, 5), "left")
    assert left[:, :2].eq(1).all() and left[:, 2:].eq(0).all()
    assert torch.equal(E.half_mask((6, 6), "top") + E.half_mask((6, 6), "bottom"), torch.ones(6, 6))
    assert torch.equal(E.half_mask((7, 7), "left") + E.half_mask((7, 7), "right"), torch.ones(7, 7))


def test_mask_png_round_trip(tmp_path):
    from PIL import Image

    m = E.box_mask((8, 8), 2, 3, 6, 8)
    Image.fromarray((m.numpy() * 255).astype(np.uint8)).save(tmp_path / "m.png")
    assert torch.equal(E.parse_mask(str(tmp_path / "m.png"), (8, 8)), m)
    with pytest.raises(ValueError, match="mask and image must have the same size"):
        E.parse_mask(str(tmp_path / "m.png"), (9, 8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        E.parse_mask(str(tmp_path / "none.png"), (8, 8))


@pytest.mark.parametrize("spec, match", [
    ("box:0,0,9,4", r"0 <= x0 < x1 <= width = 8"),
    ("box:3,0,3,4", r"x0 < x1"),
    ("box:1,2,3", "four integers"),
    ("half:middle", "left, right, top, bottom"),
    ("half", "incomplete"),
])
def test_mask_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        E.parse_mask(spec, (8, 8))


# ---------------------------------------------------------------------------- space-time masks
def test_future_and_between_frames_masks_fill_whole_frames():
    m = E.masks.future_frames_mask(8, (4, 6), given=2)
    assert m.shape == (8, 1, 4, 6)
    assert m[:2].eq(0).all() and m[2:].eq(1).all()
    assert torch.equal(E.masks.parse_clip_mask("future:2", 8, (4, 6)), m)
    mid = E.masks.between_frames_mask(8, (4, 6), keep=(0, 7))
    assert mid[[0, 7]].eq(0).all() and mid[1:7].eq(1).all()
    odd = E.masks.between_frames_mask(6, (3, 3), keep=range(0, 6, 2))  # every other frame given
    assert odd[:, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(E.masks.parse_clip_mask("between:0,2,4", 6, (3, 3)), odd)
    assert torch.equal(E.masks.between_frames_mask(8, (4, 6), keep=(0, -1)), mid)  # -1: the last frame
    # the two are complements on the frames they name: future:k keeps exactly frames 0 .. k-1
    assert torch.equal(E.masks.between_frames_mask(8, (4, 6), keep=(0, 1)), m)


def test_a_box_across_frames_and_the_mask_broadcasts_over_clips():
    box = E.box_mask((6, 6), 1, 2, 4, 5)
    m = E.masks.across_frames(box, 5)
    assert m.shape == (5, 1, 6, 6) and all(torch.equal(m[t, 0], box) for t in range(5))
    some = E.masks.across_frames(box, 5, during=(1, 3))
    assert some[[0, 2, 4]].eq(0).all() and torch.equal(some[1, 0], box) and torch.equal(some[3, 0], box)
    assert torch.equal(E.masks.parse_clip_mask("box:1,2,4,5", 5, (6, 6)), m)
    clips = torch.zeros(3, 5, 2, 6, 6)  # [B, T, C, H, W]
    full = E.check_mask(m, clips)
    assert full.shape == clips.shape and torch.equal(full[2, 4, 1], box)
    kept = E.paste(torch.ones_like(clips), clips, m)  # generated (1) inside the box, the clip (0) outside
    assert torch.equal(kept[1, 3, 0], box)


@pytest.mark.parametrize("call, match", [
    (lambda: E.masks.future_frames_mask(8, (4, 4), given=0), r"given .* 1 \.\. 7"),
    (lambda: E.masks.future_frames_mask(8, (4, 4), given=8), r"given .* 1 \.\. 7"),
    (lambda: E.masks.between_frames_mask(3, (4, 4), keep=(0, 1, 2)), "every frame"),
    (lambda: E.masks.between_frames_mask(3, (4, 4), keep=(0, 3)), r"frame 3 is not in a clip of 3 frames"),
    (lambda: E.masks.between_frames_mask(3, (4, 4), keep="0,2"), "frame indices"),
    (lambda: E.masks.frames_mask(0, (4, 4), fill=0), "frames must be"),
    (lambda: E.masks.across_frames(torch.ones(1, 4, 4), 3), r"one frame's mask \[H, W\]"),
    (lambda: E.masks.parse_clip_mask("future:a", 8, (4, 4)), "future:K"),
    (lambda: E.masks.parse_clip_mask("future:1,2", 8, (4, 4)), "future:K"),
    (lambda: E.masks.parse_clip_mask("between:", 8, (4, 4)), r"between:I,J"),
    (lambda: E.masks.parse_clip_mask("", 8, (4, 4)), "future:K, between"),
])
def test_clip_mask_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_clip_mask_of_the_wrong_frame_count_is_refused():
    with pytest.raises(ValueError, match="does not fit the image"):
        E.check_mask(E.masks.future_frames_mask(6, (4, 4), given=2), torch.zeros(1, 8, 1, 4, 4))
