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
