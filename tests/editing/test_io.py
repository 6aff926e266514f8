"""Reading and writing images (difflab.editing.io), at 8 bits and deeper."""

import numpy as np
import pytest
import torch

from difflab import editing as E


def test_image_and_mask_io_round_trip(tmp_path):
    x = torch.randint(0, 256, (2, 1, 5, 7)).float() / 127.5 - 1
    E.save_images(x[:1], tmp_path / "one.png")
    assert torch.allclose(E.load_images(tmp_path / "one.png"), x[:1], atol=1e-6)
    rgb = torch.randint(0, 256, (1, 3, 4, 4)).float() / 127.5 - 1
    E.save_images(rgb, tmp_path / "rgb.png")
    assert torch.allclose(E.load_images(tmp_path / "rgb.png"), rgb, atol=1e-6)
    assert E.load_images(tmp_path / "rgb.png", channels=1).shape == (1, 1, 4, 4)
    E.save_images(torch.zeros(1, 1, 4, 5), tmp_path / "other.png")
    with pytest.raises(ValueError, match="differ in size"):
        E.load_images([tmp_path / "one.png", tmp_path / "other.png"])


def test_images_and_masks_of_more_than_8_bits_are_read_at_their_depth(tmp_path):
    """Pillow's convert("L") clips a 16-bit image at 255, which read 0..63000 as nearly all
    white; these are read as v / 65535 (floats as they are), and out-of-range values refused."""
    from PIL import Image

    levels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0 .. 63000
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in E.io.HIGH_DEPTH
    want = torch.from_numpy(levels / 65535 * 2 - 1).float()
    torch.testing.assert_close(E.load_images(tmp_path / "deep.png"), want[None, None], rtol=0, atol=1e-6)
    torch.testing.assert_close(E.load_images(tmp_path / "deep.png", channels=3), want[None, None].expand(1, 3, 8, 8),
                               rtol=0, atol=1e-6)
    # a mask: filled where brighter than mid-grey, 128 / 255 of the full scale
    torch.testing.assert_close(E.load_mask(tmp_path / "deep.png"), torch.from_numpy(levels / 65535 >= 128 / 255).float())
    Image.fromarray((levels / 63000).astype(np.float32)).save(tmp_path / "float.tiff")
    torch.testing.assert_close(E.load_images(tmp_path / "float.tiff"), torch.from_numpy(levels / 63000 * 2 - 1).float()[None, None])
    Image.fromarray((levels * 2.0).astype(np.float32)).save(tmp_path / "bad.tiff")
    with pytest.raises(ValueError, match=r"a F image with values in \[0, 126000\], expected floats in \[0, 1\]"):
        E.load_images(tmp_path / "bad.tiff")
