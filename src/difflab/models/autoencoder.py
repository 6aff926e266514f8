"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G; the
Stable Diffusion VAE, diffusers' ``AutoencoderKL``).

    x [B, C, H, W] -> Encoder -> quant_conv -> [mean, logvar] [B, 2c, H/f, W/f]   q(z | x) = N(mean, diag(exp(logvar)))
    z [B, c, H/f, W/f] -> post_quant_conv -> Decoder -> x_hat [B, C, H, W]

Encoder: conv_in, then per level i a stack of residual blocks at width ``channels *
channel_mult[i]`` followed (all levels but the last) by a stride-2 convolution; a middle of
residual block, self-attention (``mid_attention``), residual block; GroupNorm, SiLU, conv_out to
2c channels. The decoder mirrors it (one more residual block per level, nearest-neighbour
upsampling and a convolution between levels). The downsampling factor is f = 2^(levels - 1).
``quant_conv`` and ``post_quant_conv`` are the 1x1 convolutions of SD (``use_quant_conv``).

The latent is a diagonal Gaussian (:class:`DiagonalGaussian`): its log-variance clamped to
[-30, 20] as SD does (exp(20) bounds the variance, exp(-30) keeps its log finite), sampled by
reparameterisation z = mean + exp(logvar / 2) eps. Training minimises a reconstruction loss plus
a small weight (SD: 1e-6) times KL(q(z | x) || N(0, I)) (training/autoencoder.py): the KL term
only keeps the latent's scale in check, the latent space is barely regularised.

The latent scale factor s (SD: 0.18215, the "scaling_factor" of diffusers' config) is 1 / std
of the latents over the training data, so that diffusion sees latents of unit variance:
``encode_latents`` gives s (z - shift), ``decode_latents`` inverts it. It is a buffer of the
module (so it travels with the weights into checkpoints and ``dl.load``); 0 means "not measured
yet" and the latent methods refuse it. ``shift_factor`` (diffusers' SD3 / FLUX option) is 0
unless a loaded VAE sets it.

The blocks are the U-Net's where they fit (:mod:`difflab.models.unet`): its self-attention
(one head, as SD's VAE), its stride-2 downsampling with SD's zeros on the right and bottom
(``padding=0``) and its nearest + convolution upsampling, and difflab's GroupNorm. The residual
block is the U-Net's without the time embedding, which the autoencoder does not have.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..validation import is_int, positive_int
from .norm import GroupNorm, check_groups
from .unet import AttentionBlock, Downsample, Upsample

__all__ = ["DiagonalGaussian", "AutoencoderKL", "VAEResBlock", "PatchDiscriminator", "autoencoder_kl_mnist", "autoencoder_kl_tiny",
           "LOGVAR_RANGE"]

LOGVAR_RANGE = (-30.0, 20.0)  # SD's clamp of the encoder's log-variance


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))) over [B, c, h, w], logvar clamped to [-30, 20] (SD).

    ``sample(generator)`` = mean + std eps (reparameterised: differentiable in mean and logvar);
    ``mode()`` = mean; ``kl()`` = KL(q || N(0, I)) per image,
    0.5 sum_j (mean_j^2 + var_j - 1 - logvar_j), summed over all latent dimensions ([B])."""

    def __init__(self, moments: Tensor) -> None:
        if moments.ndim < 2 or moments.shape[1] % 2:
            raise ValueError(f"the moments [B, 2c, ...] hold mean and log-variance stacked on dim 1, got shape "
                             f"{tuple(moments.shape)}")
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)})"


class VAEResBlock(nn.Module):
    """out = skip(x) + conv2(dropout(SiLU(norm2(conv1(SiLU(norm1(x)))))))   (SD's ResnetBlock, no time input)

    The U-Net's :class:`~difflab.models.unet.ResBlock` without the embedding: ``skip`` a 1x1
    convolution when the width changes, else the identity."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int, norm_eps: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = GroupNorm(norm_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(norm_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.norm1(x, silu=True))
        h = self.conv2(self.dropout(self.norm2(h, silu=True)))
        return self.skip(x) + h


class _Middle(nn.Module):
    """Residual block, self-attention (optional), residual block, at the lowest resolution."""

    def __init__(self, width: int, attention: bool, norm_groups: int, norm_eps: float, dropout: float) -> None:
        super().__init__()
        self.res1 = VAEResBlock(width, width, norm_groups, norm_eps, dropout)
        self.attn = AttentionBlock(width, num_heads=1, norm_groups=norm_groups, norm_eps=norm_eps) if attention else None
        self.res2 = VAEResBlock(width, width, norm_groups, norm_eps, dropout)

    def forward(self, h: Tensor) -> Tensor:
        h = self.res1(h)
        if self.attn is not None:
            h = self.attn(h)
        return self.res2(h)


class _Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, then a resampler (or none)."""

    def __init__(self, blocks: list, resample: Optional[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample

    def forward(self, h: Tensor) -> Tensor:
        for block in self.blocks:
            h = block(h)
        return self.resample(h) if self.resample is not None else h


class PatchDiscriminator(nn.Module):
    """The patch discriminator of SD's autoencoder training (pix2pix's PatchGAN, Isola et al. 2017,
    via taming-transformers' NLayerDiscriminator): logits [B, 1, h, w], one per overlapping patch.

        conv4x4/2 -> LeakyReLU(0.2) -> [conv4x4/2 -> norm -> LeakyReLU] x (layers - 1)
        -> conv4x4/1 -> norm -> LeakyReLU -> conv4x4/1 to one channel

    Widths ``channels`` * min(2^i, 8). GroupNorm instead of pix2pix's BatchNorm: no running
    statistics, so the discriminator is the same function for the autoencoder's pass as for its
    own, and a resumed run computes what the uninterrupted one did."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3, norm_groups: int = 8) -> None:
        super().__init__()
        channels, layers = positive_int("discriminator_channels", channels), positive_int("discriminator_layers", layers)
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            new = channels * min(2 ** i, 8)
            check_groups(new, norm_groups)
            mods += [nn.Conv2d(width, new, 4, stride=2 if i < layers else 1, padding=1),
                     GroupNorm(norm_groups, new), nn.LeakyReLU(0.2)]
            width = new
        mods.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AutoencoderKL(nn.Module):
    """The KL autoencoder: ``encode(x) -> DiagonalGaussian``, ``decode(z) -> x_hat``,
    ``forward(x) -> (x_hat, posterior)`` (z sampled from the posterior, or its mode with
    ``sample_posterior=False``).

    Args:
        in_channels: image channels (1 for MNIST, 3 for RGB); ``out_channels`` defaults to it.
        latent_channels: c, the latent's channels (SD: 4).
        channels: base width; level i has ``channels * channel_mult[i]`` channels.
        channel_mult: one multiplier per level; f = 2^(len(channel_mult) - 1) (SD: (1, 2, 4, 4), f = 8).
        num_res_blocks: residual blocks per encoder level (the decoder has one more), SD: 2.
        mid_attention: self-attention in the middle of encoder and decoder (SD: yes).
        norm_groups, norm_eps: GroupNorm's groups (must divide every width) and eps (SD: 32, 1e-6).
        dropout: before each residual block's second convolution (SD: 0).
        use_quant_conv, use_post_quant_conv: SD's 1x1 convolutions around the latent.
        image_size: the training resolution (recorded; any size divisible by f runs).
        discriminator_channels: a :class:`PatchDiscriminator` of this base width for the adversarial
            loss of training (``autoencoder.adversarial_weight``); None: none. It is training state:
            encode and decode never use it, but it lives here so that the trainer's one optimizer,
            its checkpoints and its exact resume carry it.
        discriminator_layers: its stride-2 layers (pix2pix: 3; 2 for 28x28 digits).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: Optional[int] = None,
        latent_channels: int = 4,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        mid_attention: bool = True,
        norm_groups: int = 32,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        image_size: Optional[int] = None,
        discriminator_channels: Optional[int] = None,
        discriminator_layers: int = 3,
    ) -> None:
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else positive_int("out_channels", out_channels)
        latent_channels = positive_int("latent_channels", latent_channels)
        channels = positive_int("channels", channels)
        num_res_blocks = positive_int("num_res_blocks", num_res_blocks)
        norm_groups = positive_int("norm_groups", norm_groups)
        if isinstance(channel_mult, (str, bytes)) or not isinstance(channel_mult, (list, tuple)) or not channel_mult \
                or not all(is_int(m) and m >= 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive integers, e.g. (1, 2, 4, 4), "
                             f"got {channel_mult!r}")
        for name, flag in (("mid_attention", mid_attention), ("use_quant_conv", use_quant_conv),
                           ("use_post_quant_conv", use_post_quant_conv)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if image_size is not None:
            image_size = positive_int("image_size", image_size)
        widths = [channels * int(m) for m in channel_mult]
        for w in widths:
            check_groups(w, norm_groups)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, latent_channels=latent_channels,
                           channels=channels, channel_mult=tuple(int(m) for m in channel_mult),
                           num_res_blocks=num_res_blocks, mid_attention=mid_attention, norm_groups=norm_groups,
                           norm_eps=float(norm_eps), dropout=float(dropout), use_quant_conv=use_quant_conv,
                           use_post_quant_conv=use_post_quant_conv, image_size=image_size,
                           discriminator_channels=discriminator_channels, discriminator_layers=discriminator_layers)
        self.in_channels, self.out_channels, self.latent_channels = in_channels, out_channels, latent_channels
        self.image_size = image_size
        levels = len(widths)
        self.downsample_factor = 2 ** (levels - 1)
        g, eps = norm_groups, float(norm_eps)

        # ---- encoder
        self.encoder_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.encoder_levels = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            blocks = [VAEResBlock(ch if j == 0 else w, w, g, eps, dropout) for j in range(num_res_blocks)]
            down = Downsample(w, with_conv=True, padding=0) if i < levels - 1 else None  # SD: zeros right, bottom
            self.encoder_levels.append(_Level(blocks, down))
            ch = w
        self.encoder_mid = _Middle(ch, mid_attention, g, eps, dropout)
        self.encoder_norm = GroupNorm(g, ch, eps=eps)
        self.encoder_out = nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None

        # ---- decoder
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.decoder_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        self.decoder_mid = _Middle(widths[-1], mid_attention, g, eps, dropout)
        self.decoder_levels = nn.ModuleList()
        ch = widths[-1]
        for i, w in enumerate(reversed(widths)):
            blocks = [VAEResBlock(ch if j == 0 else w, w, g, eps, dropout) for j in range(num_res_blocks + 1)]
            up = Upsample(w, with_conv=True) if i < levels - 1 else None
            self.decoder_levels.append(_Level(blocks, up))
            ch = w
        self.decoder_norm = GroupNorm(g, ch, eps=eps)
        self.decoder_out = nn.Conv2d(ch, out_channels, 3, padding=1)

        self.discriminator = (PatchDiscriminator(out_channels, discriminator_channels, discriminator_layers,
                                                 norm_groups=min(g, discriminator_channels))
                              if discriminator_channels is not None else None)

        # the latent scale (0: not measured) and shift, saved with the weights
        self.register_buffer("scaling_factor", torch.zeros(()))
        self.register_buffer("shift_factor", torch.zeros(()))

    # ------------------------------------------------------------------ checks
    def _check_image(self, x) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"this autoencoder encodes images [B, {self.in_channels}, H, W] "
                             f"(in_channels={self.in_channels}), got {got}")
        if not x.is_floating_point():
            raise TypeError(f"the autoencoder takes float images in [-1, 1], got dtype {x.dtype}")
        f = self.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"this autoencoder downsamples by f = {f} ({len(self.config['channel_mult'])} levels), so "
                             f"H and W must be divisible by {f}; got {x.shape[2]}x{x.shape[3]} (pad or resize "
                             "the images, or use fewer levels in channel_mult)")

    def _check_latent(self, z) -> None:
        if not isinstance(z, Tensor) or z.ndim != 4 or z.shape[1] != self.latent_channels:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"this autoencoder decodes latents [B, {self.latent_channels}, h, w] "
                             f"(latent_channels={self.latent_channels}), got {got}")
        if not z.is_floating_point():
            raise TypeError(f"latents must be a float tensor, got dtype {z.dtype}")

    # ------------------------------------------------------------------ the maps
    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z | x): the encoder's [mean, logvar] as a :class:`DiagonalGaussian` [B, c, H/f, W/f]."""
        self._check_image(x)
        h = self.encoder_in(x)
        for level in self.encoder_levels:
            h = level(h)
        h = self.encoder_mid(h)
        moments = self.encoder_out(self.encoder_norm(h, silu=True))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def decode(self, z: Tensor) -> Tensor:
        """x_hat = Decoder(post_quant_conv(z)), [B, out_channels, h f, w f]."""
        self._check_latent(z)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        h = self.decoder_mid(self.decoder_in(z))
        for level in self.decoder_levels:
            h = level(h)
        return self.decoder_out(self.decoder_norm(h, silu=True))

    def forward(self, x: Tensor, sample_posterior: bool = True,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, DiagonalGaussian]:
        """(decode(z), q(z | x)) with z ~ q(z | x) (``sample_posterior``) or its mean."""
        if not isinstance(sample_posterior, bool):
            raise TypeError(f"AutoencoderKL(x, sample_posterior) takes images and a bool, got a second argument of "
                            f"type {type(sample_posterior).__name__}: the autoencoder is not a denoiser model(x_t, t) "
                            "(dl.sample runs diffusion models; a latent diffusion model samples latents, which "
                            "autoencoder.decode_latents turns into images)")
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """The latent's [c, H/f, W/f] for images [C, H, W]."""
        c, h, w = image_shape
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by this autoencoder's f = {f}")
        return (self.latent_channels, h // f, w // f)

    # ------------------------------------------------------------------ scaled latents
    @property
    def latent_scale(self) -> float:
        """s, the latent scale factor (1 / std of the training latents); refuses an unmeasured one."""
        s = float(self.scaling_factor)
        if s <= 0:
            raise ValueError("this autoencoder's latent scale factor was not measured (scaling_factor = 0): "
                             "train it with `difflab train-autoencoder` (which measures it at the end), or set "
                             "it with difflab.training.autoencoder.measure_scale_factor")
        return s

    def encode_latents(self, x: Tensor, generator: Optional[torch.Generator] = None,
                       sample: bool = True) -> Tensor:
        """The latents diffusion runs on: s (z - shift), z ~ q(z | x) (or its mean, ``sample=False``)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self.shift_factor) * self.latent_scale

    def decode_latents(self, latents: Tensor) -> Tensor:
        """The images of diffusion latents: decode(latents / s + shift)."""
        return self.decode(latents / self.latent_scale + self.shift_factor)


def autoencoder_kl_mnist(**overrides) -> AutoencoderKL:
    """A CPU-sized autoencoder for 28x28 MNIST digits: f = 4 (7x7 latents of 4 channels: 196
    numbers for 784 pixels), widths 16, 32, 32 at 28, 14, 7; one residual block per level; no
    middle attention (at 7x7 it costs 40% of a CPU training step; ``mid_attention=True`` adds it);
    8 groups. 0.23M parameters; a training step of 64 images takes about 0.14 s on one core."""
    config = dict(in_channels=1, latent_channels=4, channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                  mid_attention=False, norm_groups=8, image_size=28)
    return AutoencoderKL(**{**config, **overrides})


def autoencoder_kl_tiny(**overrides) -> AutoencoderKL:
    """A test-sized autoencoder for 8x8 (or any even size) grayscale images: f = 2, widths 8, 16,
    2 latent channels, no attention."""
    config = dict(in_channels=1, latent_channels=2, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  mid_attention=False, norm_groups=4, image_size=8)
    return AutoencoderKL(**{**config, **overrides})
