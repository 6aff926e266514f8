"""Speed options that must not change the maths: dl.sample's precision / channels_last /
compile / cuda_graph (samplers/fast.py), the trainer's public step, and the absence of
host-side reads of device values in the step and sampling loops (no host-device syncs)."""

import copy
import io
import pickle

import pytest
import torch

import difflab as dl
from difflab.models.unet import UNet
from difflab.samplers import fast as fast_mod
from difflab.samplers.fast import FastModel, fast_model, release
from graph_emulator import RecordedGraph
from difflab.training import Trainer, TrainConfig
from difflab.training.config import DiffusionConfig, ModelConfig, SampleConfig

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


@pytest.fixture
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear())


@pytest.fixture
def noise():
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_channels_last_sampling_is_the_same_function(proc, noise):
    model = net()
    keys = list(model.state_dict())
    ref = dl.sample(model, proc, noise.shape, "ddim", 8, noise=noise, clip_x0=1.0)
    out = dl.sample(model, proc, noise.shape, "ddim", 8, noise=noise, clip_x0=1.0, channels_last=True)
    assert ref.abs().max() > 0.1  # a non-trivial sample
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert out.is_contiguous()  # handed back in the usual layout
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # converted once, in place
    assert list(model.state_dict()) == keys  # the cache is no part of the model's state
    # a multistep solver keeps earlier outputs: they must not be overwritten by later calls
    ref2 = dl.sample(net(), proc, noise.shape, "dpmpp_2m", 6, noise=noise, clip_x0=1.0)
    out2 = dl.sample(model, proc, noise.shape, "dpmpp_2m", 6, noise=noise, clip_x0=1.0, channels_last=True)
    torch.testing.assert_close(out2, ref2, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_sampling_is_close_and_float32(proc, noise):
    model = net()
    ref = dl.sample(model, proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0)
    out = dl.sample(model, proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0, precision="bf16")
    assert out.dtype == torch.float32
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05, rel  # bf16 rounding: different, but close
    x, t = noise, torch.full((4,), 500)
    with torch.no_grad():
        one, ref_one = FastModel(model, precision="bf16")(x, t), model(x, t)
    assert one.dtype == torch.float32
    rel = float((one - ref_one).norm() / ref_one.norm())
    assert 0 < rel < 0.02, rel  # one network call: bf16's 8-bit mantissa


def test_a_bf16_model_under_autocast_keeps_a_float32_state(proc, noise):
    """A network stored in bf16 (half the weights' memory, no weight casts in each forward) with
    precision="bf16": the network computes as under autocast, while the sampler's state -- its
    updates over the steps -- stays float32. So the samples are exactly those of the float32
    network with the same (bf16-rounded) weights under autocast, and close to the float32 run;
    without precision the state is the model's bf16.

    (It compared the two states' distances to the float32 run; which is nearer is noise for this
    small network over a few steps. It held only while the bf16 model's time embedding was
    degraded by bf16 frequencies, fixed since.)"""
    ref = dl.sample(net(), proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0)
    model = net().to(torch.bfloat16)
    outs = {}
    for precision in ("bf16", None):
        outs[precision] = out = dl.sample(model, proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0,
                                          precision=precision)
        assert out.dtype == (torch.float32 if precision else torch.bfloat16)
        drawn = dl.sample(model, proc, noise.shape, "ddim", 2, precision=precision,
                          generator=torch.Generator().manual_seed(0))
        assert drawn.dtype == out.dtype  # noise drawn here is the state's dtype too
    rounded = net().to(torch.bfloat16).float()  # the same weights, stored in float32
    autocast = dl.sample(rounded, proc, noise.shape, "ddim", 5, noise=noise, clip_x0=1.0, precision="bf16")
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
    out = dl.sample(model, proc, x.shape, "ddim", 4, channels_last=True, **kw)
    assert fast_model(model, channels_last=True).num_classes == 3  # the null label is found
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)  # w = 2.5 amplifies rounding


def test_compiled_network_is_kept_and_reused(proc):
    compilations = []

    def backend(gm, example_inputs):  # counts what torch.compile hands to a backend
        compilations.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model = dl.models.MLPDenoiser(dim=2)
    x = torch.randn(16, 2)
    ref = dl.sample(model, proc, x.shape, "ddim", 4, noise=x)
    opts = dict(compile={"backend": backend, "dynamic": False})
    first = dl.sample(model, proc, x.shape, "ddim", 4, noise=x, **opts)
    n = len(compilations)
    second = dl.sample(model, proc, x.shape, "ddim", 4, noise=x, **opts)
    torch._dynamo.reset()
    assert n >= 1 and len(compilations) == n  # the second call reuses the compiled network
    torch.testing.assert_close(first, ref)
    torch.testing.assert_close(second, ref)
    assert fast_model(model, **opts) is fast_model(model, **opts)
    assert fast_model(model) is model  # no option: the model itself
    release(model)
    assert fast_model(model, **opts) is not first  # a fresh wrapper after release


def test_copies_and_pickles_of_a_model_drop_the_wrappers(proc, noise):
    model = net()
    dl.sample(model, proc, noise.shape, "ddim", 2, noise=noise, channels_last=True)
    clone = copy.deepcopy(model)
    assert not getattr(clone, "_difflab_fast_models")
    buf = io.BytesIO()
    torch.save(model, buf)
    pickle.loads(pickle.dumps(model))
    assert isinstance(fast_model(model, channels_last=True), FastModel)


def test_converting_the_weights_drops_graphs_of_the_old_ones():
    model = net()
    plain = fast_model(model, precision="bf16")
    plain._graphs["stale"] = object()  # stands for a CUDA graph that reads the NCHW weights
    fast_model(model, channels_last=True)  # moves the 4-D weights to new (NHWC) tensors
    assert not plain._graphs


def test_bad_speed_options_are_named(proc, noise):
    model = net()
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        dl.sample(model, proc, noise.shape, noise=noise, cuda_graph=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        dl.sample(model, proc, noise.shape, noise=noise, precision="int8")
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        dl.sample(model, proc, noise.shape, noise=noise, channels_last="yes")
    with pytest.raises(TypeError, match="compile must be"):
        dl.sample(model, proc, noise.shape, noise=noise, compile=3)
    with pytest.raises(ValueError, match="captures CUDA graphs itself"):
        FastModel(model, compile="reduce-overhead", cuda_graph=True)
    with pytest.raises(TypeError, match="callable"):
        FastModel(42)


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
    for kw in ({}, {"channels_last": True}):
        x = dl.sample(model, proc, (4, 3, 8, 8), "ddim", 3, device="meta", clip_x0=1.0, **kw)
        assert x.device.type == "meta" and x.shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="t must lie in"):  # on the CPU the range is still checked
        proc.q_sample(torch.zeros(2, 3), torch.tensor([0, proc.T]))


def test_train_step_is_the_loops_step(tmp_path):
    cfg = TrainConfig(model=ModelConfig(name="unet", kwargs=dict(NET, dropout=0.0)),
                      diffusion=DiffusionConfig(T=100), sample=SampleConfig(every=-1),
                      batch_size=4, steps=1, log_every=1, tensorboard=False, device="cpu", cpu_threads=1)
    data = (torch.rand(16, 3, 8, 8) * 2 - 1, None)
    a = Trainer(cfg, tmp_path / "a", data=data, progress=False)
    loss, grad_norm = a.train_step()
    assert a.step == 0 and loss.ndim == 0 and grad_norm > 0  # the run did not advance
    b = Trainer(cfg, tmp_path / "b", data=data, progress=False)
    b.train()
    assert b.history[0]["loss"] == pytest.approx(float(loss), rel=1e-6)
    torch.testing.assert_close(dict(a.ema.model.named_parameters()), dict(b.ema.model.named_parameters()))


@pytest.mark.parametrize("mode", ["step", "model"])
def test_compiled_train_step_is_one_graph_compiled_once(tmp_path, mode):
    """The trainer's ``compile`` on a tiny class-conditional U-Net, traced with backend
    "aot_eager" (no C++ compiler needed): ``fullgraph=True`` makes any graph break an error,
    dynamo's error_on_recompile any recompilation after the first step (the coefficient tables
    are cached on the device before compiling; a range check on the timesteps or labels inside
    the traced step would split the graph), and the losses equal the eager step's."""
    import torch._dynamo

    torch._dynamo.reset()
    cfg = TrainConfig(model=ModelConfig(name="unet", kwargs=dict(NET, dropout=0.0, num_classes=3)),
                      diffusion=DiffusionConfig(T=100), sample=SampleConfig(every=-1), cond_drop_prob=0.5,
                      batch_size=4, steps=1, tensorboard=False, device="cpu", cpu_threads=1)
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(16, 3, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (16,), generator=g))
    eager = Trainer(cfg, tmp_path / "eager", data=data, progress=False)
    compiled = Trainer(cfg.replace(compile=mode, compile_options={"backend": "aot_eager", "fullgraph": True}),
                       tmp_path / "compiled", data=data, progress=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for s in range(3):
            ref, _ = eager.train_step(s)
            out, _ = compiled.train_step(s)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_activation_memory_budget_keeps_fewer_activations_and_the_same_loss(tmp_path, capsys):
    """``activation_memory_budget`` reaches torch's min-cut partitioner when the step is first
    compiled: a forward compiled under a budget of 0.1 hands the backward fewer bytes than the
    default, and the loss is the same (recomputation changes memory, not the function). A
    probe backend (AOT autograd with the min-cut partitioner, no code generation) measures the
    bytes the forward graph outputs for the backward; a run that does not compile notes that
    the budget is unused."""
    import torch._dynamo
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    forward_out_bytes = []

    def fw(gm, inputs):
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        vals = [getattr(a, "meta", {}).get("val") for a in outputs]
        forward_out_bytes.append(sum(v.numel() * v.element_size() for v in vals if isinstance(v, torch.Tensor)))
        return make_boxed_func(gm)

    backend = aot_autograd(fw_compiler=fw, bw_compiler=lambda gm, _: make_boxed_func(gm),
                           partition_fn=min_cut_rematerialization_partition)
    cfg = TrainConfig(model=ModelConfig(name="unet", kwargs=dict(NET, dropout=0.0)), diffusion=DiffusionConfig(T=100),
                      sample=SampleConfig(every=-1), batch_size=4, steps=1, tensorboard=False, device="cpu",
                      cpu_threads=1, compile="step", compile_options={"backend": "difflab_test_probe"})
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(16, 3, 8, 8, generator=g) * 2 - 1, None)
    if "difflab_test_probe" not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(backend, name="difflab_test_probe")
    kept, losses = {}, {}
    for budget in (None, 0.1):
        torch._dynamo.reset()
        forward_out_bytes.clear()
        trainer = Trainer(cfg.replace(activation_memory_budget=budget), tmp_path / str(budget), data=data,
                          progress=False)
        loss, _ = trainer.train_step(0)
        assert len(forward_out_bytes) == 1  # one forward graph, compiled under the budget
        kept[budget], losses[budget] = forward_out_bytes[0], float(loss)
    torch._dynamo.reset()
    assert kept[0.1] < 0.75 * kept[None], kept
    assert losses[0.1] == pytest.approx(losses[None], rel=1e-6)
    eager = Trainer(cfg.replace(compile="none", compile_options={}, activation_memory_budget=0.5),
                    tmp_path / "eager", data=data, progress=False)
    assert "activation_memory_budget acts on a compiled step" in capsys.readouterr().err
    assert eager.train_step(0)[0].isfinite()


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
        model = net().cuda()
        dl.sample(model, proc, (4, 3, 8, 8), "ddim", 3, device="cuda", cuda_graph=True)
        release(model)
        del model
        torch.cuda.synchronize()
        after.append(torch.cuda.memory_allocated())
    assert after[2] - after[1] < 2**20, after  # the first round may allocate process-wide state once


class CPUCapture(fast_mod.CapturedCall):
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
    import difflab.samplers as samplers_mod

    monkeypatch.setattr(samplers_mod, "graphs_supported", lambda device: True)
    monkeypatch.setattr(fast_mod, "CapturedCall", CPUCapture)
    CPUCapture.captures = 0


@pytest.mark.parametrize("sampler,kw", [("ddim", {}), ("dpmpp_2m", {}), ("heun", {}),
                                        ("ddim", {"channels_last": True, "clip_x0": 1.0})])
def test_a_captured_run_replays_the_run(proc, cpu_capture, sampler, kw):
    """cuda_graph="loop": the whole run captured once, then replayed for new noise and labels;
    each replay equals the uncaptured run on the same inputs, with classifier-free guidance."""
    model = net(num_classes=3)
    g = torch.Generator().manual_seed(2)
    runs = [(torch.randn(4, 3, 8, 8, generator=g), torch.tensor(c)) for c in ([0, 1, 2, 1], [2, 2, 0, 1])]
    for noise_, cond in runs:
        ref = dl.sample(model, proc, (4, 3, 8, 8), sampler, 4, noise=noise_, cond=cond, guidance=2.0, **kw)
        got = dl.sample(model, proc, (4, 3, 8, 8), sampler, 4, noise=noise_, cond=cond, guidance=2.0,
                        cuda_graph="loop", **kw)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert got.is_contiguous()
    assert CPUCapture.captures == 1  # the second run replayed the first one's capture
    dl.sample(model, proc, (4, 3, 8, 8), sampler, 3, noise=runs[0][0], cond=runs[0][1], guidance=2.0,
              cuda_graph="loop", **kw)
    assert CPUCapture.captures == 2  # another number of steps is another run
    release(model)
    assert not fast_mod.loop_graphs(model)


def test_a_captured_run_around_a_frozen_compiled_network(proc, cpu_capture):
    """The candidate fastest sampler on a GPU: torch.compile with Inductor's freezing (weights as
    constants: their casts done once) inside a whole-run capture. The warm-up compiles, the
    capture records the compiled calls, and replays give the uncompiled run's samples."""
    torch._dynamo.reset()  # earlier tests' compilations of UNet.forward count toward the recompile limit
    model = net()
    frozen = {"options": {"freezing": True}}
    for seed in (6, 7):
        x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        want = dl.sample(model, proc, x_T.shape, "ddim", 3, noise=x_T)
        got = dl.sample(model, proc, x_T.shape, "ddim", 3, noise=x_T, compile=frozen, channels_last=True,
                        cuda_graph="loop")
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-4)  # Inductor's float32 reorderings
    assert CPUCapture.captures == 1
    release(model)


def test_a_captured_run_of_a_model_converted_to_bf16_is_captured_anew(proc, cpu_capture):
    """Under precision="bf16" the state is float32 for a float32 and a bf16 model alike, so the
    run's key holds the weights' dtype: after model.to(torch.bfloat16) the run is captured again
    (a replay of the old capture would read the float32 weights)."""
    model = net()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    dl.sample(model, proc, x_T.shape, "ddim", 3, noise=x_T, precision="bf16", cuda_graph="loop")
    model.to(torch.bfloat16)
    want = dl.sample(model, proc, x_T.shape, "ddim", 3, noise=x_T, precision="bf16")
    got = dl.sample(model, proc, x_T.shape, "ddim", 3, noise=x_T, precision="bf16", cuda_graph="loop")
    assert CPUCapture.captures == 2
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # weights moved without a change of dtype (a round trip; load_state_dict(assign=True)): the
    # captures of the old tensors are dropped, not replayed
    old = [p.data for p in model.parameters()]  # kept alive: the new tensors cannot reuse their memory
    model.to(torch.float32).to(torch.bfloat16)
    got = dl.sample(model, proc, x_T.shape, "ddim", 3, noise=x_T, precision="bf16", cuda_graph="loop")
    assert CPUCapture.captures == 3 and len(fast_mod.loop_graphs(model)) == 1 and old
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_per_call_graphs_of_moved_weights_are_dropped():
    """fast_model (what dl.sample calls) drops a FastModel's captured graphs when the model's
    weights have moved since the capture; in-place updates (an optimizer, EMA) keep them."""
    model = net()
    fast = fast_model(model, cuda_graph=True)
    fast._graphs["captured"] = object()  # stands in for a capture (a real one needs a GPU)
    object.__setattr__(fast, "_weights", fast_mod.weights_fingerprint(model))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    assert fast_model(model, cuda_graph=True) is fast and fast._graphs
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    assert fast_model(model, cuda_graph=True) is fast and not fast._graphs


def test_a_captured_stochastic_run_draws_new_noise_each_replay(proc, cpu_capture):
    """DDPM (and DDIM with eta > 0) captured whole draw their noise inside the graph from the
    default generator: two replays from the same x_T differ (as two uncaptured runs would)."""
    model = net()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    a = dl.sample(model, proc, x_T.shape, "ddpm", 4, noise=x_T, cuda_graph="loop")
    b = dl.sample(model, proc, x_T.shape, "ddpm", 4, noise=x_T, cuda_graph="loop")
    assert CPUCapture.captures == 1 and not torch.allclose(a, b)


def test_a_captured_stochastic_run_is_the_seeded_run(proc, cpu_capture):
    """Seeded alike, the first replay of a captured DDPM run draws what an uncaptured run draws
    (the warm-up's draws are given back), and so does a later one."""
    model = net()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    for _ in range(2):
        torch.manual_seed(7)
        want = dl.sample(model, proc, x_T.shape, "ddpm", 4, noise=x_T)
        torch.manual_seed(7)
        got = dl.sample(model, proc, x_T.shape, "ddpm", 4, noise=x_T, cuda_graph="loop")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert CPUCapture.captures == 1


def test_a_captured_run_is_keyed_by_everything_that_shapes_it(cpu_capture):
    """Another process (here v-prediction instead of eps on the same schedule) is another run;
    a plain function model keeps its runs too (captured once for two calls)."""
    model = net()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for prediction in ("eps", "v", "eps"):
        p = dl.GaussianDiffusion(dl.schedules.linear(), prediction=prediction)
        want = dl.sample(model, p, x_T.shape, "ddim", 3, noise=x_T)
        got = dl.sample(model, p, x_T.shape, "ddim", 3, noise=x_T, cuda_graph="loop")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert CPUCapture.captures == 2

    def shrink(x, t):  # an analytic eps-model: no parameters, nowhere to keep a capture on
        return 0.5 * x

    p = dl.GaussianDiffusion(dl.schedules.linear())
    for _ in range(2):
        dl.sample(shrink, p, x_T.shape, "ddim", 3, noise=x_T, cuda_graph="loop")
    assert CPUCapture.captures == 3
    release(shrink)
    assert not fast_mod.loop_graphs(shrink)


def test_a_captured_run_refuses_what_it_cannot_replay(proc, noise, cpu_capture):
    model = net()
    for kw, words in (({"callback": lambda step: None}, ["callback", "cuda_graph=True"]),
                      ({"sampler": "ddpm", "generator": torch.Generator()}, ["'ddpm'", "torch.manual_seed"]),
                      ({"eta": 0.5, "generator": torch.Generator()}, ["'ddim'", "default generator"]),
                      ({"cuda_graph": "yes"}, ["False, True", "'loop'"]),
                      ({"compile": "reduce-overhead"}, ["'reduce-overhead'", "max-autotune-no-cudagraphs"]),
                      ({"euler_churn": True}, None)):
        if words is None:  # a non-numeric option is the sampler's to refuse, not the capture's
            with pytest.raises((ValueError, TypeError)) as err:
                dl.sample(model, proc, noise.shape, "euler", 3, noise=noise, s_churn="lots",
                          generator=torch.Generator(), cuda_graph="loop")
            assert "default generator" not in str(err.value)
            continue
        kw = {"sampler": "ddim", "cuda_graph": "loop", **kw}
        with pytest.raises(ValueError) as err:
            dl.sample(model, proc, noise.shape, steps=3, noise=noise, **kw)
        assert all(w in str(err.value) for w in words), str(err.value)
    # a deterministic run may name a generator: it only draws x_T, before the captured run
    dl.sample(model, proc, noise.shape, "ddim", 3, generator=torch.Generator().manual_seed(0), cuda_graph="loop")


def test_a_captured_run_needs_cuda(proc, noise):
    with pytest.raises(ValueError, match="'loop' needs a CUDA device"):
        dl.sample(net(), proc, noise.shape, "ddim", 3, noise=noise, cuda_graph="loop", device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captures a real CUDA graph")
def test_a_captured_run_matches_per_call_graphs_on_the_gpu(proc):
    """On a GPU, the whole run as one graph gives the samples of per-call graphs."""
    model = net(num_classes=3).cuda()
    x_T = torch.randn(4, 3, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    cond = torch.tensor([0, 1, 2, 1], device="cuda")
    kw = dict(noise=x_T, cond=cond, guidance=2.0, clip_x0=1.0, precision="bf16", channels_last=True)
    per_call = dl.sample(model, proc, x_T.shape, "ddim", 5, cuda_graph=True, **kw)
    for _ in range(2):
        whole = dl.sample(model, proc, x_T.shape, "ddim", 5, cuda_graph="loop", **kw)
        torch.testing.assert_close(whole, per_call, rtol=1e-3, atol=1e-3)
    release(model)
