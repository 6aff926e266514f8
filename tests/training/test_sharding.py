"""Sharded training (difflab.training.sharding, and the trainer and checkpoints around it).

Fully sharded data parallel changes where the numbers live, not what they are: each step's
batch and draws are functions of (seed, step, global index), the gradient each process
reduce-scatters is the average of the processes' micro-batch means, and AdamW and the EMA act
elementwise on the shards. So two processes under torchrun (gloo, CPU) train like one process
with the same global batch up to floating-point summation order (~1e-7 relative per step, as in
test_training_ddp.py), and so does every resume across numbers of processes and layouts:
2 -> 1, 1 -> 2 (with activation checkpointing switched on), unsharded -> sharded, sharded ->
DDP; so do the U-Net and the DiT with checkpointed blocks. One torchrun launch runs all the
two-process trainings (about 15 s); the one-process runs are in this process. Activation
checkpointing is checked directly: the same gradients, each block run twice.
"""

import copy
import csv
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from PIL import Image
from tiny_config import TORCHRUN_YAML, tiny
from torch import nn

import difflab as dl
from difflab import models
from difflab.training import Trainer, load_config, read_checkpoint
from difflab.training.checkpoint import MANIFEST, verify_checkpoint
from difflab.training.sharding import (block_units, checkpoint_activations, is_checkpointed, network,
                                       shard_units)

MLP = TORCHRUN_YAML + """\
tensorboard: false
sharding: fsdp
"""

# The U-Net is one FSDP unit (sharding.shard_units), its steps checkpointed: 3 steps on digits.
UNET = """\
model: {name: unet_tiny, kwargs: {num_classes: 10}}
diffusion: {schedule: linear, T: 100}
data: {name: digits}
sample: {every: -1}
batch_size: 16
steps: 3
log_every: 1
ckpt_every: 3
device: cpu
tensorboard: false
sharding: fsdp
activation_checkpointing: true
"""

# The DiT's transformer blocks are its FSDP units, each checkpointed: 3 steps on digits, then
# a sample grid from the sharded EMA (every process samples, process 0 writes it).
DIT = UNET.replace("{name: unet_tiny, kwargs: {num_classes: 10}}", "{name: dit, kwargs: {in_channels: 1, image_size: 8, "
                   "patch_size: 2, hidden_size: 32, depth: 3, num_heads: 2, num_classes: 10}}").replace(
    "sample: {every: -1}", "sample: {every: 0, steps: 5, per_class: 2, guidance: 2.0}")

# Run under torchrun: every two-process training of this file, in one process group.
DRIVER = """\
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from difflab.cli import main

torch.set_num_threads(1)
dist.init_process_group("gloo")
root = Path(sys.argv[1])
runs = [
    ["--config", str(root / "mlp.yaml"), "--out", str(root / "two")],  # a fresh sharded run
    ["--resume", "--out", str(root / "one_to_two"), "--set", "activation_checkpointing=true"],
    ["--resume", "--out", str(root / "one_to_ddp"), "--set", "sharding=none"],
    ["--resume", "--out", str(root / "plain_to_two"), "--set", "sharding=fsdp", "--set", "steps=10",
     "--set", "grad_accum=2"],
    ["--config", str(root / "unet.yaml"), "--out", str(root / "unet_two")],
    ["--config", str(root / "dit.yaml"), "--out", str(root / "dit_two")],
]
for args in runs:
    rc = main(["train", "--quiet", *args])
    assert rc == 0, (args, rc)
dist.barrier()
dist.destroy_process_group()
"""


def _losses(run):
    return [float(r["loss"]) for r in csv.DictReader(open(run / "log.csv"))]


def _copy_checkpoint(run, step, to):
    """A new run folder holding only checkpoint ``step`` of ``run`` (to resume from it)."""
    name = f"step_{step:08d}"
    shutil.copytree(run / "checkpoints" / name, to / "checkpoints" / name)
    (to / "checkpoints" / "latest").write_text(name + "\n")
    return to


def _train(cfg, out, **kw):
    with Trainer(cfg, out, progress=False, **kw) as trainer:
        return trainer.train()


def _assert_sharded_in_halves(ck):
    """Every tensor of the checkpoint's dcp/ (model, EMA, AdamW's moments) was written as two
    shards of dim 0, one per process (torch.distributed.checkpoint's metadata)."""
    tensors = {k: v for k, v in dcp.FileSystemReader(str(ck / "dcp")).read_metadata().state_dict_metadata.items()
               if hasattr(v, "chunks") and len(v.size) >= 1 and v.size[0] >= 2}
    assert {k.split(".")[0] for k in tensors} == {"model", "ema", "optimizer"}
    for k, meta in tensors.items():
        rows = [c.sizes[0] for c in sorted(meta.chunks, key=lambda c: c.offsets[0])]
        assert len(rows) == 2 and rows[0] == -(-meta.size[0] // 2) and sum(rows) == meta.size[0], k


def _assert_same_weights(a, b, atol):
    ca, cb = read_checkpoint(a), read_checkpoint(b)
    assert ca["state"]["step"] == cb["state"]["step"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        torch.testing.assert_close(cb["model"][k], ca["model"][k], rtol=0, atol=atol)
        torch.testing.assert_close(cb["ema"][k], ca["ema"][k], rtol=0, atol=atol)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process runs, then one torchrun launch of the two-process ones (DRIVER)."""
    root = tmp_path_factory.mktemp("sharding")
    (root / "mlp.yaml").write_text(MLP)
    (root / "unet.yaml").write_text(UNET)
    (root / "dit.yaml").write_text(DIT)
    mlp = load_config(root / "mlp.yaml")
    # one process, no accumulation: the same 32 samples per step in one batch; sharding: fsdp
    # on one process trains unsharded and writes the sharded checkpoint layout (dcp/)
    _train(mlp.replace(grad_accum=1), root / "one")
    _copy_checkpoint(root / "one", 5, root / "one_to_two")
    _copy_checkpoint(root / "one", 5, root / "one_to_ddp")
    _train(mlp.replace(grad_accum=1, sharding="none", steps=5), root / "plain")  # optimizer.pt layout
    _copy_checkpoint(root / "plain", 5, root / "plain_to_two")
    for name in ("unet", "dit"):
        _train(load_config(root / f"{name}.yaml").replace(sharding="none", activation_checkpointing=False),
               root / f"{name}_one")

    (root / "driver.py").write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "driver.py"), str(root)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_two_sharded_processes_train_as_one_process(runs):
    a, b = _losses(runs / "one"), _losses(runs / "two")
    assert len(a) == len(b) == 10
    assert b == pytest.approx(a, rel=1e-5)
    _assert_same_weights(runs / "one", runs / "two", atol=1e-6)
    ck = read_checkpoint(runs / "two")
    assert ck["state"]["world_size"] == 2 and ck["state"]["sharded_state"] == "dcp"
    assert len(ck["rng"]) == 2
    # the sharded state, one file of shards per process, is in the checksums and the atomic rename
    listed = [line.split("  ")[1] for line in (ck["path"] / MANIFEST).read_text().splitlines()]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"} <= set(listed)
    verify_checkpoint(ck["path"])
    _assert_sharded_in_halves(ck["path"])
    assert sorted(p.name for p in (runs / "two" / "checkpoints").iterdir()) == [
        "latest", "step_00000005", "step_00000010"]


def test_a_sharded_checkpoint_loads_whole_and_samples(runs):
    """model.safetensors / ema.safetensors hold the whole weights (gathered to process 0), so
    dl.load samples from them as from any run, the same samples as the one-process run's."""
    two, one = dl.load(runs / "two"), dl.load(runs / "one")
    assert two.step == 10
    x = two.sample(6, steps=5, labels=1, seed=0)
    assert x.shape == (6, 2) and torch.isfinite(x).all()
    torch.testing.assert_close(x, one.sample(6, steps=5, labels=1, seed=0), rtol=0, atol=1e-4)


def test_two_process_checkpoint_resumes_on_one_process(runs, tmp_path):
    run = _copy_checkpoint(runs / "two", 5, tmp_path / "two_to_one")
    cfg = read_checkpoint(run)["config"].replace(grad_accum=1)  # (resumable: the same global batch)
    _train(cfg, run, resume=True)
    assert _losses(run) == pytest.approx(_losses(runs / "two")[5:], rel=1e-5)
    _assert_same_weights(runs / "two", run, atol=1e-6)
    assert read_checkpoint(run)["state"]["world_size"] == 1


def test_one_process_checkpoint_resumes_on_two_with_activation_checkpointing(runs):
    assert _losses(runs / "one_to_two") == pytest.approx(_losses(runs / "one")[5:], rel=1e-5)
    _assert_same_weights(runs / "one", runs / "one_to_two", atol=1e-6)
    ck = read_checkpoint(runs / "one_to_two")
    assert ck["config"].activation_checkpointing and ck["state"]["world_size"] == 2


def test_a_sharded_checkpoint_resumes_unsharded_under_ddp(runs):
    """dcp/ read whole by each of two DDP processes (sharding: fsdp -> none); its checkpoints are
    then the unsharded layout again."""
    assert _losses(runs / "one_to_ddp") == pytest.approx(_losses(runs / "one")[5:], rel=1e-5)
    _assert_same_weights(runs / "one", runs / "one_to_ddp", atol=1e-6)
    ck = read_checkpoint(runs / "one_to_ddp")
    assert not (ck["path"] / "dcp").exists() and ck["optimizer"]["optimizer"]["state"]


def test_an_unsharded_checkpoint_resumes_sharded(runs):
    """optimizer.pt's whole AdamW state, split into each process's shards (sharding: none -> fsdp)."""
    assert _losses(runs / "plain_to_two") == pytest.approx(_losses(runs / "one")[5:], rel=1e-5)
    _assert_same_weights(runs / "one", runs / "plain_to_two", atol=1e-6)
    assert (read_checkpoint(runs / "plain_to_two")["path"] / "dcp").is_dir()


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_sharded_networks_with_checkpointed_blocks_train_as_one_process(runs, name):
    """The U-Net (one FSDP unit, its steps checkpointed) and the DiT (each transformer block a
    unit, checkpointed) against one unsharded process without activation checkpointing."""
    assert _losses(runs / f"{name}_two") == pytest.approx(_losses(runs / f"{name}_one"), rel=1e-5)
    _assert_same_weights(runs / f"{name}_one", runs / f"{name}_two", atol=1e-5)
    _assert_sharded_in_halves(read_checkpoint(runs / f"{name}_two")["path"])


def test_a_sharded_run_draws_its_sample_grid_from_the_sharded_ema(runs):
    grids = [np.asarray(Image.open(runs / run / "samples" / "step_00000003.png"), dtype=np.int16)
             for run in ("dit_one", "dit_two")]
    assert grids[0].shape == grids[1].shape and grids[0].std() > 0
    assert np.abs(grids[0] - grids[1]).max() <= 1  # (8-bit pixels of samples equal to ~1e-5)


def test_a_damaged_shard_file_is_named_on_resume(runs, tmp_path):
    run = _copy_checkpoint(runs / "two", 5, tmp_path / "damaged")
    shard = run / "checkpoints" / "step_00000005" / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    cfg = read_checkpoint(run, verify=False)["config"]
    with pytest.raises(ValueError, match=r"__1_0\.distcp.*SHA-256 differs"):
        Trainer(cfg, run, resume=True, progress=False)


def test_a_missing_shard_folder_is_named_on_resume(runs, tmp_path):
    run = _copy_checkpoint(runs / "two", 5, tmp_path / "incomplete")
    shutil.rmtree(run / "checkpoints" / "step_00000005" / "dcp")
    cfg = read_checkpoint(run, verify=False)["config"]
    with pytest.raises(FileNotFoundError, match=r"dcp.*is missing; the checkpoint is incomplete"):
        Trainer(cfg, run, resume=True, progress=False)


def test_shards_of_another_network_are_refused_naming_the_folder(runs, tmp_path):
    """A dcp/ folder of another run's network (checksums rewritten to match, so only the fit
    of the state is left to catch it): a ValueError naming the folder, not DCP's traceback."""
    run = _copy_checkpoint(runs / "two", 5, tmp_path / "swapped")
    ck = run / "checkpoints" / "step_00000005"
    shutil.rmtree(ck / "dcp")
    shutil.copytree(read_checkpoint(runs / "dit_two")["path"] / "dcp", ck / "dcp")
    files = sorted(f for f in ck.rglob("*") if f.is_file() and f.name != MANIFEST)
    (ck / MANIFEST).write_text("".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(ck).as_posix()}\n"
                                       for f in files))
    cfg = read_checkpoint(run, verify=False)["config"]
    with pytest.raises(ValueError, match=r"cannot resume from .*dcp'.*its sharded state does not fit the network"):
        Trainer(cfg, run, resume=True, progress=False)


# ------------------------------------------------------------------ the blocks
def test_block_units_are_the_repeated_blocks_seen_through_wrappers():
    mlp = models.build("mlp", dim=2, width=8, depth=3)
    assert block_units(mlp) == list(mlp.blocks) and shard_units(mlp) == list(mlp.blocks)
    unet = models.build("unet_tiny", num_classes=3)
    units = block_units(unet)
    assert units == [*unet.down, unet.mid_res1, unet.mid_attn, unet.mid_res2, *unet.up]
    assert shard_units(unet) == []  # (UNet.block_embeddings reads every block's weights at the top)
    edm = models.EDMPrecond(unet)
    assert network(edm) is unet and block_units(edm) == units
    dit = models.build("dit_t_2", in_channels=1, image_size=8)
    assert block_units(dit) == shard_units(dit) == list(dit.blocks)
    sr = models.build("superres", base="unet_tiny")
    assert block_units(sr) == block_units(sr.net) != []
    assert block_units(nn.Sequential(nn.Linear(2, 2))) == []
    text = models.build("text_unet", vocab=["a", "7"], channels=32, in_channels=1, image_size=8)
    net = text.net  # a text model: its U-Net's blocks, the middle cross-attention among them
    assert block_units(text) == [*net.down, net.mid_res1, net.mid_attn, net.mid_cross, net.mid_res2, *net.up]


def test_activation_checkpointing_refuses_a_network_without_blocks():
    with pytest.raises(ValueError, match=r"Sequential has none.*activation_checkpointing: false"):
        checkpoint_activations(nn.Sequential(nn.Linear(2, 2)))


def _grads(model, x, t, cond):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # (dropout's masks)
    model(x, t, cond).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name, kwargs, shape", [
    ("mlp", {"dim": 2, "width": 16, "depth": 3, "num_classes": 2, "dropout": 0.3}, (8, 2)),
    ("unet_tiny", {"num_classes": 2, "dropout": 0.3}, (4, 1, 8, 8)),
    ("dit", {"in_channels": 1, "image_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2, "num_classes": 2},
     (4, 1, 8, 8)),
])
def test_activation_checkpointing_gives_the_same_gradients_and_runs_each_block_twice(name, kwargs, shape):
    """Recomputing in the backward changes no number -- dropout included, its generator state
    restored for the recomputation -- and does recompute: each block's forward runs once more
    per backward. The state dict keeps its keys, and a deep copy recomputes its own blocks."""
    torch.manual_seed(0)
    plain = models.build(name, **kwargs)
    with torch.no_grad():  # (zero-initialised output layers would leave most gradients zero)
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    recomputed = copy.deepcopy(plain)
    units = checkpoint_activations(recomputed)
    assert all(is_checkpointed(u) for u in units) and not any(is_checkpointed(u) for u in block_units(plain))
    assert recomputed.state_dict().keys() == plain.state_dict().keys()
    x, t, cond = torch.randn(shape), torch.randint(0, 100, (shape[0],)), torch.randint(0, 2, (shape[0],))
    calls = []
    inside = [next(u.children()) for u in units if next(u.children(), None) is not None]
    for m in inside:  # a module inside each block (the first): called by the block's forward
        m.register_forward_pre_hook(lambda m, args: calls.append(m))
    expected = _grads(plain, x, t, cond)
    got = _grads(recomputed, x, t, cond)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)
    assert len(inside) >= len(units) - 2 and len(calls) == 2 * len(inside)  # forward, then recomputed
    # a copy (the EMA's) recomputes with its own weights, not the original's
    clone = copy.deepcopy(recomputed)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)
    assert is_checkpointed(block_units(clone)[0])
    torch.manual_seed(1)
    with torch.no_grad():
        halved = clone(x, t, cond)
    torch.manual_seed(1)
    with torch.no_grad():
        assert not torch.equal(halved, recomputed(x, t, cond))


def test_activation_checkpointing_trains_the_same_run(tmp_path):
    """The trainer's option on a run with dropout: the same losses and weights as without."""
    a = _train(tiny(steps=4, ckpt_every=4), tmp_path / "a")
    b = _train(tiny(steps=4, ckpt_every=4, activation_checkpointing=True), tmp_path / "b")
    assert a["loss"] == b["loss"]
    _assert_same_weights(tmp_path / "a", tmp_path / "b", atol=0)
