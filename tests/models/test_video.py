"""The space-time U-Net (difflab.models.video): shapes, the image U-Net per frame at initialisation,
masked frames independent and unmasked ones coupled, the relative position bias, the temporal
layers against direct implementations of their equations, bad input; and clips through dl.sample
and the trainer (moving digits by name, ``dl.data.load("moving_digits")``)."""

import math

import pytest
import torch

from networks import perturb
import difflab as dl
from difflab.models.unet import UNet
from difflab.models.video import (IndependentFrames, RelativePositionBias, TemporalAttention, TemporalConv,
                                  VideoUNet, video_unet_mnist, video_unet_tiny)

SMALL = dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4, num_heads=2,
             attention_levels=None)
# ADM's options: resampling residual blocks, spatial attention at a level, two blocks a level
ADM = dict(SMALL, resample="resblock", attention_levels=(1,), num_res_blocks=2, use_scale_shift_norm=True)


def small(frames=4, **kw) -> VideoUNet:
    torch.manual_seed(0)
    return VideoUNet(frames=frames, **{**SMALL, **kw})


def clips(B=2, T=4, C=1, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, H, W, generator=g), torch.randint(0, 1000, (B,), generator=g)


def test_output_has_the_clips_shape_and_the_presets_build():
    model = perturb(small(num_classes=3))
    x, t = clips()
    out = model(x, t, torch.tensor([0, 3]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert model(x[:, :1], t).shape == (2, 1, 1, 8, 8)  # fewer frames than the model takes
    assert isinstance(dl.models.build("video_unet", frames=4, **SMALL), VideoUNet)
    tiny = dl.models.build("video_unet_tiny", num_classes=10)
    assert tiny.frames == 8 and tiny.num_classes == 10 and tiny.image_size == 16
    assert video_unet_mnist().frames == 16  # (built, not run: the GPU-sized preset)


@pytest.mark.parametrize("kw", [SMALL, ADM], ids=["ddpm", "adm"])
def test_at_initialisation_the_network_is_the_image_unet_on_every_frame(kw):
    """The temporal layers start as the identity (zero-initialised convolution and W_o), so with
    the spatial layers given weights the output equals, bit for bit, an independent UNet with those
    weights applied to the B*T frames (each with its clip's t and label), masked or not."""
    model = small(**{**kw, "num_classes": 3})
    perturb(model.spatial)
    with torch.no_grad():  # a learned bias too: it alone cannot move an attention whose W_o is zero
        for m in model.modules():
            if isinstance(m, RelativePositionBias):
                m.table.normal_()
    image = UNet(**{**kw, "num_classes": 3})
    image.load_state_dict(model.spatial.state_dict())
    x, t = clips()
    cond = torch.tensor([1, 3])
    frames = image(x.flatten(0, 1), t.repeat_interleave(4), cond.repeat_interleave(4)).view_as(x)
    assert frames.abs().mean() > 0.1  # (signal through every spatial layer)
    assert torch.equal(model(x, t, cond), frames)
    assert torch.equal(model(x, t, cond, independent_frames=True), frames)
    assert torch.equal(VideoUNet.from_unet(image, frames=4)(x, t, cond), frames)


def _change_frame(x, j):
    y = x.clone()
    y[:, j] += torch.randn(y[:, j].shape, generator=torch.Generator().manual_seed(9))
    return y


@pytest.mark.parametrize("kw", [SMALL, ADM], ids=["ddpm", "adm"])
def test_masked_frames_are_independent_and_unmasked_ones_coupled(kw):
    model = perturb(small(**kw))  # every layer, the temporal ones too, carries signal
    x, t = clips()
    y = _change_frame(x, 2)
    others = [0, 1, 3]
    masked, masked_y = model(x, t, independent_frames=True), model(y, t, independent_frames=True)
    assert torch.equal(masked[:, others], masked_y[:, others])
    assert (masked[:, 2] - masked_y[:, 2]).abs().max() > 1e-2
    coupled, coupled_y = model(x, t), model(y, t)
    for i in others:  # every other frame sees frame 2 (attention reaches all frames at every level)
        assert (coupled[:, i] - coupled_y[:, i]).abs().max() > 1e-3
    # per clip: clip 0 independent frames, clip 1 a clip
    per_clip, per_clip_y = (model(v, t, independent_frames=torch.tensor([True, False])) for v in (x, y))
    assert torch.equal(per_clip[0, others], per_clip_y[0, others])
    assert torch.equal(per_clip[1], coupled[1]) and torch.equal(per_clip_y[1], coupled_y[1])


def test_per_frame_masks_make_joint_image_video_batches():
    """Frames 0-2 a clip, frame 3 an independent image (Ho et al.'s joint training): the image is
    a function of itself alone, the clip's frames see each other but not the image, and the image
    frame is computed as in the all-independent mode."""
    model = perturb(small())
    x, t = clips()
    mask = torch.tensor([[False, False, False, True]] * 2)
    out = model(x, t, independent_frames=mask)
    image = _change_frame(x, 3)
    out_image = model(image, t, independent_frames=mask)
    assert torch.equal(out[:, :3], out_image[:, :3])  # the clip does not see the image
    frame = _change_frame(x, 0)
    out_frame = model(frame, t, independent_frames=mask)
    assert torch.equal(out[:, 3], out_frame[:, 3])  # the image does not see the clip
    assert (out[:, 1] - out_frame[:, 1]).abs().max() > 1e-3  # the clip's frames see each other
    alone = model(x, t, independent_frames=True)
    torch.testing.assert_close(out[:, 3], alone[:, 3], rtol=0, atol=1e-6)
    # and the clip's frames are what the model gives the 3-frame clip on its own
    torch.testing.assert_close(out[:, :3], model(x[:, :3], t), rtol=0, atol=1e-5)


def test_masked_frames_permute_with_the_input():
    model = perturb(small())
    x, t = clips()
    perm = torch.tensor([2, 0, 3, 1])
    out = model(x, t, independent_frames=True)
    torch.testing.assert_close(model(x[:, perm], t, independent_frames=True), out[:, perm], rtol=0, atol=1e-6)


def test_without_a_bias_temporal_attention_is_blind_to_frame_order():
    """Temporal attention alone (no temporal convolution) with a zero relative bias is
    permutation-equivariant in the frames: the network permutes its output with its input. A
    learned bias breaks that: it is the network's sense of time."""
    model = perturb(small(temporal_conv=False))
    tables = [m.table for m in model.modules() if isinstance(m, RelativePositionBias)]
    with torch.no_grad():
        for table in tables:
            table.zero_()
    x, t = clips()
    perm = torch.tensor([3, 1, 0, 2])
    out = model(x, t)
    torch.testing.assert_close(model(x[:, perm], t), out[:, perm], rtol=0, atol=1e-5)
    with torch.no_grad():
        for table in tables:
            table.copy_(torch.arange(table.numel()).view_as(table) * 0.5)
    out = model(x, t)
    assert (model(x[:, perm], t) - out[:, perm]).abs().max() > 1e-3


def test_the_relative_position_bias_depends_on_the_offset_only():
    torch.manual_seed(0)
    rel = RelativePositionBias(num_heads=3, max_frames=5)
    with torch.no_grad():
        rel.table.normal_()
    b = rel(5)
    assert b.shape == (3, 5, 5)
    for i in range(5):
        for j in range(5):
            assert torch.equal(b[:, i, j], rel.table[:, (j - i) + 4])  # b[i, j] = table[j - i]
    for s in range(1, 5):  # the same offset, the same bias, wherever it lies in the clip
        assert torch.equal(b[:, s:, s:], b[:, :-s, :-s])
    assert torch.equal(rel(3), b[:, :3, :3])  # a shorter clip reads the same table
    assert len({float(v) for v in b[0].detach().flatten()}) == 9  # 2F - 1 offsets, nine distinct numbers


def _attention_by_hand(layer: TemporalAttention, h, T, allowed=None):
    """h + W_o a with a_i = sum_j softmax_j(q_i.k_j / sqrt(d) + table[j - i] + m_ij) v_j, one pixel,
    head and query frame at a time."""
    BT, C, H, W = h.shape
    B, heads = BT // T, layer.num_heads
    d = C // heads
    n = layer.norm(h).view(B, T, C, H, W)
    out = h.clone().view(B, T, C, H, W)
    table = layer.bias.table
    for b in range(B):
        for y in range(H):
            for x in range(W):
                q, k, v = layer.qkv(n[b, :, :, y, x]).split(C, dim=1)  # [T, C] each
                a = torch.zeros(T, C)
                for head in range(heads):
                    sl = slice(head * d, (head + 1) * d)
                    for i in range(T):
                        logits = torch.tensor([float(q[i, sl] @ k[j, sl]) / math.sqrt(d)
                                               + float(table[head, j - i + layer.bias.max_frames - 1])
                                               if allowed is None or allowed[b, i, j] else -math.inf
                                               for j in range(T)])
                        a[i, sl] = torch.softmax(logits, 0) @ v[:, sl]
                out[b, :, :, y, x] += layer.proj(a)
    return out.view(BT, C, H, W)


def test_temporal_attention_is_its_equation():
    torch.manual_seed(0)
    layer = TemporalAttention(8, num_heads=2, max_frames=5, norm_groups=2)
    with torch.no_grad():
        layer.bias.table.normal_()
        layer.proj.weight.normal_(0, 0.3)
    T = 4
    h = torch.randn(2 * T, 8, 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(layer(h, T), _attention_by_hand(layer, h, T), rtol=1e-5, atol=1e-5)
        allowed = torch.eye(T, dtype=torch.bool).expand(2, T, T).clone()
        allowed[1, :2, :2] = True  # clip 1: frames 0 and 1 see each other
        torch.testing.assert_close(layer(h, T, allowed), _attention_by_hand(layer, h, T, allowed),
                                   rtol=1e-5, atol=1e-5)


def test_temporal_convolution_is_its_equation():
    """h_t + sum_k W_k SiLU(GN(h))_{t + k - 1} + b at every pixel, zeros beyond the ends; frames
    outside the clip neither read nor are read and keep h."""
    torch.manual_seed(0)
    layer = TemporalConv(4, kernel=3, norm_groups=2)
    with torch.no_grad():
        layer.conv.weight.normal_(0, 0.3)
        layer.conv.bias.normal_()
    B, T = 2, 5
    h = torch.randn(B * T, 4, 3, 3)
    a = torch.nn.functional.silu(layer.norm.normalize(h)).view(B, T, 4, 3, 3)
    W, bias = layer.conv.weight[:, :, :, 0, 0], layer.conv.bias  # [out, in, 3]

    def by_hand(clip):
        out = h.clone().view(B, T, 4, 3, 3)
        for b in range(B):
            for t in range(T):
                if not clip[b, t]:
                    continue
                acc = bias[:, None, None].expand(4, 3, 3).clone()
                for k in range(3):
                    s = t + k - 1
                    if 0 <= s < T and clip[b, s]:
                        acc += torch.einsum("oi,ihw->ohw", W[:, :, k], a[b, s])
                out[b, t] += acc
        return out.view(B * T, 4, 3, 3)

    every = torch.ones(B, T, dtype=torch.bool)
    some = torch.tensor([[True, True, False, True, True], [False, True, True, True, True]])
    with torch.no_grad():
        torch.testing.assert_close(layer(h, T), by_hand(every), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(h, T, some), by_hand(some), rtol=1e-5, atol=1e-5)


def test_the_temporal_layers_start_at_zero_and_can_be_left_out():
    model = small()
    temporal = [m for m in model.modules() if isinstance(m, (TemporalAttention, TemporalConv))]
    assert len(temporal) == 2 * (2 + 1 + 4)  # after 2 down steps, the middle, 4 up steps
    for m in temporal:
        zeroed = m.proj if isinstance(m, TemporalAttention) else m.conv
        assert not any(p.any() for p in zeroed.parameters())
    none = small(temporal_attention=False, temporal_conv=False)
    assert not [m for m in none.modules() if isinstance(m, (TemporalAttention, TemporalConv))]
    only_conv = small(temporal_attention=False, temporal_kernel=5)
    assert {m.conv.kernel_size for m in only_conv.modules() if isinstance(m, TemporalConv)} == {(5, 1, 1)}


def test_frame_by_frame_is_the_masked_network_for_the_samplers():
    model = perturb(small(num_classes=3))
    x, t = clips()
    cond = torch.tensor([0, 2])
    per_frame = model.frame_by_frame()
    assert isinstance(per_frame, IndependentFrames) and per_frame.num_classes == 3
    assert torch.equal(per_frame(x, t, cond), model(x, t, cond, independent_frames=True))


@pytest.mark.parametrize("call, match", [
    (lambda m: m(torch.randn(2, 1, 8, 8), 5), r"\[B, T, 1, H, W\].*x.unsqueeze\(1\)"),
    (lambda m: m(torch.randn(2, 5, 1, 8, 8), 5), r"clips of 1 \.\. 4 frames.*got 5 frames"),
    (lambda m: m(torch.randn(2, 4, 3, 8, 8), 5), r"in_channels=1"),
    (lambda m: m(torch.randn(2, 4, 1, 7, 8), 5), r"divisible by 2"),
    (lambda m: m(torch.randn(2, 4, 1, 8, 8), 5, independent_frames=torch.ones(2, 3, dtype=torch.bool)),
     r"independent_frames must be .*\[2\].*\[2, 4\]"),
    (lambda m: m(torch.randn(2, 4, 1, 8, 8), 5, independent_frames=1), r"independent_frames must be"),
    (lambda m: m(torch.randn(2, 4, 1, 8, 8), 5, cond=torch.tensor([0, 1])), r"unconditional"),
])
def test_bad_input_is_refused_with_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call(small())


def test_labels_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"0 \.\. 2"):
        small(num_classes=3)(torch.randn(2, 4, 1, 8, 8), 5, torch.tensor([0, 7]))


@pytest.mark.parametrize("kw, match", [
    (dict(frames=0), "frames"),
    (dict(temporal_kernel=2), "odd"),
    (dict(temporal_attention="yes"), "temporal_attention must be True or False"),
    (dict(temporal_heads=3), "num_heads=3 must divide"),
    (dict(learn_sigma=True), "learn_sigma"),
    (dict(guidance_embed=True, num_classes=3), "guidance_embed"),
    (dict(context_dim=8), "takes no context_dim"),
    (dict(head_dim=16, num_heads=None), "head_dim=16 must divide"),
])
def test_bad_options_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_from_unet_takes_a_unet_only():
    with pytest.raises(TypeError, match="from_unet takes a difflab UNet"):
        VideoUNet.from_unet(torch.nn.Linear(2, 2))


def test_clips_go_through_the_samplers():
    """dl.sample's processes and samplers act per sample on any shape: 5-D clips, with guidance."""
    model = perturb(small(num_classes=3)).eval()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100), clip_x0=1.0)
    for sampler in ("ddim", "ddpm", "heun"):
        x = dl.sample(model, proc, (2, 4, 1, 8, 8), sampler, 3, cond=torch.tensor([0, 2]), guidance=2.0,
                      generator=torch.Generator().manual_seed(0))
        assert x.shape == (2, 4, 1, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_moving_digits_by_name_train_and_sample(tmp_path):
    """dl.data.load("moving_digits") gives moving_digits' clips with the digit's class (two digits:
    no labels); a config naming it trains a video_unet on [N, T, 1, H, W] clips, and the run loads
    and samples clips."""
    from difflab.training import TrainConfig, Trainer

    kw = dict(n=16, frames=4, canvas=12, speed=[0.5, 1.5], seed=3)
    x, y = dl.data.load("moving_digits", **kw)
    md = dl.data.moving_digits(**kw)
    assert torch.equal(x, md.clips) and torch.equal(y, md.labels[:, 0]) and x.shape == (16, 4, 1, 12, 12)
    assert dl.data.load("moving_digits", **{**kw, "digits": 2})[1] is None
    with pytest.raises(ValueError, match="frames must be an integer >= 2"):
        dl.data.load("moving_digits", frames=1)
    cfg = TrainConfig.from_dict({
        "model": {"name": "video_unet", "kwargs": {**SMALL, "frames": 4, "image_size": 12, "num_classes": 10}},
        "diffusion": {"schedule": "cosine", "T": 100},
        "data": {"name": "moving_digits", "kwargs": kw},
        "sample": {"every": -1, "per_class": 1, "steps": 2}, "batch_size": 4, "steps": 2, "log_every": 1,
        "ckpt_every": 2, "device": "cpu",
    })
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train()
    grid = trainer.sample_grid(tmp_path / "grid.png")  # a clip a row (one per class), its 4 frames across
    from PIL import Image

    assert Image.open(grid).size == (4 * 12 + 5 * 2, 10 * 12 + 11 * 2)
    run = dl.load(tmp_path)
    assert isinstance(run.ema_model, VideoUNet)
    clip = run.sample(2, "ddim", 2, labels=[3, 7], guidance=2.0, seed=0)
    assert clip.shape == (2, 4, 1, 12, 12) and clip.abs().max() <= 1


def test_the_presets_take_their_data():
    model = perturb(video_unet_tiny(num_classes=10))
    x, t = clips(B=1, T=8, H=16, W=16)
    assert model(x, t, torch.tensor([4])).shape == (1, 8, 1, 16, 16)


def test_independent_prob_trains_some_clips_as_independent_frames():
    """In training mode each clip is, with probability independent_prob, computed as independent
    frames (exactly the masked network's output for it), else as a clip; eval mode and an explicit
    independent_frames leave the draw out."""
    model = perturb(small(independent_prob=0.5))
    x, t = clips(B=16)
    model.eval()
    coupled, masked = model(x, t), model(x, t, independent_frames=True)
    model.train()
    torch.manual_seed(0)
    out = model(x, t)
    as_masked = [torch.equal(out[i], masked[i]) for i in range(16)]
    as_coupled = [torch.equal(out[i], coupled[i]) for i in range(16)]
    assert all(m != c for m, c in zip(as_masked, as_coupled))  # each clip one or the other
    assert 3 <= sum(as_masked) <= 13  # (Binomial(16, 1/2): outside with probability 0.004)
    assert torch.equal(model(x, t, independent_frames=False), coupled)
    model.independent_prob = 1.0
    assert torch.equal(model(x, t), masked)
    model.eval()
    assert torch.equal(model(x, t), coupled)
    with pytest.raises(ValueError, match=r"independent_prob must be a probability in \[0, 1\]"):
        small(independent_prob=1.5)
