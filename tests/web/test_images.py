"""Tensors <-> PNG bytes for the page: the pixel mapping of difflab.editing.io, exact round trips,
and uploads refused with the reason (not an image, wrong size, empty mask) before decoding."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import difflab as dl
from difflab.web import BadImage, data_url, read_image, read_mask, to_png


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def png_of(array: np.ndarray, mode=None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_png_holds_round_x_plus_1_times_127_5_and_reads_back_exactly(tmp_path):
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    pixels = png_pixels(to_png(x))
    assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.round((x[0, 0].numpy() + 1) * 127.5).astype(np.uint8))
    # the same bytes as the editing commands write and read (difflab.editing.io)
    dl.editing.save_images(x, tmp_path / "e.png")
    assert np.array_equal(png_pixels((tmp_path / "e.png").read_bytes()), pixels)
    back = read_image(to_png(x), (1, 8, 8))
    assert back.shape == (1, 1, 8, 8)
    assert torch.equal(back, dl.editing.load_images(tmp_path / "e.png"))
    assert (back - x).abs().max() <= 1 / 127.5  # within half a grey level... of the 8-bit rounding
    again = read_image(to_png(back), (1, 8, 8))
    assert torch.equal(again, back)  # a page that sends back what it was shown changes nothing


def test_several_images_make_a_padded_grid_and_rgb_keeps_its_channels():
    x = torch.rand(3, 3, 8, 6) * 2 - 1
    grid = png_pixels(to_png(x, nrow=3))
    assert grid.shape == (2 + 8 + 2, 2 + 3 * (6 + 2), 3)
    one = png_pixels(to_png(x[1:2]))
    assert np.array_equal(grid[2:10, 10:16], one)  # the second tile
    back = read_image(to_png(x[1:2]), (3, 8, 6))
    assert back.shape == (1, 3, 8, 6) and (back - x[1:2]).abs().max() <= 1 / 127.5 + 1e-6
    grey = read_image(to_png(x[1:2]), (1, 8, 6))  # an RGB upload to a 1-channel model: its luminance
    want = np.asarray(Image.fromarray(one).convert("L"), dtype=np.float32) / 127.5 - 1
    assert np.allclose(grey[0, 0].numpy(), want)
    assert data_url(b"\x89PNG").startswith("data:image/png;base64,iVBORw")


def test_uploads_are_refused_with_the_reason():
    good = to_png(torch.zeros(1, 1, 8, 8))
    with pytest.raises(BadImage, match="is empty"):
        read_image(b"", (1, 8, 8))
    with pytest.raises(BadImage, match="not an image"):
        read_image(b"GIF89a-not-really", (1, 8, 8))
    with pytest.raises(BadImage, match=r"is 8x8 pixels, but the model works on 16x8 images; scale it"):
        read_image(good, (1, 8, 16))
    noisy = to_png(torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    with pytest.raises(BadImage, match="damaged"):
        read_image(noisy[:60], (1, 8, 8))  # the header whole, the pixel data cut
    with pytest.raises(BadImage, match="4 channels"):
        read_image(good, (4, 8, 8))


def test_a_huge_image_in_a_small_file_is_refused_before_its_pixels_are_decoded(monkeypatch):
    bomb = png_of(np.zeros((4000, 4000), dtype=bool), "1")  # 16 Mpixel in a few kB
    assert len(bomb) < 10_000
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(BadImage, match="4000x4000 pixels"):
        read_image(bomb, (1, 8, 8))
    assert not decoded


def test_a_mask_is_white_where_the_model_fills_and_must_not_be_empty():
    m = np.zeros((8, 8), dtype=np.uint8)
    m[4:, :3] = 255
    m[0, 0] = 127  # below mid-grey: kept
    m[0, 1] = 128  # mid-grey and brighter: filled
    mask = read_mask(png_of(m), (8, 8))
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.float32
    want = torch.from_numpy(m >= 128).float()
    assert torch.equal(mask[0, 0], want) and int(mask.sum()) == 4 * 3 + 1
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[2, 2, :3] = 255  # the page's canvas sends opaque RGBA
    assert torch.equal(read_mask(png_of(rgba), (8, 8))[0, 0].nonzero(), torch.tensor([[2, 2]]))
    with pytest.raises(BadImage, match="empty: paint the region"):
        read_mask(png_of(np.zeros((8, 8), dtype=np.uint8)), (8, 8))
    with pytest.raises(BadImage, match="the mask is 8x8"):
        read_mask(png_of(m), (4, 4))
