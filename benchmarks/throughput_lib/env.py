"""Device, sizes and shared inputs of one run, and what the results record about the machine."""

from __future__ import annotations

import contextlib
import gc
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

import difflab as dl

from .networks import NETWORKS, T, difflab_unet, diffusers_unet
from .speed import kernel_environment

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by GPU name; the first match wins.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
    ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0),
    ("L4", 121.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
)


def detect_peak_tflops(name: str) -> Optional[float]:
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def choose_device(choice: str) -> torch.device:
    """``--device``: "auto" is CUDA where there is one, else the CPU; CUDA asked for where there is
    none is refused by name (a run would fail at its first tensor)."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; use --device cpu")
    return device


def _use_tensor_cores() -> None:
    torch.backends.cudnn.benchmark = True
    with warnings.catch_warnings():  # fp32 rows are "fp32/TF32" (the reference)
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class RunDevice:
    """A run's device and what every measurement does with it: wait for its queued work (timings
    end there, CUDA runs asynchronously), give memory back between rows, run a row's precision.
    The base of each benchmark's Env (this module's, benchmarks/dit_throughput.py's)."""

    def __init__(self, choice: str) -> None:
        self.device = choose_device(choice)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        """Collect garbage and give the caching allocator's free blocks back."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def autocast(self, precision: str):
        """bf16 autocast for a "bf16" row; any other precision runs as stored (fp32 rows: TF32 where
        a run switched it on)."""
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Env(RunDevice):
    """Device, sizes and shared inputs of one run."""

    def __init__(self, args) -> None:
        super().__init__(args.device)
        self.graph_workspace = 0  # bytes of a cuBLAS workspace (difflab's graph stream's; set before the rows)
        self.tiny = args.tiny or not self.cuda
        self.net_name = "tiny" if self.tiny else "ddpm_cifar10"
        self.net = dict(NETWORKS[self.net_name], dropout=args.dropout)
        self._sizes(args)
        if not self.cuda and args.threads != 0:
            torch.set_num_threads(args.threads or 1)
        self.gpu_name = (torch.cuda.get_device_name(self.device) if self.cuda
                         else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
        self.peak_tflops = args.peak_tflops or (detect_peak_tflops(self.gpu_name) if self.cuda else None)
        self.profile_dir = Path(args.profile) if args.profile else None
        self.profile_iters = args.profile_iters
        self.trace = args.trace
        self._inputs()
        if self.cuda:
            _use_tensor_cores()

    def _sizes(self, args) -> None:
        """Batches, iterations and repeats: the options given, else the defaults by size."""
        def d(gpu, cpu):
            return cpu if self.tiny else gpu

        size = self.net["image_size"]
        self.batch = args.batch or d(128, 4)
        self.sample_batch = args.sample_batch or self.batch
        self.sample_steps = args.sample_steps
        self.train_iters = args.train_iters or d(20, 2)
        self.train_warmup = args.train_warmup if args.train_warmup is not None else d(5, 1)
        self.sample_warmup = args.sample_warmup if args.sample_warmup is not None else d(2, 1)
        self.repeats = args.repeats or d(5, 2)
        self.dataset_size = args.dataset_size or d(1024, 64)
        self.shape = (3, size, size)

    def _inputs(self) -> None:
        """The training images, the sampling noise, the diffusion process, a scratch folder."""
        g = torch.Generator().manual_seed(0)
        self.data = (torch.rand((self.dataset_size, *self.shape), generator=g) * 2 - 1).contiguous()
        self.noise = torch.randn((self.sample_batch, *self.shape), generator=g).to(self.device)
        self.proc = dl.GaussianDiffusion(dl.schedules.linear(T))
        self.tmp = tempfile.TemporaryDirectory(prefix="difflab_throughput_")
        self.sample_reference: dict[str, Tensor] = {}  # each library's first sample batch of this run (in
        # PRIORITY order its headline row: a shared error would not show; group_norm.py checks the kernels)
        self._templates: dict[str, nn.Module] = {}

    def template(self, library: str) -> nn.Module:
        """The sampling network of a library, one set of random weights for all its rows (kept on
        the CPU: each row copies it to the device, so a row's peak memory holds only its own)."""
        if library not in self._templates:
            torch.manual_seed(0)
            if library == "difflab":
                model = difflab_unet(self.net)
                with torch.no_grad():  # difflab zero-initialises output layers: make the output non-trivial
                    for p in model.parameters():
                        if not p.any():
                            p.normal_(0.0, 0.02)
            else:
                model = diffusers_unet(self.net)
            self._templates[library] = model.eval().requires_grad_(False)
        return self._templates[library]


def versions() -> dict:
    """The versions of what ran, and the kernel choices the environment made."""
    v = {"python": platform.python_version(), "torch": torch.__version__, "difflab": getattr(dl, "__version__", None)}
    try:
        import diffusers

        v["diffusers"] = diffusers.__version__
    except ImportError:
        v["diffusers"] = None
    v.update(kernel_environment())
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
        v["cudnn"] = torch.backends.cudnn.version()
    return v
