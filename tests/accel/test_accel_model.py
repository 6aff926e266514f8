"""The speed layer's wrapper, ``dl.accel.accelerate`` (:class:`difflab.accel.Accelerated`):
autocast, channels_last, torch.compile and CUDA graphs (per network call and per sampling run)
change how a model runs, never what it computes; the module swaps keep the state dict; the
user holds the wrapper and reuses it; ``dl.sample`` keeps numerics only.

CUDA graphs need a GPU: on the CPU, :class:`CPUCapture` replaces the three CUDA parts of
:class:`~difflab.accel.CapturedCall` with tests/graph_emulator.py (the capture records the aten
calls, a replay re-issues them on the same memory without any Python), and ``graphs_supported``
is patched to say yes; everything else is the real code. Tests marked for CUDA capture for real.
"""

import copy
import inspect
import io
import pickle

import pytest
import torch

import difflab as dl
from difflab.accel import model as model_mod
from difflab.accel import upsample as upsample_mod
from difflab.accel.channels import PaddedConv2d
from difflab.accel.graphs import CapturedCall, weights_fingerprint
from difflab.accel.group_norm import NHWCGroupNorm, TritonGroupNorm
from difflab.accel.upsample import FoldedUpResBlock, FoldedUpsample
from difflab.models.norm import GroupNorm
from difflab.models.unet import UNet
from graph_emulator import RecordedGraph

NET = dict(in_channels=3, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
           image_size=8, norm_groups=8)


def net(**kw) -> UNet:
    torch.manual_seed(0)
    model = UNet(**{**NET, **kw})
    with torch.no_grad():  # the zero-initialised output layers would make every sample trivial
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


def tiny(seed: int = 1, **kw) -> UNet:
    """dl.models.unet_tiny (1 channel, 8x8), every weight perturbed: a non-trivial function."""
    torch.manual_seed(0)
    model = dl.models.unet_tiny(**kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear())


@pytest.fixture
def noise():
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- dl.sample keeps numerics only

def test_sample_has_at_most_14_parameters():
    params = inspect.signature(dl.sample).parameters
    assert len(params) <= 14, list(params)
    assert not {"precision", "channels_last", "compile", "cuda_graph", "group_norm"} & set(params)


@pytest.mark.parametrize("keyword, value", [("precision", "bf16"), ("channels_last", True), ("compile", True),
                                            ("cuda_graph", "loop"), ("group_norm", "always")])
def test_the_old_speed_keywords_of_sample_name_accelerate(proc, keyword, value):
    model = dl.models.MLPDenoiser(2, width=16, depth=1)
    with pytest.raises(TypeError, match=r"dl\.accel\.accelerate\(model, ") as err:
        dl.sample(model, proc, (2, 2), "ddim", 2, **{keyword: value})
    assert f"{keyword}={value!r}" in str(err.value)  # the replacement call names what was given


# ---------------------------------------------------------------- module swaps

def test_accelerate_swaps_modules_and_keeps_the_state_dict(monkeypatch):
    """group_norm "always" and upsample "subpixel" swap module classes in place: the state dict
    keeps its keys (in order) and values, loads both ways into a plain network, and the swapped
    network computes the same function (the folded upsampling forced on at this size)."""
    model = tiny()
    plain = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = dl.accel.accelerate(model, channels_last=True, group_norm="always", upsample="subpixel")
    assert fast.module is model
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())  # values; 4-D weights now NHWC
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    norms = [m for m in model.modules() if isinstance(m, GroupNorm)]
    assert norms and all(type(m) is NHWCGroupNorm and m.when == "always" for m in norms)
    folded = [m for m in model.modules() if type(m) in (FoldedUpsample, FoldedUpResBlock)]
    assert folded and all(m.form == "subpixel" for m in folded)
    assert any(type(m) is PaddedConv2d for m in model.modules())  # the 1-channel convolutions
    fresh = dl.models.unet_tiny()
    fresh.load_state_dict(after, strict=True)
    model.load_state_dict(plain.state_dict(), strict=True)
    monkeypatch.setattr(upsample_mod, "FOLDED_MIN_WORK", 0)  # the sub-pixel form even at this size
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    with torch.no_grad():
        want, got = plain(x, t), fast(x, t)
    # float32 rounding: the folded weights are sums of taps, the NHWC norm sums in another order
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_module_swaps_keep_the_original_ddpm_options(monkeypatch):
    """A U-Net with the original DDPM code's options (freq_shift 1, downsample_padding 0; norm_eps
    0.5 so that a norm computed at 1e-5 would show) accelerated with every module swap on the CPU
    (NHWC norms, the sub-pixel upsampling forced at this size, channel-padded convolutions):
    the same function as the plain network."""
    monkeypatch.setattr(upsample_mod, "FOLDED_MIN_WORK", 0)
    options = dict(freq_shift=1, downsample_padding=0, norm_eps=0.5)
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 700])
    with torch.no_grad():
        want = net(**options)(x, t)
        assert (want - net()(x, t)).abs().max() > 1e-2  # (the options change the function)
        model = net(**options)
        fast = dl.accel.accelerate(model, channels_last=True, group_norm="always", upsample="subpixel")
        got = fast(x, t)
    assert {m.eps for m in model.modules() if isinstance(m, GroupNorm)} == {0.5}
    assert any(type(m) is FoldedUpsample for m in model.modules())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group_norm", ["always", "triton"])
def test_an_accelerated_model_copies_and_pickles(group_norm):
    """The swapped classes deep-copy, pickle and torch.save (the trainer's EMA copies its model):
    the copy has the same classes, state dict and outputs. (The Triton norms held the module of
    kernels, which neither pickles nor copies; they import it again.)"""
    if group_norm == "triton":
        pytest.importorskip("triton")
    model = tiny()
    fast = dl.accel.accelerate(model, channels_last=True, group_norm=group_norm, upsample="subpixel")
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, 500])
    with torch.no_grad():
        want = fast(x, t)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buf, weights_only=False)]
    for clone in copies:
        assert [type(m) for m in clone.modules()] == [type(m) for m in model.modules()]
        assert list(clone.state_dict()) == list(model.state_dict())
        if group_norm == "triton":
            norm = next(m for m in clone.modules() if isinstance(m, TritonGroupNorm))
            assert norm.kernels is not None and norm.interpreted == norm.kernels.interpreted()
        with torch.no_grad():
            assert torch.equal(dl.accel.accelerate(clone, channels_last=True)(x, t), want)
    wrapper = copy.deepcopy(fast)  # the wrapper too (uncompiled): its network is the copy's
    assert wrapper.module is not model and wrapper._fn is wrapper.module
    with torch.no_grad():
        assert torch.equal(wrapper(x, t), want)


# ---------------------------------------------------------------- the same function

def test_channels_last_sampling_is_the_same_function(proc, noise):
    """channels_last changes the memory order, not the function. Not bit for bit on the CPU:
    torch's CPU GroupNorm kernel for NHWC input and oneDNN's NHWC convolutions (32 channels here)
    accumulate in another order than their NCHW kernels, a few float32 ulps per call (checked
    below); over 8 DDIM steps that stays near 1e-5. The wrapper adds nothing else: the result is
    handed back contiguous, the weights are converted once, in place, the state dict unchanged."""
    model = net()
    keys = list(model.state_dict())
    ref = dl.sample(net(), proc, noise.shape, "ddim", 8, noise=noise, clip_x0=1.0)
    fast = dl.accel.accelerate(model, channels_last=True)
    out = dl.sample(fast, proc, noise.shape, "ddim", 8, noise=noise, clip_x0=1.0)
    assert ref.abs().max() > 0.1  # a non-trivial sample
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert out.is_contiguous()  # handed back in the usual layout
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # converted once, in place
    assert list(model.state_dict()) == keys
    t = torch.full((4,), 500)
    with torch.no_grad():  # one call: a few ulps of the output's scale
        one, ref_one = fast(noise, t), net()(noise, t)
    assert float((one - ref_one).abs().max()) <= 64 * torch.finfo(torch.float32).eps * float(ref_one.abs().max())
    # a multistep solver keeps earlier outputs: they must not be overwritten by later calls
    ref2 = dl.sample(net(), proc, noise.shape, "dpmpp_2m", 6, noise=noise, clip_x0=1.0)
    out2 = dl.sample(fast, proc, noise.shape, "dpmpp_2m", 6, noise=noise, clip_x0=1.0)
    torch.testing.assert_close(out2, ref2, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_sampling_is_close_and_float32(proc, noise):
    model = net()
    ref = dl.sample(model, proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0)
    fast = dl.accel.accelerate(model, precision="bf16")
    assert fast.dtype == torch.float32
    out = dl.sample(fast, proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0)
    assert out.dtype == torch.float32
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05, rel  # bf16 rounding: different, but close
    x, t = noise, torch.full((4,), 500)
    with torch.no_grad():
        one, ref_one = fast(x, t), model(x, t)
    assert one.dtype == torch.float32
    rel = float((one - ref_one).norm() / ref_one.norm())
    assert 0 < rel < 0.02, rel  # one network call: bf16's 8-bit mantissa


def test_a_bf16_model_under_autocast_keeps_a_float32_state(proc, noise):
    """A network stored in bf16 (half the weights' memory, no weight casts in each forward) with
    precision="bf16": the network computes as under autocast, while the sampler's state -- its
    updates over the steps -- stays float32 (``Accelerated.dtype``). So the samples are exactly
    those of the float32 network with the same (bf16-rounded) weights under autocast, and close
    to the float32 run; the plain bf16 model keeps a bf16 state."""
    ref = dl.sample(net(), proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0)
    model = net().to(torch.bfloat16)
    fast = dl.accel.accelerate(model, precision="bf16")
    assert fast.dtype == torch.float32 and dl.accel.accelerate(model).dtype == torch.bfloat16
    outs = {}
    for precision, m in (("bf16", fast), (None, model)):
        outs[precision] = out = dl.sample(m, proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0)
        assert out.dtype == (torch.float32 if precision else torch.bfloat16)
        drawn = dl.sample(m, proc, noise.shape, "ddim", 2, generator=torch.Generator().manual_seed(0))
        assert drawn.dtype == out.dtype  # noise drawn here is the state's dtype too
    rounded = net().to(torch.bfloat16).float()  # the same weights, stored in float32
    autocast = dl.sample(dl.accel.accelerate(rounded, precision="bf16"), proc, noise.shape, "ddim", 5, noise=noise,
                         clip_x0=1.0)
    assert torch.equal(outs["bf16"], autocast)
    rel = float((outs["bf16"] - ref).norm() / ref.norm())
    assert 0 < rel < 0.05, rel
    assert not torch.equal(outs[None].float(), outs["bf16"])  # a bf16 state rounds every update


def test_guided_sampling_through_the_wrapper(proc):
    model = net(num_classes=3)
    cond = torch.tensor([0, 1, 2, 1])
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(noise=x, cond=cond, guidance=2.5, clip_x0=1.0)
    ref = dl.sample(model, proc, x.shape, "ddim", 4, **kw)
    fast = dl.accel.accelerate(model, channels_last=True)
    assert fast.num_classes == 3  # the null label is found
    out = dl.sample(fast, proc, x.shape, "ddim", 4, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)  # w = 2.5 amplifies rounding


def test_compiled_network_is_kept_and_reused(proc):
    """The wrapper holds the compiled network: a second run (and a second sampler) reuses it."""
    compilations = []

    def backend(gm, example_inputs):  # counts what torch.compile hands to a backend
        compilations.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = dl.models.MLPDenoiser(dim=2)
    x = torch.randn(16, 2)
    ref = dl.sample(model, proc, x.shape, "ddim", 4, noise=x)
    fast = dl.accel.accelerate(model, compile={"backend": backend, "dynamic": False})
    first = dl.sample(fast, proc, x.shape, "ddim", 4, noise=x)
    n = len(compilations)
    second = dl.sample(fast, proc, x.shape, "ddim", 4, noise=x)
    third = dl.sample(fast, proc, x.shape, "dpmpp_2m", 4, noise=x, spacing="trailing")  # integer t again
    torch._dynamo.reset()
    assert n >= 1 and len(compilations) == n  # the later runs reuse the compiled network
    torch.testing.assert_close(first, ref)
    torch.testing.assert_close(second, ref)
    torch.testing.assert_close(third, dl.sample(model, proc, x.shape, "dpmpp_2m", 4, noise=x, spacing="trailing"))
    assert fast.module is model and fast.compile_kwargs == {"backend": backend, "dynamic": False}


def test_one_compiled_wrapper_serves_sample_invert_inpaint_and_img2img():
    """``compile=True`` (Inductor, on the CPU) for dl.sample, dl.invert, dl.editing.inpaint and
    dl.editing.img2img: one wrapper, one compilation (the same input signature throughout: batch
    2, integer timesteps -- img2img's strength 0.5 of T = 101 starts on the grid), and each
    output the plain model's. Tolerance: Inductor fuses the float32 pointwise ops and reorders
    reductions (GroupNorm statistics, softmax), so each call agrees to ~1e-6 of the output's
    scale; the runs chain at most 6 calls (measured: <= 2e-6 relative); 1e-4 leaves a margin."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    proc = dl.GaussianDiffusion(dl.schedules.linear(101))
    model = tiny()
    fast = dl.accel.accelerate(tiny(), compile=True)  # the same weights
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    x_T = torch.randn(2, 1, 8, 8, generator=g)
    mask = dl.editing.parse_mask("half:bottom", (8, 8))
    runs = {
        "sample": lambda m: dl.sample(m, proc, (2, 1, 8, 8), "ddim", 4, noise=x_T),
        "invert": lambda m: dl.invert(m, proc, images, steps=4),
        "inpaint": lambda m: dl.editing.inpaint(m, proc, images, mask, "ddpm", 4,
                                                generator=torch.Generator().manual_seed(5)),
        "img2img": lambda m: dl.editing.img2img(m, proc, images, strength=0.5, steps=6,
                                                generator=torch.Generator().manual_seed(6)),
    }
    for name, run in runs.items():
        want, got = run(model), run(fast)
        scale = float(want.abs().max())
        assert scale > 0.1, name
        assert float((got - want).abs().max()) <= 1e-4 * scale, name
    assert counters["stats"]["unique_graphs"] == 1  # compiled once, reused by every call
    torch._dynamo.reset()


# ---------------------------------------------------------------- refusals

def test_bad_speed_options_are_named(proc, noise):
    model = net()
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA inputs"):
        dl.sample(dl.accel.accelerate(model, cuda_graph=True), proc, noise.shape, noise=noise)
    with pytest.raises(ValueError, match="precision must be one of"):
        dl.accel.accelerate(model, precision="int8")
    with pytest.raises(ValueError, match=r"precision must be one of None, 'fp32', 'bf16', 'fp16', got \['bf16'\]"):
        dl.accel.accelerate(model, precision=["bf16"])  # not 'unhashable type'
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        dl.accel.accelerate(model, channels_last="yes")
    with pytest.raises(TypeError, match="compile must be"):
        dl.accel.accelerate(model, compile=3)
    with pytest.raises(ValueError, match=r"False, True .*'loop'"):
        dl.accel.accelerate(model, cuda_graph="yes")
    for mode in ("reduce-overhead", "max-autotune"):
        for cuda_graph in (True, "loop"):
            with pytest.raises(ValueError, match=f"'{mode}' captures CUDA graphs itself.*max-autotune-no-cudagraphs"):
                dl.accel.accelerate(model, compile=mode, cuda_graph=cuda_graph)
    with pytest.raises(ValueError, match="group_norm must be one of"):
        dl.accel.accelerate(model, group_norm="sometimes")
    with pytest.raises(ValueError, match="pass channels_last=True with it"):
        dl.accel.accelerate(model, group_norm="triton")
    with pytest.raises(ValueError, match="upsample .* must be one of transposed, subpixel, plain"):
        dl.accel.accelerate(model, channels_last=True, upsample="bilinear")
    assert all(p.is_contiguous() for p in model.parameters())  # refused before the weights were converted
    with pytest.raises(TypeError, match="callable"):
        dl.accel.accelerate(42)
    with pytest.raises(ValueError, match="this network is float64"):
        dl.accel.accelerate(dl.models.MLPDenoiser(2, width=16, depth=1).double(), precision="bf16")
    fast = dl.accel.accelerate(model, precision="bf16")
    with pytest.raises(ValueError, match=r"already accelerated \(precision=bf16.*pass its \.module"):
        dl.accel.accelerate(fast, precision="fp16")


def test_no_host_reads_of_device_values_in_the_loss_and_the_sampler(proc):
    """On the meta device tensors have no values: anything that reads one on the host (an
    ``if tensor:``, ``.item()``, a range check) fails there -- on a GPU it would be a sync."""
    with torch.device("meta"):
        model = UNet(**NET)
        x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
        t = torch.randint(0, proc.T, (4,))
    loss = dl.training.DiffusionLoss(proc)(model, dl.training.TrainBatch(
        x0=x0, cond=None, labels=None, t=t, noise=noise, u=torch.rand(4, device="meta"), step=0, index=t))
    loss.backward()
    assert loss.device.type == "meta"
    for m in (model, dl.accel.accelerate(model, channels_last=True)):
        x = dl.sample(m, proc, (4, 3, 8, 8), "ddim", 3, device="meta", clip_x0=1.0)
        assert x.device.type == "meta" and x.shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="t must lie in"):  # on the CPU the range is still checked
        proc.q_sample(torch.zeros(2, 3), torch.tensor([0, proc.T]))


# ---------------------------------------------------------------- CUDA graphs, emulated on the CPU

class CPUCapture(CapturedCall):
    """CapturedCall with its CUDA parts replaced by the CPU stand-in of tests/graph_emulator.py:
    the capture records the run's aten calls, a replay re-issues them without any of its Python.
    (Not strict: the samplers read their noise levels, a CPU tensor, on the host, which a GPU
    capture allows; that the run reads no device value is test_no_host_reads_..., on the meta
    device.)"""

    captures = 0

    def _warm_up(self, n):
        with torch.random.fork_rng():  # as the real warm-up: its random draws are given back
            for _ in range(n):
                self.fn(*self.inputs)

    def _capture(self):
        type(self).captures += 1
        self.recorded = RecordedGraph(strict=False)
        with torch.random.fork_rng():  # a CUDA capture records its draws without making them
            self.out = self.recorded.capture(lambda: self.fn(*self.inputs))

    def _replay(self):
        self.recorded.replay()


@pytest.fixture
def cpu_capture(monkeypatch):
    monkeypatch.setattr(model_mod, "graphs_supported", lambda device: True)
    monkeypatch.setattr(model_mod, "CapturedCall", CPUCapture)
    CPUCapture.captures = 0


def test_per_call_graphs_are_captured_once_per_input_signature(proc, cpu_capture):
    """cuda_graph=True: each network call captured once per signature (shapes, dtypes, strides,
    the label tensor), replayed for every later call with it; outputs are copies, so a multistep
    solver's earlier outputs survive later replays."""
    model = net(num_classes=3)
    fast = dl.accel.accelerate(model, cuda_graph=True)
    g = torch.Generator().manual_seed(9)
    x4, x2 = torch.randn(4, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    for sampler in ("ddim", "dpmpp_2m", "ddim"):  # (trailing spacing: integer timesteps for both)
        want = dl.sample(model, proc, x4.shape, sampler, 4, noise=x4, spacing="trailing")
        got = dl.sample(fast, proc, x4.shape, sampler, 4, noise=x4, spacing="trailing")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert CPUCapture.captures == 1 and len(fast._calls) == 1  # one signature for both samplers
    dl.sample(fast, proc, x2.shape, "ddim", 3, noise=x2)
    assert CPUCapture.captures == 2  # another batch size
    cond = torch.tensor([0, 2])
    for _ in range(2):
        want = dl.sample(model, proc, x2.shape, "ddim", 3, noise=x2, cond=cond, guidance=2.0)
        got = dl.sample(fast, proc, x2.shape, "ddim", 3, noise=x2, cond=cond, guidance=2.0)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert CPUCapture.captures == 3  # labels (guidance doubles the batch): one more, replayed after
    fast.release()
    assert not fast._calls


def test_graphs_of_moved_weights_are_captured_anew(proc, cpu_capture):
    """A replay reads the weights where they were at capture: updates in place (an optimizer,
    EMA, load_state_dict) are seen by the same graphs; weights moved to new tensors
    (load_state_dict(assign=True), model.to(...), channels_last from another wrapper) make the
    wrapper capture again instead of replaying the old memory."""
    model = net()
    fast = dl.accel.accelerate(model, cuda_graph=True)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10))

    def check(captures):
        want = dl.sample(model, proc, x.shape, "ddim", 3, noise=x)
        got = dl.sample(fast, proc, x.shape, "ddim", 3, noise=x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert CPUCapture.captures == captures and len(fast._calls) == 1

    check(1)
    assert fast._weights == weights_fingerprint(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    check(1)  # in place: the same graph, reading the new values
    old = [p.data for p in model.parameters()]  # kept alive: the new tensors cannot reuse their memory
    model.load_state_dict({k: 1.1 * v for k, v in model.state_dict().items()}, assign=True)
    check(2)
    dl.accel.accelerate(model, channels_last=True)  # another wrapper moves the 4-D weights to NHWC tensors
    check(3)
    assert old


@pytest.mark.parametrize("sampler,kw", [("ddim", {}), ("dpmpp_2m", {}), ("heun", {}),
                                        ("ddim", {"channels_last": True, "clip_x0": 1.0})])
def test_a_captured_run_replays_the_run(proc, cpu_capture, sampler, kw):
    """cuda_graph="loop": the whole run captured once, then replayed for new noise and labels;
    each replay equals the uncaptured run on the same inputs, with classifier-free guidance."""
    model = net(num_classes=3)
    channels_last = kw.pop("channels_last", False)
    plain = dl.accel.accelerate(model, channels_last=channels_last)
    fast = dl.accel.accelerate(model, channels_last=channels_last, cuda_graph="loop")
    g = torch.Generator().manual_seed(2)
    runs = [(torch.randn(4, 3, 8, 8, generator=g), torch.tensor(c)) for c in ([0, 1, 2, 1], [2, 2, 0, 1])]
    for noise_, cond in runs:
        ref = dl.sample(plain, proc, (4, 3, 8, 8), sampler, 4, noise=noise_, cond=cond, guidance=2.0, **kw)
        got = dl.sample(fast, proc, (4, 3, 8, 8), sampler, 4, noise=noise_, cond=cond, guidance=2.0, **kw)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert got.is_contiguous()
    assert CPUCapture.captures == 1  # the second run replayed the first one's capture
    dl.sample(fast, proc, (4, 3, 8, 8), sampler, 3, noise=runs[0][0], cond=runs[0][1], guidance=2.0, **kw)
    assert CPUCapture.captures == 2  # another number of steps is another run
    fast.release()
    assert not fast._runs


def test_a_captured_run_around_a_compiled_network(proc, cpu_capture):
    """torch.compile inside a whole-run capture: the warm-up compiles (no compilation may happen
    inside a capture), the capture records the run, and replays give the uncompiled run's
    samples. (Inductor on the CPU: the network and signature of the editing test above, so the
    compilation is a cache hit there; the GPU's candidate adds Inductor's freezing, an option
    passed through to torch.compile as it is.)"""
    torch._dynamo.reset()  # earlier tests' compilations of UNet.forward count toward the recompile limit
    model = tiny()
    fast = dl.accel.accelerate(model, compile=True, cuda_graph="loop")
    for seed in (6, 7):
        x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        want = dl.sample(model, proc, x_T.shape, "ddim", 3, noise=x_T, clip_x0=1.0)
        got = dl.sample(fast, proc, x_T.shape, "ddim", 3, noise=x_T, clip_x0=1.0)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # Inductor's float32 reorderings
    assert CPUCapture.captures == 1
    torch._dynamo.reset()


def test_a_captured_run_of_a_model_converted_to_bf16_is_captured_anew(proc, cpu_capture):
    """Under precision="bf16" the state is float32 for a float32 and a bf16 model alike, so the
    run's key alone cannot tell them apart: the weights' fingerprint (addresses and dtypes) does,
    and after model.to(torch.bfloat16) the run is captured again (a replay of the old capture
    would read the float32 weights)."""
    model = net()
    fast = dl.accel.accelerate(model, precision="bf16", cuda_graph="loop")
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    dl.sample(fast, proc, x_T.shape, "ddim", 3, noise=x_T)
    model.to(torch.bfloat16)
    want = dl.sample(dl.accel.accelerate(model, precision="bf16"), proc, x_T.shape, "ddim", 3, noise=x_T)
    got = dl.sample(fast, proc, x_T.shape, "ddim", 3, noise=x_T)
    assert CPUCapture.captures == 2
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # weights moved without a change of dtype (a round trip; load_state_dict(assign=True)): the
    # captures of the old tensors are dropped, not replayed
    old = [p.data for p in model.parameters()]  # kept alive: the new tensors cannot reuse their memory
    model.to(torch.float32).to(torch.bfloat16)
    got = dl.sample(fast, proc, x_T.shape, "ddim", 3, noise=x_T)
    assert CPUCapture.captures == 3 and len(fast._runs) == 1 and old
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_captured_stochastic_run_draws_new_noise_each_replay(proc, cpu_capture):
    """DDPM (and DDIM with eta > 0) captured whole draw their noise inside the graph from the
    default generator: two replays from the same x_T differ (as two uncaptured runs would)."""
    fast = dl.accel.accelerate(net(), cuda_graph="loop")
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    a = dl.sample(fast, proc, x_T.shape, "ddpm", 4, noise=x_T)
    b = dl.sample(fast, proc, x_T.shape, "ddpm", 4, noise=x_T)
    assert CPUCapture.captures == 1 and not torch.allclose(a, b)


def test_a_captured_stochastic_run_is_the_seeded_run(proc, cpu_capture):
    """Seeded alike, the first replay of a captured DDPM run draws what an uncaptured run draws
    (the warm-up's draws are given back), and so does a later one."""
    model = net()
    fast = dl.accel.accelerate(model, cuda_graph="loop")
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    for _ in range(2):
        torch.manual_seed(7)
        want = dl.sample(model, proc, x_T.shape, "ddpm", 4, noise=x_T)
        torch.manual_seed(7)
        got = dl.sample(fast, proc, x_T.shape, "ddpm", 4, noise=x_T)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert CPUCapture.captures == 1


def test_a_captured_run_is_keyed_by_everything_that_shapes_it(cpu_capture):
    """Another process (here v-prediction instead of eps on the same schedule) is another run;
    a plain function model, accelerated, keeps its runs too (captured once for two calls)."""
    model = net()
    fast = dl.accel.accelerate(model, cuda_graph="loop")
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for prediction in ("eps", "v", "eps"):
        p = dl.GaussianDiffusion(dl.schedules.linear(), prediction=prediction)
        want = dl.sample(model, p, x_T.shape, "ddim", 3, noise=x_T)
        got = dl.sample(fast, p, x_T.shape, "ddim", 3, noise=x_T)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert CPUCapture.captures == 2 and len(fast._runs) == 2

    def shrink(x, t):  # an analytic eps-model: no parameters
        return 0.5 * x

    p = dl.GaussianDiffusion(dl.schedules.linear())
    fast_fn = dl.accel.accelerate(shrink, cuda_graph="loop")
    assert fast_fn.dtype is None and fast_fn._weights is None
    for _ in range(2):
        got = dl.sample(fast_fn, p, x_T.shape, "ddim", 3, noise=x_T)
    torch.testing.assert_close(got, dl.sample(shrink, p, x_T.shape, "ddim", 3, noise=x_T), rtol=1e-6, atol=1e-6)
    assert CPUCapture.captures == 3
    fast_fn.release()
    assert not fast_fn._runs and len(fast._runs) == 2  # each wrapper holds its own


def test_a_captured_run_refuses_what_it_cannot_replay(proc, noise, cpu_capture):
    fast = dl.accel.accelerate(net(), cuda_graph="loop")
    for kw, words in (({"callback": lambda step: None}, ["callback", "cuda_graph=True"]),
                      ({"sampler": "ddpm", "generator": torch.Generator()}, ["'ddpm'", "torch.manual_seed"]),
                      ({"eta": 0.5, "generator": torch.Generator()}, ["'ddim'", "default generator"])):
        kw = {"sampler": "ddim", **kw}
        with pytest.raises(ValueError) as err:
            dl.sample(fast, proc, noise.shape, steps=3, noise=noise, **kw)
        assert all(w in str(err.value) for w in words), str(err.value)
    # a non-numeric option is the sampler's to refuse, not the capture's
    with pytest.raises((ValueError, TypeError)) as err:
        dl.sample(fast, proc, noise.shape, "euler", 3, noise=noise, s_churn="lots", generator=torch.Generator())
    assert "default generator" not in str(err.value)
    assert CPUCapture.captures == 0
    # a deterministic run may name a generator: it only draws x_T, before the captured run
    dl.sample(fast, proc, noise.shape, "ddim", 3, generator=torch.Generator().manual_seed(0))
    assert CPUCapture.captures == 1


def test_captured_graphs_need_cuda(proc, noise):
    model = net()
    with pytest.raises(ValueError, match="'loop' needs a CUDA device"):
        dl.sample(dl.accel.accelerate(model, cuda_graph="loop"), proc, noise.shape, "ddim", 3, noise=noise,
                  device="cpu")
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA inputs, got x on cpu"):
        dl.sample(dl.accel.accelerate(model, cuda_graph=True), proc, noise.shape, "ddim", 3, noise=noise)


def test_one_graph_stream_per_device(monkeypatch):
    """difflab warms up and captures every CUDA graph on one side stream per device: cuBLAS
    holds a 32 MiB workspace (Hopper) per stream it ran on, for the life of the process, so a
    stream per sampler or trainer would keep one more each (measured: 34 MiB after every sampling
    benchmark row). Checked here with a stand-in stream class; on a GPU the next test measures."""
    from difflab import devices

    made = []

    class FakeStream:
        def __init__(self, device):
            made.append(device)

    monkeypatch.setattr(devices, "_GRAPH_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    a = devices.graph_stream("cuda")
    assert devices.graph_stream("cuda:0") is a and devices.graph_stream(torch.device("cuda", 0)) is a
    assert devices.graph_stream("cuda:1") is not a and len(made) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and cuBLAS workspaces need a GPU")
def test_graphs_released_leave_no_memory_behind():
    """Sampling with CUDA graphs, then releasing them, gives the memory back: two rounds of a
    fresh model's captured sampler leave no more allocated than one (no workspace or graph pool
    held per graph)."""
    proc = dl.GaussianDiffusion(dl.schedules.linear())
    after = []
    for _ in range(3):
        fast = dl.accel.accelerate(net().cuda(), cuda_graph=True)
        dl.sample(fast, proc, (4, 3, 8, 8), "ddim", 3, device="cuda")
        assert len(fast._calls) == 1
        fast.release()
        del fast
        torch.cuda.synchronize()
        after.append(torch.cuda.memory_allocated())
    assert after[2] - after[1] < 2**20, after  # the first round may allocate process-wide state once


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captures a real CUDA graph")
def test_a_captured_run_matches_per_call_graphs_on_the_gpu(proc):
    """On a GPU, the whole run as one graph gives the samples of per-call graphs."""
    model = net(num_classes=3).cuda()
    x_T = torch.randn(4, 3, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    cond = torch.tensor([0, 1, 2, 1], device="cuda")
    kw = dict(noise=x_T, cond=cond, guidance=2.0, clip_x0=1.0)
    per_call = dl.accel.accelerate(model, precision="bf16", channels_last=True, cuda_graph=True)
    whole = dl.accel.accelerate(model, precision="bf16", channels_last=True, cuda_graph="loop")
    want = dl.sample(per_call, proc, x_T.shape, "ddim", 5, **kw)
    for _ in range(2):
        got = dl.sample(whole, proc, x_T.shape, "ddim", 5, **kw)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    assert len(whole._runs) == 1 and len(per_call._calls) == 1
    per_call.release()
    whole.release()


def test_a_labelled_function_keeps_its_labels_once_accelerated():
    """A plain function has no num_classes to check labels against; the wrapper must not invent
    one (None would call it unconditional and refuse its labels)."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))

    def f(x, t, cond):
        return 0.1 * x + cond.float().view(-1, 1)

    labels, noise = torch.tensor([0, 1]), torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    want = dl.sample(f, proc, (2, 2), "ddim", 3, cond=labels, noise=noise)
    fast = dl.accel.accelerate(f)
    assert not hasattr(fast, "num_classes")
    torch.testing.assert_close(dl.sample(fast, proc, (2, 2), "ddim", 3, cond=labels, noise=noise), want)
