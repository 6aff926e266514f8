"""The benchmark's network in both libraries: DDPM's CIFAR-10 U-Net and a CPU-sized one."""

from __future__ import annotations

import torch

from difflab.models.unet import UNet

T = 1000  # diffusion steps of the training schedule

# The DDPM CIFAR-10 network, in difflab's words (unet_cifar10) -- and a CPU-sized one.
NETWORKS = {
    "ddpm_cifar10": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,),
                         image_size=32, dropout=0.1, num_heads=1, norm_groups=32),
    "tiny": dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 image_size=8, dropout=0.1, num_heads=1, norm_groups=8),
}


def diffusers_unet(net: dict):
    """diffusers' UNet2DModel with the same structure as ``UNet(**net)`` (google/ddpm-cifar10-32's
    settings: one attention head of the block's width, downsample_padding 0, freq_shift 1)."""
    from diffusers import UNet2DModel

    mult, attn = net["channel_mult"], set(net["attention_levels"])
    levels = len(mult)
    return UNet2DModel(
        sample_size=net["image_size"], in_channels=3, out_channels=3, layers_per_block=net["num_res_blocks"],
        block_out_channels=tuple(net["channels"] * m for m in mult),
        down_block_types=tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels)),
        up_block_types=tuple("AttnUpBlock2D" if levels - 1 - i in attn else "UpBlock2D" for i in range(levels)),
        attention_head_dim=None, norm_num_groups=net["norm_groups"], norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, dropout=net["dropout"],
    )


def difflab_unet(net: dict) -> UNet:
    return UNet(in_channels=3, **net)


def parameter_counts(net: dict, have_diffusers: bool) -> dict:
    """Parameters of each library's network (built on the meta device: no memory, no time)."""
    params = {}
    with torch.device("meta"):
        params["difflab"] = sum(p.numel() for p in difflab_unet(net).parameters())
        if have_diffusers:
            params["diffusers"] = sum(p.numel() for p in diffusers_unet(net).parameters())
    return params
