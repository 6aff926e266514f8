"""Text conditioning: prompts -> token ids -> token embeddings that a network cross-attends to.

    "a bold 7 on the left" --tokenizer--> ids [B, L] --text encoder--> (context [B, L', D], mask [B, L'])
    model(x_t, t, ids) = net(x_t, t, context=context, context_mask=mask)

as in latent diffusion (Rombach et al. 2022, sec. 3.3): a transformer encoder tau_theta, trained jointly
with the denoiser (:class:`WordTokenizer` + :class:`TextEncoder`), or a frozen pretrained one, CLIP's as in
Stable Diffusion or T5's as in Imagen (:class:`HFTextEncoder`, a local Hugging Face folder).

The condition is the token ids, a long tensor [B, L] with 0 = padding, so the model convention
``model(x_t, t, cond)`` holds and the samplers never see text. The null condition of
classifier-free guidance and of caption dropout is ``model.null_cond = 0``: ``torch.full_like(ids, 0)``,
a row of padding, *is* the empty caption "" (the jointly trained encoder encodes it as its start
token alone; the frozen one as its tokenizer's encoding of "", e.g. CLIP's [BOS, EOS]). Every encoding
keeps at least one token a network may attend to: attention over keys that are all masked is 0/0
(``F.scaled_dot_product_attention`` returns NaN).

Token ids are checked on the CPU only (as class labels are, :func:`difflab.validation.check_labels`):
reading a tensor on an accelerator would stall the step loop on a host-device sync.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..validation import check_token_ids, is_int, positive_int
from .dit import Attention, DiT, dit
from .unet import UNet

__all__ = [
    "build_vocab",
    "words",
    "WordTokenizer",
    "TextEncoder",
    "TextConditioned",
    "HFTokenizer",
    "HFTextEncoder",
    "text_unet",
    "text_dit",
    "hf_text_unet",
    "hf_text_dit",
    "PAD_ID",
    "HF_CACHE_SIZE",
]

PAD_ID = 0  # padding; a row of it is the empty caption, the null condition (TextConditioned.null_cond)
HF_CACHE_SIZE = 1024  # distinct captions whose frozen-encoder embeddings are kept (HFTextEncoder)

_WORD = re.compile(r"[^\W_]+")  # a run of letters or digits (any script): "seven, thin" -> seven, thin


def words(text: str) -> list[str]:
    """The lower-case words of ``text``: runs of letters or digits, split on anything else
    ("Seven, thin strokes!" -> seven, thin, strokes; "a 7" -> a, 7)."""
    return _WORD.findall(text.lower())


def build_vocab(captions: Iterable[str]) -> list[str]:
    """The sorted unique lower-case words (:func:`words`) of ``captions``: a word tokenizer's vocabulary."""
    if isinstance(captions, str):
        raise TypeError("build_vocab takes a list of captions, got one string; wrap it: build_vocab([caption])")
    captions = list(captions)
    bad = [c for c in captions if not isinstance(c, str)]
    if bad:
        raise TypeError(f"captions must be strings, got {type(bad[0]).__name__} {bad[0]!r}"[:200])
    vocab = sorted({w for c in captions for w in words(c)})
    if not vocab:
        raise ValueError(f"the captions hold no words (letters or digits): {captions[:3]!r}..."[:200])
    return vocab


def _texts(text: Union[str, Sequence[str]]) -> list[str]:
    """One prompt or a list of them, as a list (a clear error for anything else)."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not all(isinstance(s, str) for s in texts):
        raise TypeError(f"prompts must be a string or a list of strings, got {type(text).__name__} {text!r}"[:200])
    return list(texts)


def _warn_truncated(long: list[tuple[str, int]], max_length: int, unit: str) -> None:
    """Over-long prompts are cut to max_length (CLIP's tokenizer's rule), said once per call."""
    if long:
        shown = "; ".join(f"{s[:40]!r} has {n}" for s, n in long[:3])
        warnings.warn(f"{len(long)} prompt(s) longer than the model's limit of {max_length} {unit} were truncated "
                      f"to the first {max_length} ({shown}{'; ...' if len(long) > 3 else ''})", stacklevel=3)


def _id_rows(ids, vocab_size: int) -> list[list[int]]:
    """Token ids [B, L] or one row [L] (a tensor or nested lists) as lists of ints, for decoding."""
    ids = torch.as_tensor(ids).cpu()
    ids = ids[None] if ids.ndim == 1 else ids
    length = ids.shape[-1] if ids.ndim == 2 and ids.shape[-1] else 1
    return check_token_ids(ids, vocab_size, length, exact_length=False, name="ids").tolist()


# ------------------------------------------------------------------------------ word tokenizer
class WordTokenizer:
    """Words to ids: id 0 is padding, the vocabulary's words are 1 .. V in its order.

    ``encode`` splits a prompt into lower-case words (:func:`words`); a word outside the vocabulary
    is an error (the model has never seen it), a prompt of more than ``max_length`` words is
    truncated with a warning, "" is all padding (the null condition).
    """

    def __init__(self, vocab: Sequence[str], max_length: int = 16) -> None:
        if isinstance(vocab, str) or not isinstance(vocab, (list, tuple)) or not vocab:
            raise ValueError(f"vocab must be a non-empty list of words (build_vocab(captions) makes one), "
                             f"got {vocab!r}"[:200])
        bad = [w for w in vocab if not isinstance(w, str) or words(w) != [w]]
        if bad:
            raise ValueError(f"vocab entries must be single lower-case words of letters or digits (as build_vocab "
                             f"makes them), got {bad[:5]!r}")
        if len(set(vocab)) != len(vocab):
            dup = sorted({w for w in vocab if vocab.count(w) > 1})
            raise ValueError(f"vocab has repeated words: {dup[:5]!r}")
        self.vocab = list(vocab)
        self.max_length = positive_int("max_length", max_length)
        self.ids = {w: i + 1 for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        """V, the number of words; ids lie in 0 .. V (0: padding)."""
        return len(self.vocab)

    def encode(self, text: Union[str, Sequence[str]]) -> Tensor:
        """Token ids [B, max_length] (long, padded with 0) of a prompt or a list of prompts."""
        texts = _texts(text)
        split = [words(s) for s in texts]
        unknown = list(dict.fromkeys(w for ws in split for w in ws if w not in self.ids))
        if unknown:
            known = ", ".join(self.vocab[:12]) + (", ..." if len(self.vocab) > 12 else "")
            raise ValueError(f"words not in the vocabulary: {', '.join(map(repr, unknown))}. This model knows only "
                             f"the {self.vocab_size} words of its training captions ({known}); rephrase the prompt "
                             "with them")
        _warn_truncated([(s, len(ws)) for s, ws in zip(texts, split) if len(ws) > self.max_length],
                        self.max_length, "words")
        wordless = [s for s, ws in zip(texts, split) if not ws and s.strip()]
        if wordless:  # (not ""): it would be the empty caption, the null condition, without a word said
            raise ValueError(f"prompts without a word: {', '.join(map(repr, wordless[:3]))}; a prompt is words "
                             "(letters or digits); \"\" is the empty caption (no text)")
        out = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, ws in zip(out, split):
            ids = [self.ids[w] for w in ws[: self.max_length]]
            row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids) -> list[str]:
        """The prompts of token ids [B, L] (or one row [L]): their words joined by spaces, padding dropped."""
        return [" ".join(self.vocab[i - 1] for i in row if i) for row in _id_rows(ids, self.vocab_size)]

    def __repr__(self) -> str:
        return f"WordTokenizer({self.vocab_size} words, max_length={self.max_length})"


# ------------------------------------------------------------------------------ text encoder
class TextBlock(nn.Module):
    """A pre-LN transformer layer: x <- x + Attn(LN(x)), x <- x + MLP(LN(x)), keys masked where they pad."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """tau_theta(ids) = (context [B, L+1, width], mask [B, L+1]): a bidirectional transformer over the tokens.

        h_0 = [s; E ids] + P[:L+1]          s: a learned start token, E: token embedding (E_0 = 0), P: positions
        h_k = Block_k(h_{k-1}, mask)         pre-LN self-attention (keys masked where ids = 0) and MLP
        context = LN(h_depth),  mask = [True, ids != 0]

    The start token at position 0 is always attended, so the empty caption (all padding) has one
    token to attend to and a defined encoding; masked keys get zero weight, so appending padding
    leaves the real positions' outputs unchanged. The token, start and position embeddings start
    N(0, 0.02^2) (GPT-2's and CLIP's token embedding), the padding row at zero (and it gets no gradient).
    ``forward`` takes L = 1 .. max_length columns. ``depth=0`` keeps no blocks: each word's
    embedding (and its place) alone, a bag of words that cannot mix two words into a joint code.
    """

    def __init__(self, vocab_size: int, max_length: int, width: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.max_length = positive_int("max_length", max_length)
        self.width, heads = positive_int("width", width), positive_int("heads", heads)
        if not is_int(depth) or depth < 0:
            raise ValueError(f"depth must be an integer >= 0 (0: no blocks, each token's embedding alone), got "
                             f"{depth!r}")
        if width % heads:
            raise ValueError(f"TextEncoder: width={width} must be divisible by heads={heads}")
        self.token_embedding = nn.Embedding(vocab_size + 1, width, padding_idx=PAD_ID)
        self.start = nn.Parameter(torch.empty(width))
        self.position = nn.Parameter(torch.empty(max_length + 1, width))
        self.blocks = nn.ModuleList(TextBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        for p in (self.token_embedding.weight, self.start, self.position):
            nn.init.normal_(p, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[PAD_ID].zero_()

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = check_token_ids(ids, self.vocab_size, self.max_length, exact_length=False, name="ids")
        B, L = ids.shape
        tokens = self.token_embedding(ids)
        h = torch.cat([self.start.expand(B, 1, -1).to(tokens.dtype), tokens], dim=1) + self.position[: L + 1]
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=ids.device), ids != PAD_ID], dim=1)
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h), mask


# ------------------------------------------------------------------------------ the wrapper
class TextConditioned(nn.Module):
    """model(x_t, t, ids) = net(x_t, t, context=tau(ids), context_mask=...): a network that cross-attends
    (:class:`~difflab.models.UNet` or :class:`~difflab.models.DiT` with ``context_dim``) conditioned on
    token ids [B, tokenizer.max_length] through ``text_encoder`` (module docstring).

    ``cond=None`` is the empty caption, as is ``torch.full_like(ids, null_cond)``: the samplers'
    unconditional branch and the trainer's caption dropout. The network's attributes that samplers
    and the trainer read (``learn_sigma``, ``guidance_input``, ``image_size``, ``in_channels``,
    ``out_channels``) are properties reading ``net``'s, as :class:`~difflab.models.EDMPrecond` does:
    named, so that nothing else leaks through -- above all no ``num_classes`` (the condition is text,
    not a label; code that finds ``num_classes`` treats a model as class-conditional).
    """

    null_cond = PAD_ID

    def __init__(self, net: nn.Module, tokenizer, text_encoder: nn.Module) -> None:
        super().__init__()
        width = getattr(text_encoder, "width", None)
        if getattr(net, "context_dim", None) != width:
            raise ValueError(f"TextConditioned: the network must cross-attend to the text encoder's width {width} "
                             f"(build it with context_dim={width}), it has context_dim="
                             f"{getattr(net, 'context_dim', None)}")
        if getattr(net, "num_classes", None) is not None:
            raise ValueError("TextConditioned: the network is class-conditional (num_classes="
                             f"{net.num_classes}); a text model's condition is its caption: drop num_classes")
        for key in ("vocab_size", "max_length"):
            if getattr(tokenizer, key, None) != getattr(text_encoder, key, None):
                raise ValueError(f"TextConditioned: tokenizer and text encoder disagree on {key} "
                                 f"({getattr(tokenizer, key, None)} against {getattr(text_encoder, key, None)})")
        self.net, self.tokenizer, self.text_encoder = net, tokenizer, text_encoder

    # The network's attributes that samplers and the trainer read (class docstring).
    @property
    def learn_sigma(self) -> bool:
        return bool(getattr(self.net, "learn_sigma", False))

    @property
    def guidance_input(self) -> bool:
        return bool(getattr(self.net, "guidance_input", False))

    @property
    def image_size(self) -> Optional[int]:
        return getattr(self.net, "image_size", None)

    @property
    def in_channels(self) -> Optional[int]:
        return getattr(self.net, "in_channels", None)

    @property
    def out_channels(self) -> Optional[int]:
        return getattr(self.net, "out_channels", None)

    def text_context(self, cond: Optional[Tensor], batch: int, device) -> tuple[Tensor, Tensor]:
        """(context, context_mask) of token ids [batch, max_length] (None: the empty caption) on ``device``."""
        L = self.tokenizer.max_length
        if cond is None:
            ids = torch.full((batch, L), self.null_cond, dtype=torch.long, device=device)
        else:
            ids = check_token_ids(cond, self.tokenizer.vocab_size, L, batch=batch).to(device, non_blocking=True)
        return self.text_encoder(ids)

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None, guidance=None) -> Tensor:
        context, mask = self.text_context(cond, x.shape[0], x.device)
        if x.is_floating_point():
            context = context.to(x.dtype)
        if guidance is None:
            return self.net(x, t, None, context=context, context_mask=mask)
        return self.net(x, t, None, guidance, context=context, context_mask=mask)


# ------------------------------------------------------------------------------ frozen Hugging Face encoders
_TRANSFORMERS_FIX = "install transformers (pip install transformers; difflab's test extra has it)"
# model_type of the folder's config.json -> the transformers class that computes its encoder
_HF_ENCODERS = {"clip": "CLIPTextModel", "clip_text_model": "CLIPTextModel", "t5": "T5EncoderModel",
                "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


def _transformers():
    try:
        return importlib.import_module("transformers")
    except ImportError as err:
        raise ImportError(f"a Hugging Face text encoder needs transformers ({err}): {_TRANSFORMERS_FIX}") from None


def _hf_folders(path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of ``path``: a folder with both (save_pretrained of a model and
    its tokenizer), a Stable Diffusion pipeline folder (its text_encoder/ and tokenizer/), or its
    text_encoder/ folder (the tokenizer/ beside it)."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"text_encoder must be the path of a local Hugging Face model folder, got "
                        f"{type(path).__name__} {path!r}"[:200])
    root = Path(path).expanduser()
    model = root if (root / "config.json").is_file() else root / "text_encoder"
    if not (model / "config.json").is_file():
        why = "no config.json in it or in its text_encoder/" if root.is_dir() else "no such folder"
        raise ValueError(f"text_encoder: no Hugging Face model at {str(path)!r} ({why}). "
                         "Give a local folder holding config.json and the weights (a CLIP text model or T5 encoder "
                         "saved by save_pretrained, or a Stable Diffusion pipeline folder); nothing is downloaded")
    for tok in (model, model.parent / "tokenizer", root / "tokenizer"):
        if any((tok / f).is_file() for f in _TOKENIZER_FILES):
            return model, tok
    raise ValueError(f"text_encoder: no tokenizer beside the model at {str(model)!r}: save the tokenizer into that "
                     "folder (tokenizer.save_pretrained) or into a tokenizer/ folder beside it")


class _Frozen:
    """The frozen transformers model and its embedding cache, held outside the module
    tree: not in ``state_dict`` (nor in checkpoints), ``parameters`` (nor the optimizer or the EMA's
    average) or ``train()``; a deep copy (the EMA's) shares it, as frozen weights are never changed."""

    def __init__(self, model, cache_size: int) -> None:
        self.model, self.cache_size = model, cache_size
        self.cache: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def __deepcopy__(self, memo):
        return self


class HFTokenizer:
    """A Hugging Face tokenizer in difflab's id convention: id = the tokenizer's id + 1, 0 = padding.

    The shift frees 0 for padding (CLIP's own pad is its end-of-text id, T5's is 0), so a row of
    zeros -- the null condition -- means "no caption"; :class:`HFTextEncoder` encodes it as the
    tokenizer's encoding of "" (CLIP: [BOS, EOS]; T5: [EOS]). ``encode`` gives a prompt that
    tokenizes as "" does all zeros, so "" and the null condition are the same ids too. Prompts of more
    than ``max_length`` tokens (specials included) are truncated with a warning, as the tokenizer
    truncates them (CLIP keeps its end token).
    """

    def __init__(self, tokenizer, max_length: int) -> None:
        self.hf, self.max_length = tokenizer, positive_int("max_length", max_length)
        self.vocab_size = len(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.empty = self._hf_ids([""])[0]  # the shifted ids of "" [max_length]
        if not self.empty.any():
            raise ValueError("the tokenizer encodes the empty caption as no tokens at all; the null condition needs "
                             "at least one (a start or end token) to attend to")

    def _hf_ids(self, texts: list[str]) -> Tensor:
        """The shifted ids [len(texts), max_length] of prompts, truncated and padded as the tokenizer does."""
        enc = self.hf(texts, padding="max_length", truncation=True, max_length=self.max_length)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long).reshape(len(texts), self.max_length)
        real = torch.tensor(enc["attention_mask"], dtype=torch.bool).reshape(len(texts), self.max_length)
        return torch.where(real, ids + 1, PAD_ID)

    def encode(self, text: Union[str, Sequence[str]]) -> Tensor:
        """Token ids [B, max_length] (long; the tokenizer's ids + 1, padded with 0)."""
        texts = _texts(text)
        if not texts:
            return torch.zeros(0, self.max_length, dtype=torch.long)
        # (a max_length with truncation off: the lengths in full, without transformers' own warning)
        lengths = [len(ids) for ids in self.hf(texts, truncation=False, max_length=self.max_length)["input_ids"]]
        _warn_truncated([(s, n) for s, n in zip(texts, lengths) if n > self.max_length], self.max_length, "tokens")
        out = self._hf_ids(texts)
        out[(out == self.empty).all(dim=1)] = PAD_ID  # "" is the null condition
        return out

    def decode(self, ids) -> list[str]:
        """The prompts of ids [B, L] (or one row [L]), special tokens and padding dropped."""
        return [self.hf.decode([i - 1 for i in row if i], skip_special_tokens=True).strip()
                for row in _id_rows(ids, self.vocab_size)]

    def __deepcopy__(self, memo):
        return self  # (read-only in use: the EMA's copy shares it)

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.hf).__name__}, {self.vocab_size} ids, max_length={self.max_length})"


class HFTextEncoder(nn.Module):
    """A frozen CLIP text model or T5 encoder from a local folder: ids -> (last hidden states [B, L, D], mask).

    ``path``: a folder with config.json, the weights and the tokenizer (see :func:`_hf_folders`), loaded
    with ``local_files_only=True``. The weights stay out of difflab's state dict (a 500 MB CLIP is not
    copied into every checkpoint): a model built from the same config reloads them from ``path``.
    ``.to(device)`` and dtype casts reach them; ``train()`` does not (they stay in eval mode, frozen).

    Rows of ids are mapped to the tokenizer's ids (:class:`HFTokenizer`: id - 1, 0 = padding, masked;
    an all-zero row is the encoding of "") and encoded by the model with that attention mask; the
    context is the last layer's hidden states (Stable Diffusion 1.x's choice), the mask the real
    tokens (CLIP's causal attention makes real positions blind to padding anyway).

    Embeddings are cached per distinct row of ids, least recently used first out, at most
    ``cache_size`` rows (each L x D floats on the model's device: 1024 rows of CLIP-L's 77 x 768 are
    240 MB in float32; 0 turns the cache off). Looking rows up reads the ids on the host (one copy per
    call from an accelerator): what the cache costs. Moving or casting the module empties it.
    """

    def __init__(self, path, max_length: Optional[int] = None, cache_size: int = HF_CACHE_SIZE) -> None:
        super().__init__()
        model_dir, tok_dir = _hf_folders(path)
        if not is_int(cache_size) or cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0 (rows of embeddings kept; 0: none), "
                             f"got {cache_size!r}")
        tf = _transformers()
        config = tf.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        kind = _HF_ENCODERS.get(config.model_type)
        if kind is None:
            raise ValueError(f"text_encoder: {str(model_dir)!r} holds a {config.model_type!r} model; difflab encodes "
                             f"text with {', '.join(sorted(set(_HF_ENCODERS)))} models (CLIP text models, T5 encoders)")
        tokenizer = tf.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model, info = getattr(tf, kind).from_pretrained(model_dir, local_files_only=True, output_loading_info=True)
        lacking = sorted(info.get("missing_keys") or ()) + [str(k) for k in info.get("mismatched_keys") or ()]
        if lacking:  # (transformers fills them with random numbers and only logs it)
            raise ValueError(f"text_encoder: the weights at {str(model_dir)!r} lack {len(lacking)} of the {kind}'s "
                             f"tensors or hold them in other shapes ({', '.join(lacking[:3])}): they are not the "
                             "checkpoint of its config.json")
        model = model.eval().requires_grad_(False)
        if max_length is None:
            max_length = tokenizer.model_max_length
            if not is_int(max_length) or max_length > 4096:
                raise ValueError(f"text_encoder: the tokenizer at {str(tok_dir)!r} states no length limit: give "
                                 "max_length (CLIP: 77; T5: the prompts' longest, e.g. 64)")
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and is_int(max_length) and max_length > limit:
            raise ValueError(f"max_length={max_length} is more than the {limit} positions of the model at "
                             f"{str(model_dir)!r}")
        self.tokenizer = HFTokenizer(tokenizer, max_length)
        self.max_length, self.vocab_size = self.tokenizer.max_length, self.tokenizer.vocab_size
        self.width = int(model.config.hidden_size)
        self.path = str(path)
        self.frozen = _Frozen(model, int(cache_size))

    def _apply(self, fn, recurse: bool = True):
        """.to / .cuda / .half / .double reach the frozen model, held outside the module tree; the cache
        (on the old device or dtype) is emptied."""
        super()._apply(fn, recurse)
        self.frozen.model._apply(fn)
        self.frozen.cache.clear()
        return self

    def cache_info(self) -> dict:
        """hits, misses (rows looked up in the cache) and size (rows kept) since the model was loaded."""
        f = self.frozen
        return {"hits": f.hits, "misses": f.misses, "size": len(f.cache), "max_size": f.cache_size}

    @torch.no_grad()
    def embed(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """The model's last hidden states [N, L, D] and mask [N, L] of shifted ids [N, L] (no all-zero row)."""
        model = self.frozen.model
        ids = ids.to(model.device)
        mask = ids != PAD_ID
        hf_ids = torch.where(mask, ids - 1, self.tokenizer.pad_id)
        return model(input_ids=hf_ids, attention_mask=mask.long()).last_hidden_state, mask

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = check_token_ids(ids, self.vocab_size, self.max_length, exact_length=False, name="ids")
        device, L = ids.device, ids.shape[1]
        rows = ids.detach().cpu()
        null = ~rows.any(dim=1)
        if null.any():  # the null condition: the encoding of ""
            rows = rows.clone()
            rows[null] = self._empty(L)
        keys = [tuple(r) for r in rows.tolist()]
        f = self.frozen
        distinct = list(dict.fromkeys(keys))
        found = {k: f.cache[k] for k in distinct if k in f.cache}
        for k in found:
            f.cache.move_to_end(k)  # (least recently used first out)
        missing = [k for k in distinct if k not in found]
        f.hits += sum(k in found for k in keys)
        f.misses += len(keys) - sum(k in found for k in keys)
        if missing:
            context, mask = self.embed(torch.tensor(missing, dtype=torch.long))
            # (copies: a view would keep its whole batch alive in the cache)
            fresh = {k: (c.clone(), m.clone()) for k, c, m in zip(missing, context, mask)}
            found.update(fresh)
            if f.cache_size:
                f.cache.update(fresh)
                while len(f.cache) > f.cache_size:
                    f.cache.popitem(last=False)
        context = torch.stack([found[k][0] for k in keys]).to(device)
        mask = torch.stack([found[k][1] for k in keys]).to(device)
        return context, mask

    def _empty(self, L: int) -> Tensor:
        """The ids of "" in L < max_length columns (its tokens come first, then padding)."""
        empty = self.tokenizer.empty
        n = int((empty != PAD_ID).sum())
        if n > L:
            raise ValueError(f"ids of {L} columns cannot hold the empty caption's {n} tokens")
        return empty[:L]

    def extra_repr(self) -> str:
        return f"{type(self.frozen.model).__name__} from {self.path!r} (frozen), max_length={self.max_length}"


# ------------------------------------------------------------------------------ registry builders
def _word_parts(vocab, max_length, width, depth, heads, kwargs) -> tuple[WordTokenizer, TextEncoder]:
    if "text_encoder" in kwargs:
        raise ValueError("text_encoder (a pretrained CLIP / T5 folder) is an argument of hf_text_unet and "
                         "hf_text_dit; text_unet and text_dit train their own text encoder from vocab")
    tokenizer = WordTokenizer(vocab, max_length)
    return tokenizer, TextEncoder(tokenizer.vocab_size, tokenizer.max_length, width, depth, heads)


def _dit(size: Optional[str], context_dim: int, kwargs) -> DiT:
    return DiT(context_dim=context_dim, **kwargs) if size is None else dit(size, context_dim=context_dim, **kwargs)


def text_unet(vocab: Sequence[str], max_length: int = 16, text_width: int = 64, text_depth: int = 2,
              text_heads: int = 4, **unet_kwargs) -> TextConditioned:
    """A U-Net and a text encoder trained together (latent diffusion's LDM-KL-8-G design, scaled down):
    ``TextConditioned(UNet(context_dim=text_width, **unet_kwargs), WordTokenizer(vocab, max_length),
    TextEncoder(len(vocab), max_length, text_width, text_depth, text_heads))``. ``vocab``: the training
    captions' words (:func:`build_vocab`; the trainer fills it, and config.yaml keeps it)."""
    tokenizer, encoder = _word_parts(vocab, max_length, text_width, text_depth, text_heads, unet_kwargs)
    return TextConditioned(UNet(context_dim=encoder.width, **unet_kwargs), tokenizer, encoder)


def text_dit(vocab: Sequence[str], max_length: int = 16, text_width: int = 64, text_depth: int = 2,
             text_heads: int = 4, size: Optional[str] = None, **dit_kwargs) -> TextConditioned:
    """As :func:`text_unet` with a DiT cross-attending to the text (PixArt-alpha's design):
    ``DiT(context_dim=text_width, **dit_kwargs)``, or ``dit(size, ...)`` for a size of the paper's
    table 1 ("T": a CPU size)."""
    tokenizer, encoder = _word_parts(vocab, max_length, text_width, text_depth, text_heads, dit_kwargs)
    return TextConditioned(_dit(size, encoder.width, dit_kwargs), tokenizer, encoder)


def hf_text_unet(text_encoder: str, max_length: Optional[int] = None, cache_size: int = HF_CACHE_SIZE,
                 **unet_kwargs) -> TextConditioned:
    """A U-Net conditioned through a frozen pretrained text encoder (Stable Diffusion's design): an
    :class:`HFTextEncoder` from the local folder ``text_encoder`` (a CLIP text model or T5 encoder with
    its tokenizer), the U-Net's ``context_dim`` its hidden size. ``max_length``: default the tokenizer's
    (CLIP: 77). Its weights are not in the model's state dict: building from the same config (the path)
    reloads them."""
    encoder = HFTextEncoder(text_encoder, max_length, cache_size)
    return TextConditioned(UNet(context_dim=encoder.width, **unet_kwargs), encoder.tokenizer, encoder)


def hf_text_dit(text_encoder: str, max_length: Optional[int] = None, cache_size: int = HF_CACHE_SIZE,
                size: Optional[str] = None, **dit_kwargs) -> TextConditioned:
    """As :func:`hf_text_unet` with a DiT (:func:`text_dit`'s ``size`` and ``dit_kwargs``)."""
    encoder = HFTextEncoder(text_encoder, max_length, cache_size)
    return TextConditioned(_dit(size, encoder.width, dit_kwargs), encoder.tokenizer, encoder)
