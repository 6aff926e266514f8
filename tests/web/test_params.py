"""A request's fields: JSON numbers and form strings read alike, defaults from the model, and
every bad field refused with its name, the allowed values and the fix."""

import pytest

from difflab.training.config import TrainConfig
from difflab.training.trainer import Trainer
from difflab.web import BadRequest, Catalog, Limits, parse_img2img, parse_inpaint, parse_sample


@pytest.fixture(scope="module")
def catalog(digits_run_dir):
    return Catalog([digits_run_dir])


def test_defaults_and_form_strings(catalog):
    p = parse_sample({}, catalog, Limits())  # one model: nothing to choose
    assert (p.model.id, p.sampler, p.steps, p.label, p.guidance, p.seed, p.n, p.eta) == \
        ("digits", "ddim", 50, None, 1.0, 0, 1, 0.0)
    q = parse_sample({"model": "digits", "label": "3", "steps": "20", "guidance": "2.5", "seed": "7", "n": "4",
                      "sampler": "ddim", "eta": "0.5", "prompt": ""}, catalog, Limits())
    assert (q.label, q.steps, q.guidance, q.seed, q.n, q.eta) == (3, 20, 2.5, 7, 4, 0.5)
    assert parse_sample({"label": 3, "steps": 20.0}, catalog, Limits()).steps == 20  # 20.0 from JSON is 20
    assert parse_sample({"label": "none"}, catalog, Limits()).label is None
    i = parse_inpaint({"resample": "3", "steps": 20}, catalog, Limits())
    assert (i.sampler, i.resample, i.jump) == ("ddim", 3, 10)
    assert parse_img2img({"strength": "0.25"}, catalog, Limits()).strength == 0.25


@pytest.mark.parametrize("fields, status, message", [
    ({"model": "nope"}, 404, "unknown model 'nope'; this server has digits"),
    ({"model": ["digits"]}, 404, "unknown model"),
    ({"n": 0}, 400, "n must lie in 1 .. 16, got 0"),
    ({"n": 17}, 400, "n must lie in 1 .. 16, got 17 (the server's --max-n)"),
    ({"n": "four"}, 400, "n must be an integer in 1 .. 16, got 'four'"),
    ({"n": True}, 400, "n must be an integer"),
    ({"n": 2.5}, 400, "n must be an integer"),
    ({"steps": 101}, 400, "steps must lie in 1 .. 100, got 101 (the model's process has T = 100 steps)"),
    ({"steps": 0}, 400, "steps must lie in 1 .. 100"),
    ({"seed": -1}, 400, "seed must lie in 0 .. 9223372036854775807"),
    ({"seed": "9" * 5000}, 400, "seed must be an integer in 0 .. 9223372036854775807, got '9999"),
    ({"sampler": "magic"}, 400, "sampler must be one of consistency, ddim, ddpm"),
    ({"label": 10}, 400, "label must lie in 0 .. 9, got 10"),
    ({"label": "3.5"}, 400, "label must be an integer in 0 .. 9"),
    ({"guidance": 3}, 400, "guidance other than 1 needs a class (label)"),
    ({"label": 1, "guidance": "inf"}, 400, "guidance must be a finite number"),
    ({"label": 1, "guidance": 51}, 400, "guidance must lie in [0, 50], got 51"),
    ({"label": 1, "guidance": "x"}, 400, "guidance must be a number, got 'x'"),
    ({"eta": 0.5, "sampler": "heun"}, 400, "eta is an option of the ddim sampler, not of 'heun'"),
    ({"eta": 2}, 400, "eta must lie in [0, 1]"),
    ({"prompt": "a red seven"}, 400, "takes no text prompt"),
])
def test_bad_fields_are_refused_by_name(catalog, fields, status, message):
    with pytest.raises(BadRequest) as err:
        parse_sample(fields, catalog, Limits())
    assert err.value.status == status and message in str(err.value)


def test_limits_bound_the_work_and_the_editing_fields_are_checked(catalog):
    with pytest.raises(BadRequest, match=r"steps must lie in 1 .. 10, got 20 \(the server's --max-steps\)"):
        parse_sample({"steps": 20}, catalog, Limits(max_steps=10))
    with pytest.raises(BadRequest, match="sampler must be one of ddpm, ddim, euler, heun, got 'dpmpp_2m'"):
        parse_inpaint({"sampler": "dpmpp_2m"}, catalog, Limits())
    with pytest.raises(BadRequest, match="resample must lie in 1 .. 20"):
        parse_inpaint({"resample": 21}, catalog, Limits())
    with pytest.raises(BadRequest, match="network calls is more than this server allows"):
        parse_inpaint({"resample": 20, "steps": 100}, catalog, Limits(max_steps=100))
    with pytest.raises(BadRequest, match=r"strength is missing: give a number in \(0, 1\]"):
        parse_img2img({}, catalog, Limits())
    with pytest.raises(BadRequest, match=r"strength must lie in \(0, 1\], got 0"):
        parse_img2img({"strength": 0}, catalog, Limits())
    with pytest.raises(BadRequest, match="must be a JSON object"):
        parse_sample(["digits"], catalog, Limits())
    with pytest.raises(ValueError, match="--max-n must be an integer >= 1"):
        Limits(max_n=0)
    with pytest.raises(ValueError, match="--max-upload-mb must be a number in"):
        Limits(max_upload_mb=0)
    assert Limits(max_upload_mb=0.5).max_upload_bytes == 512 * 1024


def test_a_sampler_that_cannot_take_the_steps_is_refused_before_the_queue(catalog):
    # the consistency sampler takes steps + 1 levels of the training grid: 100 of T = 100 is too many,
    # which only the sampler's own levels (samplers.sampler_sigmas) know
    assert parse_sample({"sampler": "consistency", "steps": 99}, catalog, Limits()).steps == 99
    with pytest.raises(BadRequest, match=r"consistency cannot take 100 steps on model 'digits': steps must lie in"):
        parse_sample({"sampler": "consistency", "steps": 100}, catalog, Limits())


def test_an_unconditional_model_takes_no_label_and_several_models_must_be_named(digits_run_dir, tmp_path):
    out = tmp_path / "uncond"
    cfg = TrainConfig.from_dict({
        "model": {"name": "mlp", "kwargs": {"dim": 64, "width": 16, "depth": 1}},
        "diffusion": {"schedule": "linear", "T": 50}, "data": {"name": "digits", "flatten": True},
        "sample": {"every": -1}, "batch_size": 8, "steps": 2, "ckpt_every": 2, "device": "cpu", "tensorboard": False,
    })
    Trainer(cfg, out, progress=False).train()
    cat = Catalog([digits_run_dir, out])
    assert cat.describe()[1]["classes"] is None
    with pytest.raises(BadRequest, match="model is missing: give one of digits, uncond"):
        parse_sample({}, cat, Limits())
    with pytest.raises(BadRequest, match="model 'uncond' is unconditional: it takes no class label"):
        parse_sample({"model": "uncond", "label": 1}, cat, Limits())
    with pytest.raises(BadRequest, match="model 'uncond' is unconditional: leave guidance at 1"):
        parse_sample({"model": "uncond", "guidance": 3}, cat, Limits())
    with pytest.raises(BadRequest, match=r"steps must lie in 1 .. 50, got 51 \(the model's process has T = 50"):
        parse_sample({"model": "uncond", "steps": 51}, cat, Limits())
    assert parse_sample({"model": "uncond", "label": ""}, cat, Limits()).label is None


def test_a_clip_model_is_generated_but_not_edited(clip_run_dir):
    cat = Catalog([clip_run_dir])
    assert parse_sample({"label": 1}, cat, Limits()).model.kind == "clip"
    with pytest.raises(BadRequest, match="model 'moving' makes clips \\(8 frames\\): the page generates them, and "
                                         "inpainting takes an image model"):
        parse_inpaint({}, cat, Limits())
    with pytest.raises(BadRequest, match="image-to-image takes an image model"):
        parse_img2img({"strength": 0.5}, cat, Limits())
