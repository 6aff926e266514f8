"""difflab.validation: the argument checks every public function shares."""

import re

import numpy as np
import pytest
import torch

from difflab.validation import (LABEL_DTYPES, NOISE_FIX, X0_FIX, check_labels, float_input, is_int, is_real,
                                model_attribute, model_dtype, null_label, positive_int)


class Conditional(torch.nn.Module):
    """A stand-in difflab model: K = 3 classes, label 3 the null label."""

    num_classes = 3


class Unconditional(torch.nn.Module):
    num_classes = None


def plain_function(x, t, cond=None):
    return x


class Tokenizer:
    max_length, vocab_size = 3, 5


class TextModel(torch.nn.Module):
    """A stand-in text model: token ids [B, 3] in 0 .. 5, 0 the padding (the empty caption)."""

    tokenizer, null_cond = Tokenizer(), 0


class Wrapper(torch.nn.Module):
    """As DDP or the speed layer keep a network: as .module."""

    def __init__(self, module):
        super().__init__()
        self.module = module


# ------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("x", [0, 7, -2, np.int64(3), np.int8(-1), np.uint8(255)])
def test_integers_python_and_numpy(x):
    assert is_int(x) and is_real(x)


@pytest.mark.parametrize("x", [True, False, np.bool_(True), 3.0, "3", None, torch.tensor(3), 1 + 0j])
def test_not_integers_bool_above_all(x):
    assert not is_int(x)


@pytest.mark.parametrize("x", [0.5, -1e9, float("inf"), np.float32(0.1), np.float64(2)])
def test_reals(x):
    assert is_real(x) and not is_int(x)


@pytest.mark.parametrize("x", [True, np.bool_(False), "1.0", None, 1j, torch.tensor(1.0)])
def test_not_reals(x):
    assert not is_real(x)


def test_positive_int_returns_a_python_int():
    assert positive_int("steps", 5) == 5
    n = positive_int("steps", np.int64(5))
    assert n == 5 and type(n) is int


@pytest.mark.parametrize("value", [0, -3, True, 2.0, "4", None])
def test_positive_int_names_the_argument(value):
    with pytest.raises(ValueError, match=rf"^n \(the number of points\) must be a positive integer, got {value!r}$"):
        positive_int("n (the number of points)", value)


# ------------------------------------------------------------------------ data and noise
def test_model_dtype_is_the_parameters_dtype():
    assert model_dtype(torch.nn.Linear(2, 2)) == torch.float32
    assert model_dtype(torch.nn.Linear(2, 2).double()) == torch.float64
    assert model_dtype(plain_function) is None  # no parameters: any float dtype


def test_float_input_casts_float_data_to_the_models_dtype():
    net = torch.nn.Linear(2, 2)
    x = torch.randn(4, 2, dtype=torch.float64)
    assert float_input(x, "x0", net, X0_FIX).dtype == torch.float32
    assert float_input(x, "x0", net, X0_FIX, dtype=torch.float16).dtype == torch.float16
    assert float_input(x, "x0", plain_function, X0_FIX) is x  # a function takes any float dtype
    same = x.float()
    assert float_input(same, "x0", net, X0_FIX) is same  # no copy when nothing changes


def test_float_input_refuses_integers_with_the_fix():
    pixels = torch.zeros(4, 2, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"x0 must be a float tensor, got torch.uint8; scale the data to \[-1, 1\]"):
        float_input(pixels, "x0", plain_function, X0_FIX)
    with pytest.raises(TypeError, match="noise must be a float tensor, got torch.bool; use standard normal noise"):
        float_input(torch.ones(2, dtype=torch.bool), "noise", plain_function, NOISE_FIX)
    with pytest.raises(TypeError, match="noise must be a torch tensor, got ndarray"):
        float_input(np.zeros(2), "noise", plain_function, NOISE_FIX)


# --------------------------------------------------------------------------- class labels
def test_label_dtypes_are_the_integer_dtypes():
    assert torch.int64 in LABEL_DTYPES and torch.uint8 in LABEL_DTYPES
    assert torch.bool not in LABEL_DTYPES and torch.float32 not in LABEL_DTYPES


def test_labels_come_back_as_a_long_tensor():
    assert check_labels(Conditional(), None, 2) is None  # no labels: the unconditional model
    cond = check_labels(Conditional(), torch.tensor([0, 3], dtype=torch.int32), 2)
    assert cond.dtype == torch.long and cond.tolist() == [0, 3]  # 3 = K: the null label
    assert check_labels(Conditional(), np.int64(2), 3).tolist() == [2, 2, 2]  # one int labels the batch
    assert check_labels(Conditional(), 1, 2, torch.device("meta")).device.type == "meta"


@pytest.mark.parametrize("bad", [torch.tensor([0.0, 1.0]), torch.tensor([True, False]), torch.tensor([0, 1, 2]),
                                 torch.zeros(2, 1, dtype=torch.long), [0, 1], True])
def test_labels_of_the_wrong_dtype_or_shape(bad):
    with pytest.raises(ValueError, match=r"cond must be a long tensor of class labels with shape \[2\], got"):
        check_labels(Conditional(), bad, 2)


@pytest.mark.parametrize("labels", [[0, 4], [-1, 0]])
def test_labels_out_of_range_name_the_range_and_the_null_label(labels):
    lo, hi = min(labels), max(labels)
    msg = rf"^class labels must lie in 0 \.\. 2 \(or 3 for 'no label'\), got values in \[{lo}, {hi}\]$"
    with pytest.raises(ValueError, match=msg):
        check_labels(Conditional(), torch.tensor(labels), 2)


def test_labels_for_an_unconditional_model_are_refused():
    with pytest.raises(ValueError, match="the model is not class-conditional"):
        check_labels(Unconditional(), torch.tensor([0, 1]), 2)


def test_a_plain_function_has_no_range_to_check():
    assert check_labels(plain_function, torch.tensor([0, 99]), 2).tolist() == [0, 99]
    with pytest.raises(ValueError, match="cond must be a long tensor"):
        check_labels(plain_function, torch.tensor([0.5, 1.0]), 2)


def test_labels_on_an_accelerator_are_not_read():
    """Reading values off a GPU would stall the step loop on a host-device sync: shape and dtype
    only there (a meta tensor stands in: it has no values to read)."""
    cond = torch.full((2,), 99, dtype=torch.long, device="meta")
    assert check_labels(Conditional(), cond, 2).device.type == "meta"


# ------------------------------------------------- numpy integers wherever Python ints are
def test_numpy_integers_are_taken_wherever_python_ints_are(tmp_path, mnist_dir):
    """A count read from an array (``np.int64``) works as the Python int would, with the same
    result: every public function checks integers through :func:`is_int` / :func:`positive_int`."""
    import difflab as dl
    from difflab.data import images as images_mod
    from difflab.data import mnist as mnist_mod
    from difflab.data.grids import to_image_grid
    from difflab.evaluation.precision_recall import knn_radii, precision_recall
    from difflab.training.generate import generate

    # the U-Net's sizes: the same network, its config plain Python (it serializes)
    net = dl.models.unet_tiny(num_classes=np.int64(10), norm_groups=np.int64(4), num_res_blocks=np.int64(1),
                              channel_mult=(np.int64(1), np.int64(2)), image_size=np.int64(8), num_heads=np.int64(2))
    ref = dl.models.unet_tiny(num_classes=10)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert all(type(v) is int for v in (net.config["norm_groups"], net.config["num_classes"], net.image_size))
    assert dl.models.UNet(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
                          attention_levels=[np.int64(1)], head_dim=np.int64(8)).attention_levels == (1,)
    with pytest.raises(ValueError, match=r"^norm_groups must be a positive integer, got True$"):
        dl.models.unet_tiny(norm_groups=True)

    # the number of samples (run.sample passes n to generate)
    proc = dl.GaussianDiffusion(dl.schedules.linear(50))
    torch.manual_seed(0)
    small = dl.models.unet_tiny()
    x = generate(small, proc, np.int64(2), (1, 8, 8), steps=np.int64(2), seed=np.int64(0))
    assert torch.equal(x, generate(small, proc, 2, (1, 8, 8), steps=2, seed=0)) and x.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"^n \(the number of samples\) must be a positive integer, got "):
        generate(small, proc, np.int64(0), (1, 8, 8))

    # image grids, image folders, MNIST sizes
    imgs = torch.rand(5, 1, 4, 4) * 2 - 1
    assert np.array_equal(to_image_grid(imgs, nrow=np.int64(2)), to_image_grid(imgs, nrow=2))
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((6, 6), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    folder, _ = images_mod.load_folder(tmp_path, image_size=np.int64(4))
    assert torch.equal(folder, images_mod.load_folder(tmp_path, image_size=4)[0]) and folder.shape == (2, 1, 4, 4)
    for mode in ("pad", "resize"):
        digits, _ = mnist_mod.load(mnist_dir, "t10k", image_size=np.int64(32), mode=mode)
        assert torch.equal(digits, mnist_mod.load(mnist_dir, "t10k", image_size=32, mode=mode)[0])
        assert digits.shape[-2:] == (32, 32)

    # k of k-NN precision / recall, box masks, timestep grids
    feats = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(knn_radii(feats, np.int64(3)), knn_radii(feats, 3))
    assert precision_recall(feats, feats[:10], k=np.int64(3)) == precision_recall(feats, feats[:10], k=3)
    assert torch.equal(dl.editing.masks.box_mask((8, 8), *map(np.int64, (1, 2, 5, 6))),
                       dl.editing.masks.box_mask((8, 8), 1, 2, 5, 6))
    assert torch.equal(dl.samplers.timesteps(1000, np.int64(10)), dl.samplers.timesteps(1000, 10))


# ------------------------------------------------------------------------------ text conditions
def test_token_ids_of_a_text_model_are_checked_through_wrappers():
    ids = torch.tensor([[1, 5, 0], [0, 0, 0]], dtype=torch.int32)
    for model in (TextModel(), Wrapper(TextModel())):
        out = check_labels(model, ids, 2)
        assert out.dtype == torch.long and torch.equal(out, ids.long())
    with pytest.raises(ValueError, match=r"token ids, an integer tensor \[2, 3\].*tokenizer.encode"):
        check_labels(TextModel(), torch.tensor([1, 2]), 2)  # class labels to a text model
    with pytest.raises(ValueError, match=r"token ids must lie in 0 \.\. 5"):
        check_labels(TextModel(), torch.tensor([[1, 6, 0], [0, 0, 0]]), 2)
    with pytest.raises(ValueError, match=r"token ids"):
        check_labels(TextModel(), "a bold 7", 2)  # a prompt, not its ids


def test_composed_prompts_are_taken_only_where_the_caller_composes_them():
    """Token ids [B, K, L] (K prompts joined by " AND ") are checked part by part with composed=True
    (the samplers); elsewhere (editing, inversion, a direct network call) they are refused by name."""
    ids = torch.tensor([[[1, 2, 0], [3, 0, 0]], [[4, 0, 0], [0, 0, 0]]])
    assert torch.equal(check_labels(Wrapper(TextModel()), ids, 2, composed=True), ids)
    with pytest.raises(ValueError, match=r"token ids must lie in 0 \.\. 5"):
        check_labels(TextModel(), ids + 5, 2, composed=True)
    with pytest.raises(ValueError, match=r"composed prompt .* only sampling takes .*one prompt per sample"):
        check_labels(TextModel(), ids, 2)
    for bad in (ids[:, :, :2], ids[:1], ids[:, :0]):  # short ids, another batch, no part: named in its own shape
        shape = re.escape(str(tuple(bad.shape)))
        with pytest.raises(ValueError, match=r"composed prompt is token ids \[2, K, 3\].*" + shape):
            check_labels(TextModel(), bad, 2, composed=True)


def test_null_label_is_the_empty_caption_or_the_null_class():
    assert null_label(TextModel()) == 0 and null_label(Wrapper(TextModel())) == 0
    assert null_label(Conditional()) == 3
    assert null_label(Unconditional()) is None and null_label(plain_function) is None
    assert model_attribute(Wrapper(Conditional()), "num_classes") == 3
