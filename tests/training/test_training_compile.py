"""The trainer's public step and its compiled forms: ``train_step`` is the loop's step; the
compiled step is one graph, compiled once, with the eager step's losses; an activation memory
budget reaches torch's min-cut partitioner and keeps fewer activations for the same loss.
(Moved from tests/test_fast_sampling.py when the sampler's speed options became difflab.accel.)"""

import pytest
import torch

from difflab.training import Trainer, TrainConfig
from difflab.training.config import DiffusionConfig, ModelConfig, SampleConfig

NET = dict(in_channels=3, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
           image_size=8, norm_groups=8)


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
