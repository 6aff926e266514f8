"""The captured training step (``cuda_graph``): same maths as the eager step, checkpoints that
resume in either mode, clear refusals.

CUDA graphs need a GPU, so on the CPU a faithful stand-in replaces the two CUDA parts of
StepGraph (the side-stream warm-up and the capture): tests/graph_emulator.py records the step's
aten calls while it runs once, and a replay re-issues them on the same tensors without running
any of the step's Python -- so, as in a CUDA graph, Python numbers are frozen at capture and only
device memory (the LR tensors, the EMA-decay tensor, the static batch) changes between replays.
Everything else is the real code. The last test captures for real and runs where CUDA is.
"""

import json

import pytest
import torch

from difflab.training import Trainer, TrainConfig, apply_overrides, read_checkpoint
from difflab.training import trainer as trainer_mod
from difflab.training.ema import EMA
from difflab.training.loss import TrainBatch
from difflab.training.step_graph import StepGraph

from graph_emulator import HostSyncInCapture, RecordedGraph


def tiny(**changes) -> TrainConfig:
    d = {
        "model": {"name": "mlp", "kwargs": {"dim": 2, "width": 32, "depth": 2, "num_classes": 2, "dropout": 0.0}},
        "diffusion": {"schedule": "linear", "T": 100},
        "data": {"name": "toy2d", "kwargs": {"dataset": "swiss_roll", "n": 100}},
        "optim": {"lr": 1e-3, "warmup_steps": 6, "decay": "constant", "fused": True},  # LR changes after capture
        "ema": {"decay": 0.9, "warmup": 2},
        "sample": {"every": -1},
        "batch_size": 16, "grad_accum": 2, "steps": 8, "log_every": 2, "ckpt_every": 4, "device": "cpu",
        "seed": 3,
    }
    return apply_overrides(TrainConfig.from_dict(d), [f"{k}={json.dumps(v)}" for k, v in changes.items()])


class CPUReplay(StepGraph):
    """StepGraph with its CUDA parts replaced by a faithful CPU stand-in (tests/graph_emulator.py):
    the capture records the step's aten calls, a replay re-issues them without running any of the
    step's Python, so Python values are frozen at capture exactly as in a CUDA graph."""

    def _eager(self, batches):
        self.eager_steps = getattr(self, "eager_steps", 0) + 1
        return self.update(batches, self.ema_decay)

    strict = False  # the trainer's CPU-only value checks read on the host; a GPU run skips them

    def _capture(self):
        self.optimizer.zero_grad(set_to_none=True)
        self.recorded = RecordedGraph(strict=self.strict)
        try:
            self.out = self.recorded.capture(lambda: self.update(self.static, self.ema_decay))
        except HostSyncInCapture as err:
            raise RuntimeError(f"capturing the training step as a CUDA graph failed ({err})") from err
        self.replays = 0
        self.skip_next = True  # the CPU capture computed its step; a CUDA capture only records it

        def replay():
            if self.skip_next:
                self.skip_next = False
                return
            self.recorded.replay()
            self.replays += 1

        return replay


@pytest.fixture
def cpu_graphs(monkeypatch):
    monkeypatch.setattr(trainer_mod, "_graphs_supported", lambda device: True)
    monkeypatch.setattr(trainer_mod, "StepGraph", CPUReplay)


def _close(a: dict, b: dict, atol=1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_ema_apply_with_a_device_decay_is_the_lerp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    a, b = EMA(model, 0.9, warmup=0), EMA(model, 0.9, warmup=0)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        a.update(model)
        b.apply(model, torch.tensor(0.9))
        b.num_updates += 1
    _close(a.model.state_dict(), b.model.state_dict())
    expect = {k: v for k, v in model.state_dict().items()}
    assert not all(torch.allclose(a.model.state_dict()[k], expect[k]) for k in expect)  # it did average


def test_captured_step_trains_like_the_eager_step_and_resumes_either_way(tmp_path, cpu_graphs):
    eager = Trainer(tiny(steps=12), tmp_path / "eager", progress=False)
    eager.train()

    graph = Trainer(tiny(cuda_graph=True), tmp_path / "graph", progress=False)
    assert isinstance(graph._graph, CPUReplay)
    assert graph.optimizer.param_groups[0]["capturable"]
    graph.train()
    g = graph._graph
    assert g.eager_steps == 3 and g.replays == 4  # 3 warm-up steps, the captured one, 4 replays
    assert torch.is_tensor(g.lrs[0]) and g.lrs[0].item() == pytest.approx(1e-3)  # the LR the graph reads
    ck = read_checkpoint(tmp_path / "graph")
    assert isinstance(ck["optimizer"]["optimizer"]["param_groups"][0]["lr"], float)  # plain numbers on disk
    assert all(isinstance(v, float) for v in ck["optimizer"]["scheduler"]["_last_lr"])

    # the graph run's step 8 continued eagerly, and continued captured, both match 12 eager steps
    for mode, where in ((False, "to_eager"), (True, "to_graph")):
        import shutil

        shutil.copytree(tmp_path / "graph", tmp_path / where)
        more = Trainer(tiny(steps=12, cuda_graph=mode), tmp_path / where, resume=True, progress=False)
        assert more.step == 8
        more.train()
        ref = read_checkpoint(tmp_path / "eager")
        out = read_checkpoint(tmp_path / where)
        _close(out["model"], ref["model"])
        _close(out["ema"], ref["ema"])
        assert out["state"]["ema"]["num_updates"] == 12
        lr_ref = ref["optimizer"]["optimizer"]["param_groups"][0]["lr"]
        assert out["optimizer"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr_ref, rel=1e-6)
    # and an eager checkpoint resumes captured (the AdamW flags are the run's, not the file's)
    shutil.copytree(tmp_path / "eager", tmp_path / "e2g")
    cont = Trainer(tiny(steps=14, cuda_graph=True), tmp_path / "e2g", resume=True, progress=False)
    assert cont.optimizer.param_groups[0]["capturable"]
    cont.train()
    assert cont.step == 14


def test_captured_compiled_step_compiles_once_and_trains_like_eager(tmp_path, cpu_graphs):
    """``compile: step`` + ``cuda_graph``, the GPU benchmark's candidate, with torch.compile's
    aot_eager backend (its compiled forward and backward are aten calls the stand-in records):
    no recompilation at capture (the static batch passes the warm-up's guards), same weights."""
    # (config.patch, not monkeypatch: undoing a monkeypatch deletes the option from dynamo's config
    # module, and a later test that patches it then fails)
    torch._dynamo.reset()
    eager = Trainer(tiny(steps=8), tmp_path / "eager", progress=False)
    eager.train()
    counters = torch._dynamo.utils.counters
    counters.clear()
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            graph = Trainer(tiny(steps=8, cuda_graph=True, compile="step", compile_options={"backend": "aot_eager"}),
                            tmp_path / "graph", progress=False)
            graph.train()
    finally:
        torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert graph._graph.captured and graph._graph.replays == 4
    _close(read_checkpoint(tmp_path / "graph")["model"], read_checkpoint(tmp_path / "eager")["model"], atol=1e-5)


def test_cuda_graph_on_a_cpu_run_is_noted_and_runs_eagerly(tmp_path, capsys):
    t = Trainer(tiny(steps=2, cuda_graph=True), tmp_path / "r", progress=False)
    assert t._graph is None and "cuda_graph is a CUDA option" in capsys.readouterr().err
    t.train()
    assert t.step == 2


def test_cuda_graph_in_a_multi_process_run_is_noted_and_runs_eagerly(tmp_path, capsys, monkeypatch):
    """configs/mnist_cond.yaml sets cuda_graph for one GPU; the same file under torchrun steps
    eagerly with a note instead of failing. (Rank 0 of a claimed 2 in a real 1-process gloo
    group: enough to build the trainer, DDP included.)"""
    import torch.distributed as dist

    monkeypatch.setattr(trainer_mod, "_graphs_supported", lambda device: True)
    monkeypatch.setattr(trainer_mod, "_dist_env", lambda: (0, 2, 0))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        t = Trainer(tiny(steps=2, cuda_graph=True), tmp_path / "r", progress=False)
        assert t._graph is None and not t.cuda_graph
        assert "this run has 2 processes (torchrun), which step eagerly" in capsys.readouterr().err
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("changes, words", [
    ({"cuda_graph": "yes"}, ["cuda_graph", "true or false"]),
    ({"cuda_graph": True, "precision": "fp16"}, ["cuda_graph", "fp16", "bf16"]),
    ({"cuda_graph": True, "compile_options": {"mode": "reduce-overhead"}}, ["reduce-overhead", "max-autotune-no-cudagraphs"]),
    ({"compile_options": {"mode": "default", "options": {"freezing": True}}}, ["compile_options", "mode or options"]),
])
def test_cuda_graph_config_refusals_name_the_fix(changes, words):
    with pytest.raises(ValueError) as err:
        tiny(**changes).validate()
    for w in words:
        assert w in str(err.value)


def test_step_graph_needs_a_warmup_step():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="warmup >= 1"):
        StepGraph(lambda b, d: None, opt, torch.device("cpu"), warmup=0)


def _adamw_step(opt, loss_of):
    """A minimal step body of StepGraph's form: AdamW on ``loss_of(first micro-batch)``."""
    def update(batches, decay):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(batches[0])
        loss.backward()
        opt.step()
        return loss.detach(), loss.detach()

    return update


def _batch() -> TrainBatch:
    return TrainBatch(x0=torch.randn(3, 2), cond=None, labels=None, t=torch.zeros(3, dtype=torch.long),
                      noise=torch.randn(3, 2), u=torch.rand(3), step=0, index=torch.arange(3))


def test_capture_refuses_parameters_that_have_no_optimizer_state():
    """A parameter without a gradient in the warm-up would get its AdamW state inside the graph,
    re-zeroed by every replay: refused, with the fix."""
    used, unused = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([*used.parameters(), *unused.parameters()], fused=True)
    update = _adamw_step(opt, lambda b: used(b.x0).square().mean())
    batch = _batch()
    g = CPUReplay(update, opt, torch.device("cpu"), warmup=1)
    g([batch], 0.9)  # the warm-up step
    with pytest.raises(ValueError, match="2 trained parameter.*requires_grad_.False.*cuda_graph: false"):
        g([batch], 0.9)
    unused.requires_grad_(False)
    g([batch], 0.9)  # now it captures (the CPU stand-in computes that step while recording)
    g([batch], 0.9)
    assert g.captured and g.replays == 1


def test_the_stand_in_freezes_python_values_and_refuses_host_reads():
    """What makes the CPU stand-in worth trusting: a Python number read by the step is frozen at
    capture (as in a CUDA graph), a device tensor is read afresh, and a host read fails capture."""
    scale, w = [2.0], torch.ones(3)
    factor = torch.tensor(2.0)
    g = RecordedGraph()
    out = g.capture(lambda: w * scale[0] * factor)
    scale[0], _ = 10.0, factor.fill_(3.0)
    g.replay()
    assert torch.equal(out, torch.full((3,), 6.0))  # 2.0 frozen, the tensor factor read: 1 * 2 * 3
    with pytest.raises(HostSyncInCapture, match="_local_scalar_dense"):
        RecordedGraph().capture(lambda: w * float(factor))
    with pytest.raises(HostSyncInCapture, match="index"):  # a boolean mask: a GPU reads the count
        RecordedGraph(strict=True).capture(lambda: w[w > 0].sum())

    # through the trainer: a loss that reads a value on the host cannot be captured
    class Strict(CPUReplay):
        strict = True

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    update = _adamw_step(opt, lambda b: model(b.x0).square().mean() * float(b.u.mean()))  # a host read
    batch = _batch()
    sg = Strict(update, opt, torch.device("cpu"), warmup=1)
    sg([batch], 0.9)
    with pytest.raises(RuntimeError, match="capturing the training step as a CUDA graph failed.*host"):
        sg([batch], 0.9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captures a real CUDA graph")
def test_real_cuda_graph_matches_eager_on_the_gpu(tmp_path, monkeypatch):
    """On a GPU: 10 captured steps of a small U-Net land where 10 eager steps do. fp32 with
    deterministic cuDNN and no TF32, so the two runs execute the same kernels; they differ only
    in the EMA formula's rounding (and Adam does not amplify that: it is not in the gradients)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = dict(model={"name": "unet", "kwargs": {"in_channels": 1, "channels": 16, "channel_mult": [1, 2],
                                                "num_res_blocks": 1, "attention_levels": [1], "image_size": 8,
                                                "dropout": 0.0, "norm_groups": 8}},
               device="cuda", steps=10, grad_accum=1)
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # no dataset needed
    from torch.nn.attention import SDPBackend, sdpa_kernel

    runs = {}
    for mode in (False, True):
        t = Trainer(tiny(**cfg, cuda_graph=mode), tmp_path / str(mode), data=(images, None), progress=False)
        start = t.model.conv_in.weight.detach().cpu().clone()
        with sdpa_kernel(SDPBackend.MATH):  # the fused fp32 attention backward is not deterministic
            t.train()
        assert (t._graph is not None) == mode
        if mode:
            assert t._graph.captured and t._graph.warmup_left == 0
        runs[mode] = read_checkpoint(tmp_path / str(mode))
    _close(runs[True]["model"], runs[False]["model"], atol=1e-5)
    _close(runs[True]["ema"], runs[False]["ema"], atol=1e-5)
    assert not torch.allclose(runs[True]["model"]["conv_in.weight"], start, atol=1e-4)  # it trained
