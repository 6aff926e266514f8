"""diffusers checkpoints in and out (training/diffusers_format.py), checked against diffusers itself.

Random UNet2DModels (every weight perturbed, so a norm or bias mapped to the wrong place shows)
converted to difflab runs give diffusers' outputs to 1e-5; the converted process has the
scheduler's alphas_cumprod, and DDPM / DDIM sampling through difflab equals diffusers' DDPMPipeline
/ DDIMPipeline from the same noise to 1e-4, with the options the conversion's notes name (where a
note says no option matches, none does); a trained difflab run written out loads in
DDPMPipeline, computes the same function there, and comes back bit for bit; what difflab's U-Net
cannot compute is refused by name, before anything is written.
"""

import inspect
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import difflab as dl
from difflab.training import TrainConfig, train
from difflab.training.diffusers_format import (SCHEDULER_DEFAULTS, UNET_DEFAULTS, WEIGHTS_NAME,
                                               diffusion_from_scheduler_config, from_diffusers, to_diffusers,
                                               unet_from_diffusers_config, _unet_config)

diffusers = pytest.importorskip("diffusers")  # the test extra: pip install -e ".[test]"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
logging.getLogger("diffusers").setLevel(logging.ERROR)  # (accelerate's absence, unused config keys)

SMALL = dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=4,
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
# google/ddpm-cifar10-32's unet/config.json and scheduler/scheduler_config.json as published (typed in,
# not downloaded): DDPM's CIFAR-10 network (35.7M parameters) converted from the TensorFlow code, hence
# freq_shift 1, norm_eps 1e-6 and downsample_padding 0 (zeros right and bottom only)
CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
CIFAR10_SCHEDULER = {
    "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02, "beta_schedule": "linear",
    "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
    "variance_type": "fixed_large",
}
CIFAR10 = {k: v for k, v in CIFAR10_CONFIG.items() if not k.startswith("_")}  # UNet2DModel's arguments


def random_unet(seed: int = 0, **config):
    """A UNet2DModel with every weight moved off its initial value (GroupNorm's 1 and 0 too)."""
    torch.manual_seed(seed)
    net = diffusers.UNet2DModel(**config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def pipeline_folder(path: Path, net, scheduler=None) -> Path:
    scheduler = scheduler or diffusers.DDPMScheduler(num_train_timesteps=100)
    diffusers.DDPMPipeline(unet=net, scheduler=scheduler).save_pretrained(path)
    return path


def test_the_defaults_are_diffusers_own():
    """A config.json that leaves a field out means diffusers' default: the converter's tables hold
    the installed diffusers' constructor defaults."""
    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}

    assert defaults(diffusers.UNet2DModel) == UNET_DEFAULTS
    for name, table in SCHEDULER_DEFAULTS.items():
        assert defaults(getattr(diffusers, name)) == table, name


NETWORKS = {
    "down+attn, flipped time features, heads of 8": dict(SMALL),
    "scale-shift, class labels, unflipped": dict(SMALL, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4,
                                                 num_class_embeds=5, flip_sin_to_cos=False),
    # (norm_eps 0.1: a GroupNorm left at 1e-5 shows, where 1e-6 -> 1e-5 moves outputs by ~1e-6 only)
    "the original DDPM code's options: freq_shift 1, right/bottom padding; norm_eps 0.1": dict(
        SMALL, freq_shift=1, downsample_padding=0, norm_eps=0.1, flip_sin_to_cos=False),
    "resnet resampling, 3 levels, attention at 8x8, one head": dict(
        sample_size=(8, 16), in_channels=2, out_channels=3, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("AttnDownBlock2D", "ResnetDownsampleBlock2D", "DownBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D", "AttnUpBlock2D"), downsample_type="resnet",
        upsample_type="resnet", attention_head_dim=None, norm_num_groups=4, time_embedding_dim=24, dropout=0.1),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_converted_network_gives_diffusers_outputs(name, tmp_path):
    config = NETWORKS[name]
    net = random_unet(**config)
    run = from_diffusers(pipeline_folder(tmp_path / "pipe", net), tmp_path / "run").out
    loaded = dl.load(run)
    C, H, W = loaded.image_shape
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, C, H, W, generator=g)
    t = torch.tensor([0, 41, 99])
    labels = torch.tensor([0, 4, 2]) if "num_class_embeds" in config else None
    with torch.no_grad():
        theirs = net(x, t, class_labels=labels).sample
        for model in (loaded.model, loaded.ema_model):
            assert (model(x, t, labels) - theirs).abs().max() < 1e-5
        # a fractional time: both embed t continuously
        assert (loaded.ema_model(x, t + 0.37, labels) - net(x, t + 0.37, class_labels=labels).sample).abs().max() < 1e-5
    # ... and written back out, diffusers' own class computes the same function again
    back = diffusers.UNet2DModel.from_pretrained(to_diffusers(run, tmp_path / "back").out / "unet").eval()
    with torch.no_grad():
        assert (back(x, t, class_labels=labels).sample - theirs).abs().max() < 1e-5


def test_ddpm_cifar10_network(tmp_path):
    """google/ddpm-cifar10-32's configuration (35.7M parameters; random weights): difflab's
    unet_cifar10 with the original DDPM code's options freq_shift 1, norm_eps 1e-6 and
    downsample_padding 0, and diffusers' outputs. Without the options the same weights compute
    another function (so the comparison sees them)."""
    net = random_unet(**CIFAR10)
    folder = pipeline_folder(tmp_path / "pipe", net)
    (folder / "unet" / "config.json").write_text(json.dumps(CIFAR10_CONFIG))  # the published files themselves
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(CIFAR10_SCHEDULER))
    converted = from_diffusers(folder, tmp_path / "run")
    assert any("variance='beta'" in n for n in converted.notes)  # (fixed_large: an argument of dl.sample)
    run = dl.load(converted.out)
    kwargs = run.config.model.kwargs
    assert (kwargs["freq_shift"], kwargs["norm_eps"], kwargs["downsample_padding"]) == (1, 1e-6, 0)
    ours = dl.models.unet_cifar10(dropout=0.0)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert {k: v.shape for k, v in run.ema_model.state_dict().items()} == shapes
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in net.parameters())
    x, t = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([517])
    with torch.no_grad():
        theirs = net(x, t).sample
        # float32: 35.7M parameters summed in other orders (difflab adds conv1's bias to the embedding)
        torch.testing.assert_close(run.ema_model(x, t), theirs, rtol=1e-5, atol=1e-5)
        ours.load_state_dict(run.ema_model.state_dict())  # difflab's defaults: another function
        assert (ours.eval()(x, t) - theirs).abs().max() > 1e-2
        # float64, at t = 0 (where diffusers' float32 time features are exact): the same function to
        # rounding (norm_eps 1e-5 instead of 1e-6 alone would move it by ~1e-6)
        ours, theirs = run.ema_model.double(), net.double()
        assert (ours(x.double(), t * 0) - theirs(x.double(), t * 0).sample).abs().max() < 1e-10


def test_attention_weights_of_old_diffusers_files(tmp_path):
    """Files of diffusers < 0.14 name attention weights query/key/value/proj_attn: read alike."""
    net = random_unet(**SMALL)
    folder = pipeline_folder(tmp_path / "pipe", net)
    weights = folder / "unet" / WEIGHTS_NAME
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {re.sub("|".join(map(re.escape, names)), lambda m: names[m.group(0)], k): v
           for k, v in load_file(str(weights)).items()}
    assert any(".proj_attn." in k for k in old)
    save_file(old, str(weights))
    run = dl.load(from_diffusers(folder, tmp_path / "run").out)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 60])
    with torch.no_grad():
        assert (run.ema_model(x, t) - net(x, t).sample).abs().max() < 1e-5


SCHEDULES = [("DDPMScheduler", dict(beta_schedule="linear", beta_start=2e-4, beta_end=0.03), "eps"),
             ("DDPMScheduler", dict(beta_schedule="scaled_linear", prediction_type="v_prediction"), "v"),
             ("DDPMScheduler", dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample"), "x0"),
             ("DDPMScheduler", dict(beta_schedule="sigmoid", beta_start=1e-4, beta_end=0.01), "eps"),
             ("DDIMScheduler", dict(beta_schedule="squaredcos_cap_v2", clip_sample_range=2.0), "eps")]


@pytest.mark.parametrize("cls,options,prediction", SCHEDULES)
def test_converted_process_is_the_schedulers(cls, options, prediction):
    scheduler = getattr(diffusers, cls)(num_train_timesteps=250, **options)
    diffusion, sample, notes = diffusion_from_scheduler_config(dict(scheduler.config, _class_name=cls))
    cfg = TrainConfig.from_dict({"model": {"name": "unet_tiny"}, "diffusion": diffusion, "sample": sample})
    proc = dl.training.build.build_process(cfg)
    assert proc.T == 250 and proc.prediction == prediction
    # diffusers keeps the schedule in float32 (its cosine tail, abar ~ 1e-7, to 1e-5 relative), difflab in float64
    torch.testing.assert_close(proc.alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=2e-6, atol=1e-10)
    assert proc.clip_x0 == options.get("clip_sample_range", 1.0)
    # diffusers' default grid is "leading", difflab's "trailing"; DDIMScheduler clips by default
    expected = ["timestep_spacing 'leading'"] + (["clip_sample true with DDIM"] if cls == "DDIMScheduler" else [])
    assert [n.split(":")[0] for n in notes] == expected and "pass spacing='leading'" in notes[0]


@pytest.fixture(scope="module")
def small_pipeline(tmp_path_factory):
    """A converted random UNet2DModel (T = 100, epsilon) and diffusers' network itself."""
    root = tmp_path_factory.mktemp("pipe")
    net = random_unet(**SMALL)
    run = from_diffusers(pipeline_folder(root / "pipe", net), root / "run").out
    return net, dl.load(run)


def _images(x):  # diffusers' pipelines' output: (x / 2 + 0.5) clamped, [B, H, W, C]
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# (scheduler, timestep_spacing, steps_offset, steps, what the grid's note names): the option of dl.sample that
# samples like the pipeline, None where the pipeline samples on difflab's default grid, or "no option"
GRIDS = [("DDPMScheduler", "leading", 0, 10, "spacing='leading'"),
         ("DDPMScheduler", "leading", 1, 10, "timesteps=dl.samplers.timesteps(100, steps, 'leading', steps_offset=1)"),
         ("DDPMScheduler", "linspace", 0, 7, "spacing='linspace'"),
         ("DDPMScheduler", "trailing", 1, 7, None),  # (the offset is noted as changing nothing)
         ("DDIMScheduler", "leading", 0, 10, "spacing='leading'"),
         ("DDIMScheduler", "leading", 3, 7, "timesteps=dl.samplers.timesteps(100, steps, 'leading', steps_offset=3)"),
         ("DDIMScheduler", "trailing", 0, 10, None),  # steps divides T: diffusers' DDIM steps on the grid
         ("DDIMScheduler", "trailing", 0, 7, "no option"),  # t - T // steps: off the grid
         ("DDIMScheduler", "linspace", 0, 10, "no option")]


@pytest.mark.parametrize("cls,spacing,offset,steps,named", GRIDS)
def test_grid_notes_name_the_option_that_samples_like_the_pipeline(small_pipeline, cls, spacing, offset, steps, named):
    """The conversion's note on the timestep grid names the dl.sample option with which difflab's
    DDPM (same generator: the same noise draws) or deterministic DDIM reproduces the folder's
    pipeline from the same noise, and the run's default grid does not; where it says no option
    does, the nearest (the pipeline's timesteps) does not either. No clipping (see below)."""
    net, run = small_pipeline
    scheduler = getattr(diffusers, cls)(num_train_timesteps=100, timestep_spacing=spacing, steps_offset=offset,
                                        clip_sample=False)
    _, _, notes = diffusion_from_scheduler_config(dict(scheduler.config, _class_name=cls))
    offset_notes = [n for n in notes if n.startswith("steps_offset")]
    assert len(offset_notes) == (offset != 0 and spacing != "leading")
    grid = [n for n in notes if n.startswith("timestep_spacing")]
    pipe = getattr(diffusers, cls.replace("Scheduler", "Pipeline"))(unet=net, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=steps,
                  output_type="np", **({"eta": 0.0} if cls == "DDIMScheduler" else {})).images

    def ours(**options):
        x = dl.sample(run.ema_model, run.proc, (2, 3, 8, 8), sampler=cls[:4].lower(), steps=steps, clip_x0=None,
                      generator=torch.Generator().manual_seed(3), **options)
        return abs(_images(x) - theirs).max()

    if named is None:  # difflab's default grid samples like the pipeline
        if cls == "DDIMScheduler":  # (noted: for steps that do not divide T it would not)
            assert "only where steps divides T" in grid[0] and 100 % steps == 0
        else:
            assert grid == []
        assert ours() < 1e-4
        return
    (note,) = grid
    if named == "no option":
        assert "has no option for diffusers' step" in note
        assert ours(timesteps=pipe.scheduler.timesteps.clone()) > 1e-3  # the pipeline's grid, difflab's steps
        return
    assert f"pass {named} to dl.sample" in note
    option = ({"spacing": spacing} if named.startswith("spacing") else
              {"timesteps": dl.samplers.timesteps(100, steps, "leading", steps_offset=offset)})
    assert ours(**option) < 1e-4 and ours() > 1e-3  # the named option samples like the pipeline, the default not


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_sampling_equals_ddim_pipeline(small_pipeline, clip):
    """Deterministic DDIM from the same noise. difflab re-derives eps from the clipped x0 estimate,
    as diffusers does with use_clipped_model_output=True (what the conversion's note says); the
    pipeline's default keeps the network's eps, which differs where clipping is active; without
    clipping there is no difference."""
    net, run = small_pipeline
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=100, clip_sample=clip)
    _, _, notes = diffusion_from_scheduler_config(dict(scheduler.config, _class_name="DDIMScheduler"))
    assert any("use_clipped_model_output=True" in n for n in notes) == clip
    pipe = diffusers.DDIMPipeline(unet=net, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def theirs(**options):
        return pipe(batch_size=2, generator=torch.Generator().manual_seed(4), eta=0.0, num_inference_steps=10,
                    output_type="np", **options).images

    ours = _images(dl.sample(run.ema_model, run.proc, (2, 3, 8, 8), sampler="ddim", steps=10, spacing="leading",
                             generator=torch.Generator().manual_seed(4), clip_x0=1.0 if clip else None))
    assert abs(ours - theirs(use_clipped_model_output=True)).max() < 1e-4
    if clip:  # (the random network's x0 estimates leave [-1, 1], so clipping acts)
        assert abs(ours - theirs()).max() > 1e-2


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """difflab's unet_tiny (class-conditional, scale-shift, 2 attention heads) trained 3 steps at a
    high learning rate, so its zero-initialised layers carry signal; EMA = the trained weights."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = TrainConfig.from_dict({
        "model": {"name": "unet_tiny", "kwargs": {"num_classes": 10}}, "diffusion": {"schedule": "cosine", "T": 200},
        "data": {"name": "digits"}, "optim": {"lr": 0.05, "grad_clip": 0.0}, "ema": {"decay": 0.0},
        "sample": {"every": -1}, "batch_size": 8, "steps": 3, "ckpt_every": 3, "device": "cpu", "tensorboard": False})
    train(cfg, out, progress=False)
    return out


def test_round_trip_through_ddpm_pipeline(trained_run, tmp_path):
    run = dl.load(trained_run)
    folder = to_diffusers(trained_run, tmp_path / "pipe").out
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    assert isinstance(pipe.unet, diffusers.UNet2DModel) and isinstance(pipe.scheduler, diffusers.DDPMScheduler)
    torch.testing.assert_close(run.proc.alphas_cumprod, pipe.scheduler.alphas_cumprod.double(), rtol=2e-6, atol=1e-10)
    assert pipe.scheduler.config.clip_sample and pipe.scheduler.config.clip_sample_range == 1.0
    for steps in (7, 20):  # the pipeline steps on difflab's timesteps at any step count, not only at T
        pipe.scheduler.set_timesteps(steps)
        ours_grid = dl.samplers.timesteps(run.proc.T, steps, dl.samplers.SAMPLERS["ddpm"].default_spacing)
        assert pipe.scheduler.timesteps.tolist() == torch.as_tensor(ours_grid).tolist()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 50, 120, 199])
    labels = torch.tensor([3, 9, 0, 10])  # 10: difflab's null label, diffusers' last class row
    with torch.no_grad():
        ours = run.ema_model(x, t, labels)
        assert (pipe.unet.eval()(x, t, class_labels=labels).sample - ours).abs().max() < 1e-5
        assert torch.equal(run.ema_model(x, t), run.ema_model(x, t, torch.full((4,), 10)))  # (null = no labels)
    back = dl.load(from_diffusers(folder, tmp_path / "back").out)
    assert back.num_classes == 10 and back.proc.signature() == run.proc.signature()
    mine, theirs = run.ema_model.state_dict(), back.ema_model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():
        assert torch.equal(back.ema_model(x, t, labels), ours)


def test_refusals_name_the_option():
    base = dict(UNET_DEFAULTS, **SMALL, _class_name="UNet2DModel")
    cases = {
        "CrossAttnDownBlock2D": dict(down_block_types=["CrossAttnDownBlock2D", "AttnDownBlock2D"]),
        "SkipUpBlock2D": dict(up_block_types=["AttnUpBlock2D", "SkipUpBlock2D"]),
        "freq_shift = 8": dict(freq_shift=8),  # (h = 16 / 2: no frequencies)
        "norm_eps = 0": dict(norm_eps=0),
        "downsample_padding = 2": dict(downsample_padding=2),
        "mid_block_scale_factor": dict(mid_block_scale_factor=2),
        "time_embedding_type = 'fourier'": dict(time_embedding_type="fourier"),
        "class_embed_type = 'timestep'": dict(class_embed_type="timestep"),
        "attn_norm_num_groups = null": dict(resnet_time_scale_shift="scale_shift"),
        "both paths": dict(up_block_types=["UpBlock2D", "UpBlock2D"]),
        "resample differently": dict(down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D"]),
        "attention_head_dim = 12": dict(attention_head_dim=12),
        "sample_size = null": dict(sample_size=None),
        "UNet2DConditionModel": dict(_class_name="UNet2DConditionModel"),
    }
    for words, change in cases.items():
        with pytest.raises(ValueError, match=f"cannot convert: .*{words}"):
            unet_from_diffusers_config({**base, **change})
    with pytest.raises(ValueError, match="center_input_sample = True"):  # (the original DDPM checkpoints convert)
        unet_from_diffusers_config(dict(CIFAR10_CONFIG, center_input_sample=True))
    ddpm = dict(SCHEDULER_DEFAULTS["DDPMScheduler"], _class_name="DDPMScheduler")
    for words, change in {"prediction_type = 'flow'": dict(prediction_type="flow"),
                          "beta_schedule = 'laplace'": dict(beta_schedule="laplace"),
                          "variance_type = 'learned'": dict(variance_type="learned"),
                          "trained_betas": dict(trained_betas=[0.1, 0.2]),
                          "thresholding": dict(thresholding=True),
                          "timestep_spacing = 'uniform'": dict(timestep_spacing="uniform"),
                          "steps_offset = -1": dict(steps_offset=-1),
                          "the scheduler is 'PNDMScheduler'": dict(_class_name="PNDMScheduler")}.items():
        with pytest.raises(ValueError, match=f"cannot convert: .*{words}"):
            diffusion_from_scheduler_config({**ddpm, **change})
    _, _, notes = diffusion_from_scheduler_config({**ddpm, "variance_type": "fixed_large", "clip_sample": False})
    assert any("variance='beta'" in n for n in notes) and any("--no-clip" in n for n in notes)


def test_refusals_write_nothing(tmp_path):
    folder = pipeline_folder(tmp_path / "pipe", random_unet(**SMALL))
    config = json.loads((folder / "unet" / "config.json").read_text())
    kblocks = ["KDownBlock2D", "AttnDownBlock2D"]
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "down_block_types": kblocks}))
    with pytest.raises(ValueError, match="KDownBlock2D.*no such block"):
        from_diffusers(folder, tmp_path / "run")
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "layers_per_block": 2}))
    with pytest.raises(ValueError, match="weight 'down_blocks.0.resnets.1.norm1.weight' is missing"):
        from_diffusers(folder, tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no run, no temporary folder left
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a diffusers UNet2DModel folder"):
        from_diffusers(tmp_path / "empty", tmp_path / "run")
    with pytest.raises(FileExistsError, match="exists"):
        from_diffusers(folder, tmp_path / "empty")


def test_to_diffusers_refuses_what_diffusers_cannot_hold(tmp_path):
    out = tmp_path / "mlp"
    cfg = TrainConfig.from_dict({"model": {"name": "mlp", "kwargs": {"dim": 2, "width": 16, "depth": 1}},
                                 "data": {"name": "toy2d", "kwargs": {"n": 64}}, "sample": {"every": -1},
                                 "batch_size": 8, "steps": 1, "device": "cpu", "tensorboard": False})
    train(cfg, out, progress=False)
    with pytest.raises(ValueError, match="model 'mlp' .*UNet2DModel holds difflab's U-Net"):
        to_diffusers(out, tmp_path / "pipe")
    assert not (tmp_path / "pipe").exists()


def test_a_unet_that_cross_attends_to_text_is_refused():
    net = dl.models.UNet(in_channels=1, channels=32, channel_mult=(1, 2), context_dim=8)
    with pytest.raises(ValueError, match="cannot convert: model.kwargs.context_dim = 8: text cross-attention"):
        _unet_config(net, (1, 8, 8))


def test_learned_range_variance_samples_as_the_ddpm_pipeline(tmp_path):
    """A UNet2DModel with twice its input channels under variance_type learned_range (improved DDPM)
    becomes a U-Net with learn_sigma (loss: hybrid); difflab's DDPM sampler reads its variance and
    equals DDPMPipeline from the same seed, on 10 respaced steps and on all 100 (both draw the
    start and each step's noise in the same order; float32 rounding of the [0, 1] images: 5e-4).
    Written back, the scheduler says learned_range again."""
    net = random_unet(in_channels=1, out_channels=2, **SMALL)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, variance_type="learned_range",
                                        timestep_spacing="trailing")
    folder = pipeline_folder(tmp_path / "pipe", net, scheduler)
    converted = from_diffusers(folder, tmp_path / "run")
    assert any("learned_range" in n for n in converted.notes)
    run = dl.load(tmp_path / "run")
    assert run.ema_model.learn_sigma and run.config.loss == "hybrid"
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    for steps in (10, 100):
        theirs = pipe(batch_size=3, num_inference_steps=steps, generator=torch.Generator().manual_seed(7),
                      output_type="np").images
        theirs = torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1
        ours = dl.sample(run.ema_model, run.proc, (3, 1, 8, 8), "ddpm", steps,
                         generator=torch.Generator().manual_seed(7)).clamp(-1, 1)
        assert (ours - theirs).abs().max() < 5e-4, steps
        fixed = dl.sample(run.ema_model, run.proc, (3, 1, 8, 8), "ddpm", steps, variance="posterior",
                          generator=torch.Generator().manual_seed(7)).clamp(-1, 1)
        assert (fixed - theirs).abs().max() > 1e-2  # (the variance matters: the check can fail)
    back = to_diffusers(tmp_path / "run", tmp_path / "again").out
    written = json.loads((back / "scheduler" / "scheduler_config.json").read_text())
    assert written["variance_type"] == "learned_range"
    assert json.loads((back / "unet" / "config.json").read_text())["out_channels"] == 2
    with pytest.raises(ValueError, match="learned_range.*out_channels = 1"):
        pipeline_folder(tmp_path / "bad", random_unet(in_channels=1, out_channels=1, **SMALL), scheduler)
        from_diffusers(tmp_path / "bad", tmp_path / "bad_run")
