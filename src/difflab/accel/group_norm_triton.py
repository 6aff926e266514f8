"""GroupNorm with its neighbours fused, as Triton kernels on channels_last memory (inference).

    y = act((GN(x + a) * gamma + beta) * (1 + s) + b)

with GN the group normalization of :class:`difflab.models.norm.GroupNorm` (statistics over the C/G channels
of a group and all H*W positions, biased variance), gamma, beta its per-channel affine, a an
optional per-(image, channel) addition before the norm (DDPM's time embedding, ``norm2(h + e)``),
s, b an optional per-(image, channel) scale and shift after it (ADM's ``use_scale_shift_norm``)
and act SiLU or the identity. These are every use of GroupNorm in the U-Net; in eager PyTorch
they take five to eight kernels and, for channels_last input, two layout copies.

Here, over the NHWC memory, an image of at most ``SINGLE_PASS_MAX`` elements (the U-Net's 4x4
level) takes one kernel, ``_gn_single_pass``, whose program holds the image whole: one read of x,
one write of y, one launch. A larger image takes one of three ways (``kernel``, ``plan``,
else the rule of :func:`choose_kernels`):

- **tiled**, three kernels over tiles of ``BLOCK_HW`` positions x all C channels (one
  contiguous stretch of memory), any number of programs an image:

  1. ``_gn_partial_stats``: each tile's group means and sums of squared deviations (M2 about the
     tile's own mean, not a raw sum of squares: no cancellation when |mean| >> std);
  2. ``_gn_finalize_stats``: per image, Chan et al.'s parallel combination of the tiles,
     mean = sum_i n_i m_i / N,  M2 = sum_i [M2_i + n_i (m_i - mean)^2],  rstd = (M2 / N + eps)^-1/2
     (``FINALIZE_CHUNK`` tiles at a time, the chunks merged by the same rule: any image size);
  3. ``_gn_apply``: each tile again, y = act(x * k_c + d_c) with the per-(image, channel)
     k = rstd_g gamma (1 + s), d = (beta - mean_g gamma rstd_g)(1 + s) + b.

  x is read twice and y written once;
- **looped**, one kernel, ``_gn_looped``: a program per (image, slab of whole groups, about
  ``SLAB_LANES`` channels) sweeps the image's positions twice, the statistics (tile by tile,
  merged by Chan's rule) and then the output. One launch and no statistics in memory; the
  second sweep re-reads what the first read moments before, from L2 when it still holds it.
  It needs several programs an SM, so it is chosen only when B x slabs is large (a batch), and
  only when C/G is a power of two (measured: slower than tiled for groups of 12 channels);
- **resident**, one kernel, ``_gn_single_pass`` over slabs: a program per (image, slab of whole
  groups) small enough (``RESIDENT_MAX`` elements) to hold all its positions at once, so x is
  read once. Taken by the rule only where it was measured faster (see :func:`choose_kernels`);
  ``"resident2"`` is the same kernel with each thread's registers capped (ptxas' ``maxnreg``) so
  that two of its 16-warp programs share an SM.

The channel axis of a tile is laid out as [G, C/G] padded to powers of two, [BLOCK_G, BLOCK_CG]
flattened: lane i holds channel (i // BLOCK_CG) * C/G + i % BLOCK_CG (the lanes are the channels
when C/G is a power of two), so a group's sum is a reshape and a sum, and C / G need not be a
power of two (the U-Net's up path has 384 channels in 32 groups of 12: 512 lanes).

Statistics are float32; y has x's dtype (under autocast the composite path returns float32
instead, which every consumer in the U-Net -- a convolution or a linear layer -- casts back to
bf16 before use; the values agree to that rounding).

Inference only: there is no backward. :class:`difflab.accel.group_norm.TritonGroupNorm` takes
this path only when no gradient is needed, and computes the composite otherwise. The kernels run
on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set before
this module is imported: Triton reads it when a kernel is defined), which is how the tests check
them without a GPU. Which kernels each shape takes on which GPU was measured by
``benchmarks/group_norm.py``; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from torch import Tensor

from ..models.norm import check_groups

__all__ = ["group_norm_act", "interpreted", "load_plan", "choose_kernels", "KERNELS"]


def interpreted() -> bool:
    """Whether Triton's interpreter runs the kernels (on the CPU, with NumPy): Triton decides it
    from TRITON_INTERPRET when a kernel is defined, i.e. when this module is imported."""
    return isinstance(_gn_single_pass, InterpretedFunction)


@triton.jit
def _lanes(g0, G, CG: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """The lanes of groups g0 .. g0 + BLOCK_G - 1 of the channel axis, [G, CG] padded to
    [BLOCK_G, BLOCK_CG] and flattened: each lane's channel and whether it is one."""
    i = tl.arange(0, BLOCK_G * BLOCK_CG)
    if BLOCK_CG == CG:  # C/G a power of two: the lanes are consecutive channels
        c = g0 * CG + i
        ok = c < G * CG
    else:
        j = i % BLOCK_CG
        group = g0 + i // BLOCK_CG
        c = group * CG + j
        ok = (j < CG) & (group < G)
    return c, ok


@triton.jit
def _group_sum(v, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """[BLOCK_G * BLOCK_CG] per lane (zero in the padding) -> [BLOCK_G] per group."""
    return tl.sum(tl.reshape(v, (BLOCK_G, BLOCK_CG)), axis=1)


@triton.jit
def _per_lane(vg, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """[BLOCK_G] per group -> [BLOCK_G * BLOCK_CG]: each lane gets its group's value."""
    return tl.reshape(tl.broadcast_to(vg[:, None], (BLOCK_G, BLOCK_CG)), (BLOCK_G * BLOCK_CG,))


@triton.jit
def _load_tile(x_ptr, add_ptr, b, hw, c, c_ok, HW, C, OS, HAS_ADD: tl.constexpr):
    """Positions hw x lanes c of image b in float32, a added (x, for the statistics; zero
    outside the image and in padding lanes) and the mask."""
    mask = (hw[:, None] < HW) & c_ok[None, :]
    x = tl.load(x_ptr + b * HW * C + hw[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_ADD:
        a = tl.load(add_ptr + b * OS + c, mask=c_ok, other=0.0).to(tl.float32)
        x = tl.where(mask, x + a[None, :], 0.0)
    return x, mask


@triton.jit
def _tile_stats(x, mask, n, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """Each group's mean and M2 (sum of squared deviations about that mean) over a tile x, n
    elements a group (M2 about the tile's own mean: no cancellation when |mean| >> std)."""
    mean = _group_sum(tl.sum(x, axis=0), BLOCK_G, BLOCK_CG) / n
    dev = tl.where(mask, x - _per_lane(mean, BLOCK_G, BLOCK_CG)[None, :], 0.0)
    return mean, _group_sum(tl.sum(dev * dev, axis=0), BLOCK_G, BLOCK_CG)


@triton.jit
def _merge(n, mean, m2, n_b, mean_b, m2_b):
    """Chan et al.'s parallel combination: (count, mean, M2) of two sets -> of their union,
    N = n + n_b, mean + (mean_b - mean) n_b / N, M2 + M2_b + (mean_b - mean)^2 n n_b / N."""
    total = n + n_b
    delta = mean_b - mean
    w = n_b / total
    return total, mean + delta * w, m2 + m2_b + delta * delta * (n * w)


@triton.jit
def _coefficients(mean_c, rstd_c, b, c, c_ok, OS, add_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr,
                  HAS_ADD: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr,
                  HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr):
    """Per lane k, d with ((x + a - mean) rstd gamma + beta)(1 + s) + b = x k + d, for image b;
    mean_c, rstd_c: each lane's group statistics; a, s, b: rows OS elements apart."""
    k = rstd_c
    d = -mean_c * k
    if HAS_ADD:  # GN(x + a): fold a into the shift, d += a k
        d += tl.load(add_ptr + b * OS + c, mask=c_ok, other=0.0).to(tl.float32) * k
    if HAS_W:
        w = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        k *= w
        d *= w
    if HAS_BIAS:
        d += tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_SCALE:
        s1 = 1.0 + tl.load(scale_ptr + b * OS + c, mask=c_ok, other=0.0).to(tl.float32)
        k *= s1
        d *= s1
    if HAS_SHIFT:
        d += tl.load(shift_ptr + b * OS + c, mask=c_ok, other=0.0).to(tl.float32)
    return k, d


@triton.jit
def _lane_group_stats(mean_c, m2_c, b, c, c_ok, OS, add_ptr, HW, eps, CG: tl.constexpr, HAS_ADD: tl.constexpr,
                      BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """Each lane's group mean and 1/std from each lane's (channel's) mean over its HW positions
    and M2 about that mean (zero in padding lanes). The addition a_c (HAS_ADD) shifts a lane's
    mean only, and the lanes merge by Chan's rule for equal counts: mean_g = avg_c (m_c + a_c),
    M2_g = sum_c [M2_c + HW (m_c + a_c - mean_g)^2]. So x + a is never formed as a tile."""
    if HAS_ADD:
        mean_c += tl.load(add_ptr + b * OS + c, mask=c_ok, other=0.0).to(tl.float32)
    mean = _group_sum(mean_c, BLOCK_G, BLOCK_CG) / CG
    spread = tl.where(c_ok, mean_c - _per_lane(mean, BLOCK_G, BLOCK_CG), 0.0)
    m2 = _group_sum(m2_c + HW * spread * spread, BLOCK_G, BLOCK_CG)
    rstd = 1.0 / tl.sqrt(m2 / (HW * CG * 1.0) + eps)
    return _per_lane(mean, BLOCK_G, BLOCK_CG), _per_lane(rstd, BLOCK_G, BLOCK_CG)


@triton.jit
def _store_tile(y_ptr, x_ptr, b, hw, c, c_ok, HW, C, k, d, SILU: tl.constexpr):
    """y = act(x k + d) at positions hw x lanes c of image b (x as stored, without a)."""
    mask = (hw[:, None] < HW) & c_ok[None, :]
    offs = b * HW * C + hw[:, None] * C + c[None, :]
    y = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * k[None, :] + d[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gn_partial_stats(x_ptr, add_ptr, part_ptr, HW, C, OS, G, NB, CG: tl.constexpr,
                   HAS_ADD: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_G: tl.constexpr,
                   BLOCK_CG: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // NB
    blk = pid % NB
    hw = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c, c_ok = _lanes(0, G, CG, BLOCK_G, BLOCK_CG)
    x, mask = _load_tile(x_ptr, add_ptr, b, hw, c, c_ok, HW, C, OS, HAS_ADD)
    n = (tl.minimum(HW - blk * BLOCK_HW, BLOCK_HW) * CG).to(tl.float32)  # elements per group here
    mean, m2 = _tile_stats(x, mask, n, BLOCK_G, BLOCK_CG)
    g = tl.arange(0, BLOCK_G)
    out = part_ptr + (b * NB + blk) * 2 * G
    tl.store(out + g, mean, mask=g < G)
    tl.store(out + G + g, m2, mask=g < G)


@triton.jit
def _gn_finalize_stats(part_ptr, stats_ptr, HW, G, NB, eps, CG: tl.constexpr,
                    BLOCK_HW: tl.constexpr, BLOCK_NB: tl.constexpr, BLOCK_G: tl.constexpr):
    """Per image: Chan's combination of its NB tiles, BLOCK_NB tiles at a time (any image size)."""
    b = tl.program_id(0)
    g = tl.arange(0, BLOCK_G)
    g_ok = g < G
    n = tl.zeros((BLOCK_G,), dtype=tl.float32)  # (count, mean, M2) of the tiles so far
    mean = tl.zeros((BLOCK_G,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for start in range(0, NB, BLOCK_NB):
        i = start + tl.arange(0, BLOCK_NB)
        mask = (i[:, None] < NB) & g_ok[None, :]
        rows = part_ptr + (b * NB + i[:, None]) * 2 * G + g[None, :]
        mean_i = tl.load(rows, mask=mask, other=0.0)
        m2_i = tl.load(rows + G, mask=mask, other=0.0)
        n_i = (tl.minimum(HW - i * BLOCK_HW, BLOCK_HW) * CG).to(tl.float32)
        n_i = tl.where(i < NB, n_i, 0.0)[:, None]
        n_c = tl.sum(n_i, axis=0)  # this chunk: count, mean, M2
        mean_c = tl.sum(n_i * mean_i, axis=0) / n_c
        dm = mean_i - mean_c[None, :]
        m2_c = tl.sum(tl.where(mask, m2_i + n_i * dm * dm, 0.0), axis=0)
        n, mean, m2 = _merge(n, mean, m2, n_c, mean_c, m2_c)  # with the chunks before it
    rstd = 1.0 / tl.sqrt(m2 / n + eps)
    tl.store(stats_ptr + b * 2 * G + g, mean, mask=g_ok)
    tl.store(stats_ptr + b * 2 * G + G + g, rstd, mask=g_ok)


@triton.jit
def _gn_apply(x_ptr, add_ptr, stats_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr,
           HW, C, OS, G, NB, CG: tl.constexpr,
           HAS_ADD: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr,
           HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
           BLOCK_HW: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // NB
    blk = pid % NB
    hw = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c, c_ok = _lanes(0, G, CG, BLOCK_G, BLOCK_CG)
    group = b * 2 * G + c // CG  # each lane reads its channel's group statistics (a cached gather)
    mean_c = tl.load(stats_ptr + group, mask=c_ok, other=0.0)
    rstd_c = tl.load(stats_ptr + group + G, mask=c_ok, other=0.0)
    k, d = _coefficients(mean_c, rstd_c, b, c, c_ok, OS, add_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr,
                         HAS_ADD, HAS_W, HAS_BIAS, HAS_SCALE, HAS_SHIFT)
    _store_tile(y_ptr, x_ptr, b, hw, c, c_ok, HW, C, k, d, SILU)


@triton.jit
def _gn_single_pass(x_ptr, add_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, HW: tl.constexpr, C, OS, G, NS,
                 eps,
                 CG: tl.constexpr, HAS_ADD: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr,
                 HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                 BLOCK_HW: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """All positions of an image's slab of BLOCK_G groups (NS slabs an image; a small image: one
    slab of all groups) held in one program: statistics and output from one read of x.

    The statistics are taken in two levels, per lane (channel) over the positions, then per
    group over its lanes: a channel's mean and M2 about it, the addition a_c shifting the mean
    only, merged by Chan's rule, mean_g = avg_c (m_c + a_c), M2_g = sum_c [M2_c + HW (m_c + a_c -
    mean_g)^2]. So x + a is never formed as a tile (a folds into the output's shift, as in the
    other kernels), which keeps the registers of the norm with the time embedding's add at
    those of the plain norm."""
    pid = tl.program_id(0)
    b = pid // NS
    hw = tl.arange(0, BLOCK_HW)
    c, c_ok = _lanes((pid % NS) * BLOCK_G, G, CG, BLOCK_G, BLOCK_CG)
    mask = (hw[:, None] < HW) & c_ok[None, :]
    offs = b * HW * C + hw[:, None] * C + c[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean_c = tl.sum(x, axis=0) / HW  # per lane (zero in padding lanes)
    dev = tl.where(mask, x - mean_c[None, :], 0.0)
    mean, rstd = _lane_group_stats(mean_c, tl.sum(dev * dev, axis=0), b, c, c_ok, OS, add_ptr, HW, eps,
                                   CG, HAS_ADD, BLOCK_G, BLOCK_CG)
    k, d = _coefficients(mean, rstd, b, c, c_ok, OS, add_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr,
                         HAS_ADD, HAS_W, HAS_BIAS, HAS_SCALE, HAS_SHIFT)
    y = x * k[None, :] + d[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gn_looped(x_ptr, add_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, HW, C, OS, G, NS, eps,
            CG: tl.constexpr, HAS_ADD: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr,
            HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
            BLOCK_HW: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """One program per (image, slab of BLOCK_G groups), in two sweeps over the image's
    positions: the statistics, then the output. One launch; the second sweep re-reads what the
    first read moments before (from L2 when it still holds it).

    The first sweep only streams: each element of the tile keeps its own running mean and M2
    over the tiles (Welford: delta = x - m, m += delta / k, M2 += delta (x - m) at the k-th
    tile), so no tile needs a reduction across the program's threads (two of them a tile, each a
    barrier, bounded this kernel well below the memory bandwidth: docs/benchmarks.md); the tile's rows
    merge by Chan's rule once at the end (a row past the image's end in the last tile has one
    tile fewer), then the lanes as in the single-pass kernel.

    The grid may be as few as two programs an SM, so each program keeps loads in flight itself: both
    loops are software-pipelined (``num_stages``: the next tiles' loads are issued, cp.async
    into shared memory, while this tile is reduced or written). The second sweep runs backwards,
    so it starts on the tiles the first read last, the ones L2 most likely still holds when the
    whole tensor (every program's slab, all read at once) is larger than L2."""
    pid = tl.program_id(0)
    b = pid // NS
    c, c_ok = _lanes((pid % NS) * BLOCK_G, G, CG, BLOCK_G, BLOCK_CG)
    rows = tl.arange(0, BLOCK_HW)
    mean_e = tl.zeros((BLOCK_HW, BLOCK_G * BLOCK_CG), dtype=tl.float32)  # per element: over the tiles so far
    m2_e = tl.zeros((BLOCK_HW, BLOCK_G * BLOCK_CG), dtype=tl.float32)
    for start in tl.range(0, HW, BLOCK_HW, num_stages=3):
        mask = ((start + rows)[:, None] < HW) & c_ok[None, :]
        x = tl.load(x_ptr + b * HW * C + (start + rows)[:, None] * C + c[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        delta = x - mean_e
        mean_e += tl.where(mask, delta * (1.0 / (start // BLOCK_HW + 1)), 0.0)
        m2_e += tl.where(mask, delta * (x - mean_e), 0.0)
    tiles = tl.cdiv(HW, BLOCK_HW)
    n_r = (tiles - 1 + (rows < HW - (tiles - 1) * BLOCK_HW).to(tl.int32)).to(tl.float32)  # tiles a row saw
    mean_c = tl.sum(n_r[:, None] * mean_e, axis=0) / HW  # per lane
    spread = mean_e - mean_c[None, :]
    m2_c = tl.sum(m2_e + n_r[:, None] * spread * spread, axis=0)
    mean, rstd = _lane_group_stats(mean_c, m2_c, b, c, c_ok, OS, add_ptr, HW, eps, CG, HAS_ADD, BLOCK_G, BLOCK_CG)
    k, d = _coefficients(mean, rstd, b, c, c_ok, OS, add_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr,
                         HAS_ADD, HAS_W, HAS_BIAS, HAS_SCALE, HAS_SHIFT)
    last = tl.cdiv(HW, BLOCK_HW) - 1
    for t in tl.range(0, last + 1, num_stages=3):  # the last tile first: the likeliest still in L2
        _store_tile(y_ptr, x_ptr, b, (last - t) * BLOCK_HW + rows, c, c_ok, HW, C, k, d, SILU)


def _per_image(name: str, t: Optional[Tensor], B: int, C: int) -> Optional[Tensor]:
    """A per-(image, channel) operand as a [B, C] view (no copy): [B, C], or anything that
    broadcasts to [B, C, 1, 1] ([C, 1, 1]: the same for every image, rows 0 apart)."""
    if t is None:
        return None
    if tuple(t.shape) == (B, C):
        return t
    if t.ndim in (3, 4) and tuple(t.shape[-2:]) == (1, 1) and tuple(t.shape[-3:-2]) == (C,) \
            and (t.ndim == 3 or t.shape[0] in (1, B)):
        return t.reshape(-1, C).expand(B, C)
    raise ValueError(f"group_norm_act: {name} must have shape [{B}, {C}], [{B}, {C}, 1, 1] or [{C}, 1, 1] "
                     f"(one value per image and channel, or per channel), got {list(t.shape)}")


def _operand_rows(operands: tuple, B: int, C: int) -> tuple[tuple, int]:
    """The per-image operands (add, scale, shift; [B, C] or None) as the kernels read them: a
    row of C values with unit stride per image, row b at b * OS for one OS shared by all -- as
    given when they agree (a slice of a wider tensor, e.g. of the U-Net's one product of all its
    blocks' embeddings; OS = 0 for one row broadcast to every image), else dense copies (OS = C).
    Returns the operands and OS."""
    given = [t for t in operands if t is not None]
    if all(t.stride(1) == 1 or C == 1 for t in given):  # each row's channels one after another
        if B == 1:
            return operands, C  # one image: b * OS is 0 whatever OS is
        strides = {t.stride(0) for t in given}
        if len(strides) <= 1:
            os_ = strides.pop() if strides else C
            if (B - 1) * os_ + C < 2**31:  # 32-bit offsets
                return operands, os_
    return tuple(t if t is None else t.contiguous() for t in operands), C


# An image of at most this many (padded) elements is normalized by one program in one kernel
# (_gn_single_pass: one read of x); larger ones by the tiled or the looped kernels.
SINGLE_PASS_MAX = 8192  # twice as many would spill registers at 8 warps (ptxas, sm_90)

TILE = 4096  # elements a program of the tiled or looped kernels holds at a time

FINALIZE_CHUNK = 64  # tiles the finalize kernel combines at a time (x 32 groups: 2048 values)

# The looped kernel: one program per (image, slab of whole groups, about SLAB_LANES channels --
# 128 contiguous bytes of a bf16 position), taken when that makes at least LOOPED_MIN_PROGRAMS
# programs (a few per SM) and C/G is a power of two; fewer, larger images (batch 1 at 256 x 256)
# take the tiled kernels, whose programs are tiles of positions, and so do groups of 12 channels:
# a slab of 4 such groups is 48 channels, 96 bytes, so slabs straddle 128-byte lines. (The
# measurements behind this rule: docs/benchmarks.md, "The rules in the source".)
SLAB_LANES = 64
LOOPED_MIN_PROGRAMS = 256

# The resident way: one program per (image, slab of whole groups) that holds all of the slab's
# positions at once, at most RESIDENT_MAX elements (32 float32 values a thread at 16 warps), so x
# is read once, as for a small image, instead of twice (looped, tiled). At 32 x 32 a slab is 16
# lanes (32 bytes of a bf16 position); images whose single group does not fit take the rule's way.
# In the rule for images of at most RESIDENT_RULE_HW positions too large for the single pass, in
# a batch that makes LOOPED_MIN_PROGRAMS (image, slab) programs, C/G a power of two: only where it
# was measured faster than the looped kernel (docs/benchmarks.md, "The rules in the source").
RESIDENT_MAX = 16384
RESIDENT_RULE_HW = 64

# "resident2": the resident way with each thread's registers capped at REGISTERS_PER_SM /
# (2 x threads a program), so that two programs share an SM, one loading while the other
# reduces. Uncapped, the 16-warp resident programs need 64-79 registers a thread (ptxas, sm_90),
# and above 64 an SM holds one, its memory idle while it reduces; capped at 64, at most 7
# values spill, each stored and loaded once (the single-pass kernel has no loop). Programs of at
# most 4 warps fit several an SM anyway and are not capped.
REGISTERS_PER_SM = 65536  # sm_70 to sm_90

# The ways a large image can take (``kernel`` of :func:`group_norm_act`, the values of a plan).
KERNELS = ("tiled", "looped", "resident", "resident2")
RESIDENT = ("resident", "resident2")


def load_plan(path: Union[str, os.PathLike]) -> dict[tuple[int, int, int], str]:
    """A per-shape table of ways, {"C,G,HW": "tiled" | "looped" | "resident" | "resident2"} in a JSON file (what
    ``benchmarks/group_norm.py --best-per-shape`` writes from timings on the GPU at hand), as
    {(C, G, HW): way}. A table holds for the batch size it was timed at (the ways differ in how many programs a
    batch gives): time it at the batch you sample with."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"group norm plan: cannot read the per-shape plan {str(path)!r} ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"group norm plan {str(path)!r}: expected a JSON object {{\"C,G,HW\": way}}")
    plan = {}
    for key, way in raw.items():
        parts = key.split(",")
        if len(parts) != 3 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts) \
                or way not in KERNELS:
            raise ValueError(f"group norm plan {str(path)!r}: entry {key!r}: {way!r} is not \"C,G,HW\": one of "
                             f"{', '.join(KERNELS)}")
        plan[tuple(int(p) for p in parts)] = way
    return plan


def choose_kernels(C: int, G: int, HW: int, B: int = 1, kernel: Optional[str] = None) -> dict:
    """Which kernels and their tile sizes (powers of two). The channel axis is BLOCK_G x BLOCK_CG
    lanes: all groups (single, tiled) or a slab of them (looped, resident; NS slabs an image); a
    tile is BLOCK_HW positions by those lanes (single, resident: all of them); the tiled kernels
    cut an image into NB tiles; maxnreg (resident2 only) caps a thread's registers. ``kernel``:
    "tiled" or "looped" for a large image, "resident" or "resident2" for any (None: the measured
    rule above: single pass, resident at 8 x 8, looped, or tiled)."""
    block_g, block_cg = triton.next_power_of_2(G), triton.next_power_of_2(C // G)
    lanes = block_g * block_cg
    whole = triton.next_power_of_2(HW)
    slab_g = min(block_g, max(1, SLAB_LANES // block_cg))
    ns = triton.cdiv(G, slab_g)
    aligned = block_cg == C // G  # C/G a power of two: slabs of whole 128-byte lines
    if (kernel is None and whole * lanes > SINGLE_PASS_MAX and HW <= RESIDENT_RULE_HW and aligned
            and B * ns >= LOOPED_MIN_PROGRAMS):  # where measured: a batch's many programs, C/G 8 or 16
        kernel = "resident"  # (the rule: measured faster at 8 x 8, above)
    if whole * lanes <= SINGLE_PASS_MAX and kernel not in RESIDENT:
        return dict(kernel="single", BLOCK_G=block_g, BLOCK_CG=block_cg, BLOCK_HW=whole, NS=1,
                    num_warps=8 if whole * lanes > 4096 else 4)
    # resident: where a slab of whole groups fits a program, else the rule; for a small image the
    # single-pass kernel in slabs, so a batch gives NS times the programs (one per image leaves
    # most of a GPU's SMs idle at batch 128)
    if kernel in RESIDENT:
        fit_g = min(slab_g, RESIDENT_MAX // (whole * block_cg))
        if fit_g >= 1:
            elements = whole * fit_g * block_cg
            warps = max(4, min(16, elements // 1024))
            p = dict(kernel="resident", BLOCK_G=fit_g, BLOCK_CG=block_cg, BLOCK_HW=whole,
                     NS=triton.cdiv(G, fit_g), num_warps=warps)
            cap = REGISTERS_PER_SM // (2 * 32 * warps)
            if kernel == "resident2" and cap < 255:  # 255: a thread's most
                p["maxnreg"] = cap
            return p
        kernel = None  # (a slab of one group does not fit: the rule below)
    kernel = kernel or ("looped" if B * ns >= LOOPED_MIN_PROGRAMS and aligned else "tiled")
    if kernel == "looped":
        return dict(kernel="looped", BLOCK_G=slab_g, BLOCK_CG=block_cg, NS=ns,
                    BLOCK_HW=min(whole, max(1, TILE // (slab_g * block_cg))), num_warps=8)
    block_hw = max(1, TILE // lanes)
    nb = triton.cdiv(HW, block_hw)
    return dict(kernel="tiled", BLOCK_G=block_g, BLOCK_CG=block_cg, BLOCK_HW=block_hw, NB=nb,
                BLOCK_NB=min(triton.next_power_of_2(nb), FINALIZE_CHUNK), num_warps=4)


@torch.library.custom_op("difflab::group_norm_act", mutates_args=())
def _group_norm_act(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                    add: Optional[Tensor], scale: Optional[Tensor], shift: Optional[Tensor],
                    eps: float, silu: bool, kernel: Optional[str]) -> Tensor:
    # The kernels index NHWC memory, dense [C] operands and [B, C] rows OS apart. Inside a compiled
    # graph the inputs come with whatever strides Inductor chose, so make sure here (no copy when
    # they are).
    x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = (t if t is None else t.contiguous() for t in (weight, bias))
    B, C, H, W = x.shape
    (add, scale, shift), OS = _operand_rows((add, scale, shift), B, C)
    HW, G = H * W, num_groups
    y = torch.empty_like(x, memory_format=torch.channels_last)
    if y.numel() == 0:  # no image or no position: nothing to normalize (a zero-size arange otherwise)
        return y
    p = choose_kernels(C, G, HW, B, kernel)
    tile = dict(BLOCK_HW=p["BLOCK_HW"], BLOCK_G=p["BLOCK_G"], BLOCK_CG=p["BLOCK_CG"], num_warps=p["num_warps"])
    if "maxnreg" in p:  # a compile option (Triton's interpreter ignores it)
        tile["maxnreg"] = p["maxnreg"]
    flags = dict(HAS_ADD=add is not None, HAS_W=weight is not None, HAS_BIAS=bias is not None,
                 HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, SILU=silu)
    dummy = y  # stands in for absent operands (never read: their HAS_ flag is off)
    operands = [t if t is not None else dummy for t in (add, weight, bias, scale, shift)]
    if p["kernel"] in ("single", "resident"):
        _gn_single_pass[(B * p["NS"],)](x, *operands, y, HW, C, OS, G, p["NS"], eps, CG=C // G, **flags, **tile)
    elif p["kernel"] == "looped":
        _gn_looped[(B * p["NS"],)](x, *operands, y, HW, C, OS, G, p["NS"], eps, CG=C // G, **flags, **tile)
    else:
        nb = p["NB"]
        part = torch.empty(B, nb, 2, G, device=x.device, dtype=torch.float32)
        stats = torch.empty(B, 2, G, device=x.device, dtype=torch.float32)
        _gn_partial_stats[(B * nb,)](x, operands[0], part, HW, C, OS, G, nb, CG=C // G, HAS_ADD=add is not None,
                                     **tile)
        _gn_finalize_stats[(B,)](part, stats, HW, G, nb, eps, CG=C // G, BLOCK_HW=tile["BLOCK_HW"],
                              BLOCK_NB=p["BLOCK_NB"], BLOCK_G=tile["BLOCK_G"])
        _gn_apply[(B * nb,)](x, operands[0], stats, *operands[1:], y, HW, C, OS, G, nb, CG=C // G, **flags, **tile)
    return y


@_group_norm_act.register_fake
def _(x, num_groups, weight, bias, add, scale, shift, eps, silu, kernel):
    return torch.empty_like(x, memory_format=torch.channels_last)


def group_norm_act(x: Tensor, num_groups: int, weight: Optional[Tensor] = None,
                   bias: Optional[Tensor] = None, eps: float = 1e-5, *, add: Optional[Tensor] = None,
                   scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                   silu: bool = False, kernel: Optional[str] = None,
                   plan: Optional[dict] = None) -> Tensor:
    """act((GN(x + add) * weight + bias) * (1 + scale) + shift) for a 4-D x, by the Triton kernels;
    the result is channels_last with x's dtype. add, scale, shift: [B, C], [B, C, 1, 1] or
    [C, 1, 1]. ``kernel`` forces a way for every shape; else ``plan`` ({(C, G, HW): way},
    :func:`load_plan`) for the shapes it names; else the rule (:func:`choose_kernels`).
    No gradient: for training use :func:`difflab.accel.group_norm.group_norm_nhwc`."""
    if x.ndim != 4:
        raise ValueError(f"group_norm_act: x must be [B, C, H, W], got shape {list(x.shape)}")
    B, C, H, W = x.shape
    check_groups(C, num_groups)
    if x.device.type != "cuda" and not interpreted():
        raise ValueError(f"group_norm_act runs Triton kernels on CUDA tensors, got a {x.device.type} "
                         "tensor; use difflab.accel.group_norm.group_norm_nhwc (or set TRITON_INTERPRET=1 "
                         "before importing difflab, to test the kernels on the CPU)")
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"group_norm_act: kernel must be one of {', '.join(KERNELS)} or None (the rule), "
                         f"got {kernel!r}")
    operands = (x, weight, bias, add, scale, shift)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands):
        raise RuntimeError("group_norm_act has no backward (it is for sampling); call it under "
                           "torch.no_grad(), or use difflab.accel.group_norm.group_norm_nhwc to train")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (C,):
            raise ValueError(f"group_norm_act: {name} must have shape [{C}], got {list(t.shape)}")
    if x.numel() >= 2**31:
        raise ValueError(f"group_norm_act indexes with 32-bit offsets: {x.numel()} elements is too many; "
                         "split the batch, or use difflab.accel.group_norm.group_norm_nhwc")
    return _group_norm_act(x, num_groups, weight, bias, _per_image("add", add, B, C),
                           _per_image("scale", scale, B, C), _per_image("shift", shift, B, C),
                           float(eps), bool(silu), kernel or (plan or {}).get((C, num_groups, H * W)))
