"""What the jobs run: the page's images are the library's own for the same seed (run.sample,
editing.inpaint, editing.img2img), with the step count and the denoised previews reported."""

import io

import numpy as np
import torch
from PIL import Image

import difflab as dl
from difflab.web import Catalog, Limits, generate_task, img2img_task, inpaint_task, parse_img2img, parse_inpaint
from difflab.web import parse_sample
from difflab.web.tasks import PREVIEWS


class Recorder:
    """A stand-in for the queue's Progress: records the steps and the previews."""

    def __init__(self):
        self.steps, self.previews = [], []

    def __call__(self, step, preview=None):
        self.steps.append(step)
        if preview is not None:
            self.previews.append(preview)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int32)


def as_pixels(x: torch.Tensor) -> np.ndarray:
    return np.round((x.clamp(-1, 1).numpy() + 1) * 127.5).astype(np.int32)


def test_generate_gives_run_sample_of_the_same_seed_with_previews(digits_run_dir):
    cat = Catalog([digits_run_dir])
    p = parse_sample({"label": 3, "steps": 40, "seed": 11, "n": 3, "guidance": 2}, cat, Limits())
    work, total, info = generate_task(p)
    progress = Recorder()
    pngs = work(progress)
    want = cat["digits"].run.sample(3, "ddim", 40, 2.0, 3, 11)
    assert len(pngs) == 3 and all(np.array_equal(pixels(png), as_pixels(w[0])) for png, w in zip(pngs, want))
    assert total == 40 and progress.steps == list(range(1, 41))
    assert len(progress.previews) == PREVIEWS  # every 4th step of 40
    assert pixels(progress.previews[-1]).shape == (2 + 8 + 2, 2 + 3 * 10)  # the three estimates in a row
    assert info == {"kind": "generate", "model": "digits", "label": 3, "sampler": "ddim", "steps": 40,
                    "guidance": 2.0, "seed": 11, "n": 3, "media": "image/png"}


def test_inpaint_and_img2img_are_the_editing_functions_of_the_same_seed(digits_run_dir):
    cat = Catalog([digits_run_dir])
    run = cat["digits"].run
    image = run.sample(1, "ddim", 20, 1.0, 5, 0)  # [1, 1, 8, 8]
    image = torch.from_numpy(as_pixels(image)).float() / 127.5 - 1  # as the page sends it: 8-bit
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    p = parse_inpaint({"label": 5, "steps": 20, "seed": 3, "n": 2, "sampler": "ddpm", "resample": 2, "jump": 5},
                      cat, Limits())
    work, total, _ = inpaint_task(p, image, mask)
    progress = Recorder()
    got = np.stack([pixels(png) for png in work(progress)])
    flat, calls = image.reshape(1, 64).expand(2, 64), []
    want = dl.editing.inpaint(run.ema_model, run.proc, flat, mask.reshape(1, 64).expand(2, 64), "ddpm", 20,
                              jump_length=5, resample=2, cond=torch.full((2,), 5),
                              generator=torch.Generator().manual_seed(3), callback=calls.append).reshape(2, 8, 8)
    assert np.array_equal(got, as_pixels(want))
    assert np.array_equal(got[:, :4], np.broadcast_to(as_pixels(image[0, 0])[:4], (2, 4, 8)))  # kept: exact
    # RePaint, r = 2, j = 5: the 20 levels, and 5 again after each jump back up but the last (3 jumps)
    assert progress.steps == list(range(1, total + 1)) and total == len(calls) == 20 + 3 * 5
    q = parse_img2img({"strength": 0.5, "steps": 20, "seed": 4, "n": 2}, cat, Limits())
    work, total, info = img2img_task(q, image)
    progress = Recorder()
    got = np.stack([pixels(png) for png in work(progress)])
    calls = []  # the library's own callback count: the steps the page's bar runs to
    want = dl.editing.img2img(run.ema_model, run.proc, image.reshape(1, 64).expand(2, 64), 0.5, "ddim", 20,
                              generator=torch.Generator().manual_seed(4), callback=calls.append).reshape(2, 8, 8)
    assert np.array_equal(got, as_pixels(want)) and info["strength"] == 0.5
    assert progress.steps == list(range(1, total + 1)) and total == len(calls) == 11  # from t(0.5), half the grid


def test_a_clip_model_gives_gifs_of_its_own_samples_and_a_preview_of_every_frame(clip_run_dir):
    cat = Catalog([clip_run_dir])
    p = parse_sample({"label": 4, "steps": 6, "seed": 2, "n": 2}, cat, Limits())
    work, total, info = generate_task(p)
    progress = Recorder()
    gifs = work(progress)
    want = cat["moving"].run.sample(2, "ddim", 6, 1.0, 4, 2)  # [2, 8, 1, 16, 16]
    assert info["media"] == "image/gif" and len(gifs) == 2
    for gif, clip in zip(gifs, want):
        reader = Image.open(io.BytesIO(gif))
        assert reader.format == "GIF" and reader.n_frames == 8 and reader.info["duration"] == 250  # 4 frames/s
        for t in range(8):
            reader.seek(t)
            frame = np.asarray(reader.convert("L"), dtype=np.int32)
            assert np.array_equal(frame, as_pixels(clip[t, 0]))  # every grey level kept
    grid = pixels(progress.previews[-1])
    assert grid.shape == (2 + 2 * 18, 2 + 8 * 18)  # a clip a row, its 8 frames left to right
