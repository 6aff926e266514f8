"""Text conditioning (src/difflab/models/text.py): the word tokenizer, the jointly trained text encoder
(against torch's own TransformerEncoderLayer with the same weights), the text-conditioned wrapper and
its null condition, the registry builders, and a frozen Hugging Face encoder on tiny random CLIP and T5
models built offline, against transformers' own forward."""

import copy
import inspect
import json

import pytest
import torch
from networks import perturb
from safetensors.torch import load_file, save_file
from torch import nn

import difflab as dl
from difflab.models import DiT, TextConditioned, TextEncoder, UNet, WordTokenizer, build_vocab
from difflab.models.text import words
from difflab.validation import check_token_ids
from difflab.validation import model_attribute

CAPTIONS = ["a bold 7 on the left", "seven, thin strokes, top right", "a small 3 in the centre"]
VOCAB = build_vocab(CAPTIONS)
TINY_DIT = dict(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=4)
TINY_TEXT = dict(max_length=8, text_width=16, text_depth=2, text_heads=2)


def tiny_text_dit(**kw):
    torch.manual_seed(0)
    return dl.models.build("text_dit", vocab=VOCAB, **{**TINY_TEXT, **TINY_DIT, **kw})


def xt(B=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, 1, 8, 8, generator=g), torch.tensor([10, 500, 990])[:B]


# ------------------------------------------------------------------------------ tokenizer
def test_the_vocabulary_is_the_sorted_lower_case_words_split_on_anything_but_letters_and_digits():
    assert words("Seven, thin strokes!") == ["seven", "thin", "strokes"]
    assert words("a 7-shaped_thing") == ["a", "7", "shaped", "thing"]
    assert build_vocab(["B a", "a, 7"]) == ["7", "a", "b"]
    assert VOCAB == sorted(set(VOCAB)) and "7" in VOCAB and "seven" in VOCAB and "," not in VOCAB
    with pytest.raises(TypeError, match="list of captions"):
        build_vocab("a bold 7")
    with pytest.raises(ValueError, match="no words"):
        build_vocab(["...", ""])


def test_the_tokenizer_maps_words_to_their_place_in_the_vocabulary_and_back():
    tok = WordTokenizer(["7", "a", "bold", "left"], max_length=5)
    ids = tok.encode(["A bold 7", "left", ""])
    assert ids.dtype == torch.long and ids.tolist() == [[2, 3, 1, 0, 0], [4, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert tok.vocab_size == 4 and tok.encode("a").shape == (1, 5)
    assert tok.decode(ids) == ["a bold 7", "left", ""] and tok.decode(ids[0]) == ["a bold 7"]
    tok = WordTokenizer(VOCAB, max_length=8)
    assert tok.decode(tok.encode(CAPTIONS)) == [" ".join(words(c)) for c in CAPTIONS]


def test_words_outside_the_vocabulary_are_all_named():
    tok = WordTokenizer(VOCAB, max_length=8)
    with pytest.raises(ValueError, match=r"'purple', 'nine'.*only the \d+ words of its training captions") as err:
        tok.encode(["a purple 7", "a nine", "purple"])
    assert "bold" in str(err.value)  # shows some of the words it knows


def test_an_over_long_prompt_is_truncated_with_a_warning_naming_the_limit():
    tok = WordTokenizer(VOCAB, max_length=4)
    with pytest.warns(UserWarning, match="limit of 4 words"):
        ids = tok.encode(["a bold 7 on the left", "a 7"])
    assert tok.decode(ids) == ["a bold 7 on", "a 7"]


def test_bad_vocabularies_and_ids_are_refused_by_name():
    for vocab, match in ((["a", "a"], "repeated"), (["a b"], "single lower-case words"), ([], "non-empty"),
                         ("abc", "non-empty list"), (["Bold"], "lower-case")):
        with pytest.raises(ValueError, match=match):
            WordTokenizer(vocab)
    with pytest.raises(ValueError, match="max_length"):
        WordTokenizer(VOCAB, max_length=0)
    with pytest.raises(TypeError, match="string or a list of strings"):
        WordTokenizer(VOCAB).encode(7)
    with pytest.raises(ValueError, match=r"integer tensor \[B, 4\].*float32"):
        check_token_ids(torch.zeros(2, 4), 5, 4)
    with pytest.raises(ValueError, match=r"0 \.\. 5"):
        check_token_ids(torch.tensor([[6, 0, 0, 0]]), 5, 4)


# ------------------------------------------------------------------------------ text encoder
def torch_reference(enc: TextEncoder) -> nn.TransformerEncoder:
    """torch's own pre-LN encoder layers (norm_first, exact GELU, no dropout) holding enc's weights."""
    width, heads = enc.width, enc.blocks[0].attn.heads
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    ref = nn.TransformerEncoder(layer, len(enc.blocks), norm=copy.deepcopy(enc.norm), enable_nested_tensor=False)
    with torch.no_grad():
        for mine, theirs in zip(enc.blocks, ref.layers):
            theirs.self_attn.in_proj_weight.copy_(mine.attn.qkv.weight)  # [W_q; W_k; W_v]
            theirs.self_attn.in_proj_bias.copy_(mine.attn.qkv.bias)
            theirs.self_attn.out_proj.load_state_dict(mine.attn.proj.state_dict())
            theirs.linear1.load_state_dict(mine.mlp[0].state_dict())
            theirs.linear2.load_state_dict(mine.mlp[2].state_dict())
            theirs.norm1.load_state_dict(mine.norm1.state_dict())
            theirs.norm2.load_state_dict(mine.norm2.state_dict())
    return ref.eval()


def test_the_encoder_is_a_pre_ln_transformer_over_start_token_and_words_with_padding_masked():
    """Against torch's nn.TransformerEncoder with the same weights and src_key_padding_mask: the
    inputs are [start; E ids] + positions, the real positions' outputs agree."""
    torch.manual_seed(0)
    tok = WordTokenizer(VOCAB, max_length=8)
    enc = TextEncoder(tok.vocab_size, 8, width=16, depth=2, heads=2)
    ids = tok.encode(CAPTIONS + [""])
    context, mask = enc(ids)
    assert context.shape == (4, 9, 16) and mask.dtype == torch.bool
    assert torch.equal(mask, torch.cat([torch.ones(4, 1, dtype=torch.bool), ids != 0], dim=1))
    h = torch.cat([enc.start.expand(4, 1, 16), enc.token_embedding(ids)], dim=1) + enc.position
    with torch.no_grad():
        expected = torch_reference(enc)(h, src_key_padding_mask=~mask)
    torch.testing.assert_close(context[mask], expected[mask], rtol=0, atol=1e-5)


def test_an_encoder_of_depth_zero_is_a_bag_of_words_with_places():
    """depth 0: context = LN([s; E ids] + P), each position its own word's and place's alone."""
    torch.manual_seed(0)
    enc = TextEncoder(9, 4, width=8, depth=0, heads=2)
    ids = torch.tensor([[1, 2, 3, 0], [1, 5, 3, 0]])
    context, mask = enc(ids)
    want = torch.nn.functional.layer_norm(
        torch.cat([enc.start.expand(2, 1, -1), enc.token_embedding(ids)], 1) + enc.position[:5], (8,),
        enc.norm.weight, enc.norm.bias, enc.norm.eps)
    torch.testing.assert_close(context, want)
    assert torch.equal(context[0, [0, 1, 3]], context[1, [0, 1, 3]])  # the second word changed, only its place
    with pytest.raises(ValueError, match="depth must be an integer >= 0"):
        TextEncoder(9, 4, depth=-1)


def test_appending_padding_leaves_the_real_positions_unchanged():
    torch.manual_seed(0)
    tok = WordTokenizer(VOCAB, max_length=8)
    enc = TextEncoder(tok.vocab_size, 8, width=16, depth=2, heads=2)
    ids = tok.encode(CAPTIONS)
    short = ids[:, :6]  # the longest caption has 6 words
    assert not ids[:, 6:].any()
    full, full_mask = enc(ids)
    cut, cut_mask = enc(short)
    assert torch.equal(full_mask[:, :7], cut_mask) and not full_mask[:, 7:].any()
    torch.testing.assert_close(full[:, :7][cut_mask], cut[cut_mask], rtol=0, atol=1e-6)


def test_the_empty_caption_has_one_attendable_token_and_finite_outputs():
    torch.manual_seed(0)
    enc = TextEncoder(len(VOCAB), 8, width=16, depth=2, heads=2)
    context, mask = enc(torch.zeros(2, 8, dtype=torch.long))
    assert mask[:, 0].all() and not mask[:, 1:].any()
    assert torch.isfinite(context).all()
    torch.testing.assert_close(context[0], context[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"integer tensor \[B, 8\].*fewer than 8"):
        enc(torch.zeros(2, 9, dtype=torch.long))


# ------------------------------------------------------------------------------ the wrapper
def test_the_text_model_keeps_the_model_convention_and_reads_the_networks_attributes():
    model = tiny_text_dit(learn_sigma=True)
    x, t = xt()
    ids = model.tokenizer.encode(CAPTIONS)
    assert model(x, t, ids).shape == (3, 2, 8, 8)
    assert model.null_cond == 0 and not hasattr(model, "num_classes")
    assert (model.learn_sigma, model.guidance_input, model.image_size, model.in_channels, model.out_channels) \
        == (True, False, 8, 1, 2)
    assert model_attribute(model, "learn_sigma") is True and model_attribute(model, "tokenizer") is model.tokenizer
    wrapped = nn.Module()
    wrapped.module = model  # (as DDP and the speed layer keep it)
    assert model_attribute(wrapped, "learn_sigma") is True and model_attribute(wrapped, "null_cond") == 0


def test_a_prompt_without_words_is_refused_not_read_as_the_empty_caption():
    tok = WordTokenizer(VOCAB, max_length=8)
    with pytest.raises(ValueError, match=r"prompts without a word: '!!!'.*\"\" is the empty caption"):
        tok.encode(["a 7", "!!!"])
    assert (tok.encode(["", " "]) == 0).all()  # "" (and blanks): the empty caption


def test_the_null_condition_is_the_empty_caption():
    """cond=None, the samplers' full_like(ids, null_cond) and the ids of "" are one condition."""
    model = perturb(tiny_text_dit())
    x, t = xt()
    ids = model.tokenizer.encode(CAPTIONS)
    empty = model.tokenizer.encode([""] * 3)
    with torch.no_grad():
        out_none, out_empty = model(x, t), model(x, t, empty)
        out_null = model(x, t, torch.full_like(ids, model.null_cond))
        out_text = model(x, t, ids)
    assert torch.equal(out_none, out_null) and torch.equal(out_null, out_empty)
    assert not torch.allclose(out_text, out_null, atol=1e-4)  # (the caption reaches the output)


def test_the_loss_gradient_reaches_the_text_encoder():
    model = perturb(tiny_text_dit())
    x, t = xt()
    model(x, t, model.tokenizer.encode(CAPTIONS)).square().sum().backward()
    grads = {n: p.grad for n, p in model.text_encoder.named_parameters()}
    assert all(g is not None for g in grads.values())
    for name in ("start", "position", "token_embedding.weight", "blocks.0.attn.qkv.weight", "norm.weight"):
        assert grads[name].abs().sum() > 0, name
    assert not grads["token_embedding.weight"][0].any()  # padding: no gradient


class Recorder(nn.Module):
    """A cross-attending network that records what it is called with."""

    context_dim, learn_sigma = 16, False

    def forward(self, x, t, cond=None, *args, **kwargs):
        self.call = (cond, args, kwargs)
        return x


def test_guidance_is_passed_only_when_given_and_the_context_is_keywords():
    tok = WordTokenizer(VOCAB, max_length=8)
    model = TextConditioned(Recorder(), tok, TextEncoder(tok.vocab_size, 8, 16, 1, 2))
    x, t = xt()
    model(x, t, tok.encode(CAPTIONS))
    cond, args, kwargs = model.net.call
    assert cond is None and args == () and set(kwargs) == {"context", "context_mask"}
    assert kwargs["context"].shape == (3, 9, 16) and kwargs["context_mask"].shape == (3, 9)
    model(x, t, None, 2.5)
    assert model.net.call[1] == (2.5,)


def test_bad_conditions_and_mismatched_parts_are_refused_by_name():
    model = tiny_text_dit()
    x, t = xt()
    ids = model.tokenizer.encode(CAPTIONS)
    for cond, match in ((ids.float(), "integer tensor"), (ids[:, :5], r"\[3, 8\]"), (ids[:2], r"\[3, 8\]"),
                        (torch.tensor([1, 2, 3]), "token ids"), (ids + len(VOCAB), "0 .. ")):
        with pytest.raises(ValueError, match=match):
            model(x, t, cond)
    tok = WordTokenizer(VOCAB, max_length=8)
    enc = TextEncoder(tok.vocab_size, 8, 16, 1, 2)
    with pytest.raises(ValueError, match="context_dim=16"):
        TextConditioned(DiT(**TINY_DIT, context_dim=8), tok, enc)
    with pytest.raises(ValueError, match="drop num_classes"):
        TextConditioned(DiT(**TINY_DIT, context_dim=16, num_classes=3), tok, enc)
    with pytest.raises(ValueError, match="max_length"):
        TextConditioned(DiT(**TINY_DIT, context_dim=16), WordTokenizer(VOCAB, 6), enc)


# ------------------------------------------------------------------------------ registry builders
def test_a_built_text_model_round_trips_its_state_dict_through_the_registry():
    model = perturb(tiny_text_dit())
    state = model.state_dict()
    assert any(k.startswith("text_encoder.") for k in state) and any(k.startswith("net.") for k in state)
    torch.manual_seed(1)  # another initialisation, then the saved weights
    again = dl.models.build("text_dit", vocab=VOCAB, **TINY_TEXT, **TINY_DIT)
    again.load_state_dict(state)
    x, t = xt()
    ids = model.tokenizer.encode(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(model(x, t, ids), again(x, t, ids))
    assert again.tokenizer.vocab == VOCAB and again.tokenizer.max_length == 8


def test_the_builders_refuse_a_missing_vocabulary_and_a_pretrained_encoders_path():
    with pytest.raises(TypeError, match="vocab"):
        dl.models.build("text_dit", **TINY_DIT)
    with pytest.raises(ValueError, match="non-empty list of words"):
        dl.models.build("text_dit", vocab=None, **TINY_DIT)
    with pytest.raises(ValueError, match="argument of hf_text_unet and hf_text_dit"):
        dl.models.build("text_dit", vocab=VOCAB, text_encoder="clip/", **TINY_DIT)
    # the trainer fills vocab from the captions for the builders that take it, not the pretrained ones
    assert dl.models.registry.accepts("text_unet", "vocab") and dl.models.registry.accepts("text_dit", "vocab")
    assert not dl.models.registry.accepts("hf_text_unet", "vocab")
    assert not dl.models.registry.accepts("hf_text_dit", "vocab")


@pytest.mark.skipif("context_dim" not in inspect.signature(UNet).parameters,
                    reason="the U-Net's cross-attention (context_dim) has not landed")
def test_the_text_unet_builds_runs_and_round_trips():
    torch.manual_seed(0)
    kw = dict(in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
              image_size=8, norm_groups=8, cross_attention_levels=(1,))
    model = perturb(dl.models.build("text_unet", vocab=VOCAB, **TINY_TEXT, **kw))
    x, t = xt()
    ids = model.tokenizer.encode(CAPTIONS)
    with torch.no_grad():
        out = model(x, t, ids)
        assert out.shape == x.shape and torch.equal(model(x, t), model(x, t, torch.zeros_like(ids)))
        assert not torch.allclose(out, model(x, t), atol=1e-5)
    again = dl.models.build("text_unet", vocab=VOCAB, **TINY_TEXT, **kw)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x, t, ids), out)


# ------------------------------------------------------------------------------ frozen Hugging Face encoders
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
HF_WORDS = SPECIALS + VOCAB


def hf_tokenizer(transformers, bos: bool):
    """A word-level tokenizer built offline (CLIP's layout [BOS] words [EOS] with bos; T5's words [EOS] without)."""
    tokenizers = pytest.importorskip("tokenizers")
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(HF_WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    specials = [("<bos>", 1), ("<eos>", 2)]
    tk.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A <eos>" if bos else "$A <eos>", special_tokens=specials if bos else specials[1:])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                                pad_token="<pad>", unk_token="<unk>", model_max_length=12)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Tiny random CLIP text model and T5 encoder folders, as save_pretrained writes them."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(HF_WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=12, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(HF_WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, pad_token_id=0,
        eos_token_id=2, decoder_start_token_id=0))
    for name, model, bos in (("clip", clip, True), ("t5", t5, False)):
        model.save_pretrained(root / name)
        hf_tokenizer(transformers, bos).save_pretrained(root / name)
    return root


def reference(folder, texts, max_length=12):
    """transformers' own tokenizer and forward: (last hidden states, attention mask)."""
    transformers = pytest.importorskip("transformers")
    kind = transformers.CLIPTextModel if folder.name == "clip" else transformers.T5EncoderModel
    model = kind.from_pretrained(folder, local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    enc = tok(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).last_hidden_state, enc["attention_mask"].bool()


@pytest.mark.parametrize("name", ["clip", "t5"])
def test_a_frozen_hf_encoder_computes_transformers_own_embeddings(hf_folders, name):
    enc = dl.models.HFTextEncoder(hf_folders / name)  # max_length: the tokenizer's (12)
    texts = CAPTIONS + ["7"]
    ids = enc.tokenizer.encode(texts)
    assert ids.shape == (4, 12) and enc.width == 16 and enc.vocab_size == len(HF_WORDS)
    assert enc.tokenizer.decode(ids) == [" ".join(words(c)) for c in texts]
    context, mask = enc(ids)
    expected, expected_mask = reference(hf_folders / name, texts)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(context, expected, rtol=0, atol=1e-6)
    # the null condition (all zeros, and what encode gives "") is transformers' encoding of ""
    assert not enc.tokenizer.encode("").any()
    null, null_mask = enc(torch.zeros(2, 12, dtype=torch.long))
    empty, empty_mask = reference(hf_folders / name, ["", ""])
    assert torch.equal(null_mask, empty_mask) and null_mask.sum(1).tolist() == ([2, 2] if name == "clip" else [1, 1])
    torch.testing.assert_close(null, empty, rtol=0, atol=1e-6)


def test_frozen_embeddings_are_cached_per_caption_with_a_bound(hf_folders):
    enc = dl.models.HFTextEncoder(hf_folders / "clip", cache_size=2)
    ids = enc.tokenizer.encode(["a bold 7", "a bold 7", "seven"])
    first, _ = enc(ids)
    assert enc.cache_info() == {"hits": 0, "misses": 3, "size": 2, "max_size": 2}  # two distinct rows computed
    again, _ = enc(ids)
    assert enc.cache_info()["hits"] == 3 and torch.equal(first, again)
    enc(enc.tokenizer.encode(["a small 3"]))  # a third caption: the least recently used goes
    assert enc.cache_info()["size"] == 2 and enc.cache_info()["misses"] == 4
    enc(ids[:1])  # "a bold 7" was the least recently used: computed again
    assert enc.cache_info()["misses"] == 5
    expected, _ = reference(hf_folders / "clip", ["a bold 7", "a bold 7", "seven"])
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)


def test_a_frozen_encoders_weights_stay_out_of_the_state_dict_and_the_ema(hf_folders):
    torch.manual_seed(0)
    model = dl.models.build("hf_text_dit", text_encoder=str(hf_folders / "clip"), **TINY_DIT)
    assert model.tokenizer is model.text_encoder.tokenizer and model.tokenizer.max_length == 12  # the tokenizer's
    state = model.state_dict()
    assert not [k for k in state if k.startswith("text_encoder.")]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.net.parameters())
    ema = copy.deepcopy(model)  # (training/ema.py's copy): the frozen model is shared, not copied
    assert ema.text_encoder.frozen is model.text_encoder.frozen
    model.train()
    assert not model.text_encoder.frozen.model.training
    assert not any(p.requires_grad for p in model.text_encoder.frozen.model.parameters())
    # reloaded from the path
    again = dl.models.build("hf_text_dit", text_encoder=str(hf_folders / "clip"), **TINY_DIT)
    again.load_state_dict(state)
    x, t = xt()
    ids = model.tokenizer.encode(CAPTIONS)
    perturb(model.net)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = model(x, t, ids)
        assert torch.equal(out, again(x, t, ids))
        assert torch.equal(model(x, t), model(x, t, torch.zeros_like(ids)))
        model.double()  # dtype and device moves reach the frozen model
        assert model.text_encoder.frozen.model.dtype == torch.float64
        torch.testing.assert_close(model(x.double(), t, ids), out.double(), rtol=0, atol=1e-5)


def test_a_frozen_encoder_refuses_a_missing_folder_a_missing_tokenizer_and_other_models(hf_folders, tmp_path):
    with pytest.raises(ValueError, match="no Hugging Face model at .*nothing is downloaded"):
        dl.models.HFTextEncoder(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((hf_folders / "clip" / "config.json").read_text())
    with pytest.raises(ValueError, match="no tokenizer beside the model"):
        dl.models.HFTextEncoder(bare)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "tokenizer.json").write_text((hf_folders / "clip" / "tokenizer.json").read_text())
    with pytest.raises(ValueError, match="'bert' model.*CLIP text models, T5 encoders"):
        dl.models.HFTextEncoder(bert)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / f).write_text((hf_folders / "clip" / f).read_text())
    weights = load_file(hf_folders / "clip" / "model.safetensors")
    weights.pop(next(k for k in weights if k.endswith("final_layer_norm.weight")))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lack 1 of the CLIPTextModel's tensors.*final_layer_norm"):
        dl.models.HFTextEncoder(broken)
    with pytest.raises(ValueError, match="more than the 12 positions"):
        dl.models.HFTextEncoder(hf_folders / "clip", max_length=13)
    enc = dl.models.HFTextEncoder(hf_folders / "t5", max_length=4)
    with pytest.warns(UserWarning, match="limit of 4 tokens"):
        ids = enc.tokenizer.encode(["a bold 7 on the left"])
    assert enc.tokenizer.decode(ids) == ["a bold 7"]  # (three words and T5's end token)


@pytest.mark.skipif("context_dim" not in inspect.signature(UNet).parameters,
                    reason="the U-Net's cross-attention (context_dim) has not landed")
def test_a_unet_takes_a_frozen_encoders_hidden_states(hf_folders):
    torch.manual_seed(0)
    model = perturb(dl.models.build("hf_text_unet", text_encoder=str(hf_folders / "t5"), max_length=6, in_channels=1,
                                    channels=16, channel_mult=(1, 2), num_res_blocks=1, image_size=8, norm_groups=8,
                                    cross_attention_levels=(1,)))
    assert model.net.context_dim == 16 and model.tokenizer.max_length == 6
    x, t = xt()
    ids = model.tokenizer.encode(["a bold 7", "seven", "a small 3"])  # (T5: the words and its end token)
    with torch.no_grad():
        out = model(x, t, ids)
        assert out.shape == x.shape and not torch.allclose(out, model(x, t), atol=1e-5)


def test_a_pipeline_folder_and_a_whole_clip_model_give_their_text_encoders(hf_folders, tmp_path):
    """A Stable Diffusion pipeline's layout (text_encoder/ and tokenizer/ folders), given as the pipeline
    or as its text_encoder/; and a whole CLIP model (text and vision), whose text half is taken."""
    transformers = pytest.importorskip("transformers")
    pipeline = tmp_path / "pipeline"
    for part, files in (("text_encoder", ("config.json", "model.safetensors")),
                        ("tokenizer", ("tokenizer.json", "tokenizer_config.json"))):
        (pipeline / part).mkdir(parents=True)
        for f in files:
            (pipeline / part / f).write_bytes((hf_folders / "clip" / f).read_bytes())
    texts = ["a bold 7", "seven"]
    expected, _ = reference(hf_folders / "clip", texts)
    for path in (pipeline, pipeline / "text_encoder"):
        enc = dl.models.HFTextEncoder(path)
        torch.testing.assert_close(enc(enc.tokenizer.encode(texts))[0], expected, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    text = json.loads((hf_folders / "clip" / "config.json").read_text())
    text = {k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "max_position_embeddings", "bos_token_id", "eos_token_id",
                                 "pad_token_id")}
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8,
                  patch_size=4)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    clip.save_pretrained(tmp_path / "whole")
    hf_tokenizer(transformers, bos=True).save_pretrained(tmp_path / "whole")
    enc = dl.models.HFTextEncoder(tmp_path / "whole")
    batch = transformers.AutoTokenizer.from_pretrained(tmp_path / "whole")(
        texts, padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        expected = clip.text_model(**batch).last_hidden_state
    torch.testing.assert_close(enc(enc.tokenizer.encode(texts))[0], expected, rtol=0, atol=1e-6)
