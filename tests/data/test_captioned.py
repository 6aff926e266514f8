"""Captioned digits (difflab.data.captioned): the skeleton against an independent per-pixel
implementation of Zhang and Suen's thinning, the drawing against a closed form, determinism,
the caption grammar read back by its parser, the held-out split, the MNIST source on the tests'
fixture, and refusals of bad options. The attributes' measurement from pixels is tested in
tests/evaluation/test_attributes.py."""

import math
import re

import pytest
import torch

from difflab.data import captioned as cap


@pytest.fixture(scope="module")
def digits_set():
    return cap.captioned_digits(n=600, seed=3)


# ----------------------------------------------------------------------------- the skeleton
def zhang_suen_reference(mask: list[list[int]]) -> list[list[int]]:
    """Zhang and Suen (1984) written from the paper, one pixel at a time: P2..P9 clockwise from
    north, B = sum, A = 01 patterns in P2, P3, ..., P9, P2; each sub-iteration marks, then deletes."""
    img = [row[:] for row in mask]
    H, W = len(img), len(img[0])

    def at(y, x):
        return img[y][x] if 0 <= y < H and 0 <= x < W else 0

    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            marked = []
            for y in range(H):
                for x in range(W):
                    if not img[y][x]:
                        continue
                    P = [at(y - 1, x), at(y - 1, x + 1), at(y, x + 1), at(y + 1, x + 1),
                         at(y + 1, x), at(y + 1, x - 1), at(y, x - 1), at(y - 1, x - 1)]
                    P2, P3, P4, P5, P6, P7, P8, P9 = P
                    B = sum(P)
                    A = sum(1 for k in range(8) if P[k] == 0 and P[(k + 1) % 8] == 1)
                    if step == 0:
                        ok = P2 * P4 * P6 == 0 and P4 * P6 * P8 == 0
                    else:
                        ok = P2 * P4 * P8 == 0 and P2 * P6 * P8 == 0
                    if 2 <= B <= 6 and A == 1 and ok:
                        marked.append((y, x))
            for y, x in marked:
                img[y][x] = 0
            changed |= bool(marked)
    return img


def test_skeletonize_equals_the_per_pixel_algorithm():
    """Random smooth blobs (thresholded blurred noise) and the source digits: the vectorised
    thinning deletes exactly the pixels the per-pixel algorithm does."""
    g = torch.Generator().manual_seed(0)
    noise = torch.nn.functional.avg_pool2d(torch.rand(12, 1, 20, 20, generator=g), 5, 1, 2)
    blobs = noise[:, 0] > noise.flatten(1).median(1).values[:, None, None]
    images, _ = cap.digits_source.load()
    digits = torch.nn.functional.interpolate((images[:8] + 1) / 2, size=(24, 24), mode="bilinear")[:, 0] > 0.5
    for masks in (blobs, digits):
        got = cap.skeletonize(masks)
        for m, s in zip(masks, got):
            assert s.int().tolist() == zhang_suen_reference(m.int().tolist())
        assert (got <= masks).all() and got.sum() < masks.sum() / 2


def test_skeleton_of_simple_shapes():
    """A one-pixel line is its own skeleton; a filled bar thins to a line along its length."""
    line = torch.zeros(1, 12, 12, dtype=torch.bool)
    line[0, 2:10, 5] = True
    assert torch.equal(cap.skeletonize(line), line)
    bar = torch.zeros(1, 12, 20, dtype=torch.bool)
    bar[0, 3:8, 2:18] = True  # 5 rows by 16 columns
    s = cap.skeletonize(bar)[0]
    assert s.any(1).sum() == 1 and s.sum() >= 10  # one row, most of the length
    assert cap.skeletonize(torch.zeros(2, 5, 5, dtype=torch.bool)).sum() == 0


# ----------------------------------------------------------------------------- the drawing
def test_render_a_straight_stroke_matches_the_stadium():
    """A straight vertical skeleton scaled to extent E with a round pen of width w is a stadium
    (E x w rectangle and two half disks): ink area E w + pi w^2 / 4, centre of mass on the
    anchor, height E + w (to the supersampling's resolution)."""
    layout = cap.Layout(canvas=48, extents=(10.0, 20.0), widths=(2.0, 5.0), working=40, supersample=8)
    skeleton = torch.zeros(1, 40, 40, dtype=torch.bool)
    skeleton[0, 5:35, 20] = True
    for E, w, position in ((20.0, 5.0, 4), (10.0, 2.0, 0), (20.0, 2.0, 8)):
        x = cap.render(skeleton, torch.tensor([w]), torch.tensor([E]), torch.tensor([position]), layout)
        ink = (x[0, 0] + 1) / 2
        area = E * w + math.pi * w * w / 4
        assert ink.sum().item() == pytest.approx(area, rel=0.03)
        pixels = torch.arange(48) + 0.5
        cy = (ink.sum(1) * pixels).sum() / ink.sum()
        cx = (ink.sum(0) * pixels).sum() / ink.sum()
        ay, ax = layout.anchors[position // 3], layout.anchors[position % 3]
        assert cy.item() == pytest.approx(ay, abs=1 / 8) and cx.item() == pytest.approx(ax, abs=1 / 8)
        rows = ink.sum(1)
        assert rows.sum().item() / rows.max().item() == pytest.approx(area / w, rel=0.05)  # height ~ E + w


def test_render_keeps_ink_on_the_canvas():
    """A large bold digit at a corner is moved in just enough to stay whole: its ink equals the
    same digit's at the centre, to the 1.5% that the points' sub-pixel phase changes it (put on
    the anchor regardless, the canvas's edge cuts up to 8% of the ink of these digits)."""
    layout = cap.LAYOUTS["digits"]
    sk = cap.ink_skeletons(cap.digits_source.load()[0][:20], layout.working)
    w, e = torch.full((20,), layout.widths[1]), torch.full((20,), layout.extents[1])
    corner = cap.render(sk, w, e, torch.zeros(20, dtype=torch.long), layout)
    centre = cap.render(sk, w, e, torch.full((20,), 4), layout)
    ratio = (corner + 1).sum((1, 2, 3)) / (centre + 1).sum((1, 2, 3))
    assert ((ratio - 1).abs() < 0.03).all(), ratio


# ----------------------------------------------------------------------------- the data set
def test_shapes_ranges_and_determinism(digits_set):
    ds = digits_set
    assert ds.images.shape == (600, 1, 16, 16) and ds.images.dtype == torch.float32
    assert ds.images.min() == -1.0 and ds.images.max() <= 1.0 and (ds.images > 0).any()
    assert ds.digits.dtype == torch.long and len(ds.captions) == len(ds) == 600
    assert set(ds.attributes) == set(cap.ATTRIBUTES) and ds.fixed == {}
    for name, codes in ds.attributes.items():
        assert codes.dtype == torch.long and set(codes.tolist()) == set(range(len(cap.ATTRIBUTES[name])))
    again = cap.captioned_digits(n=600, seed=3)
    assert torch.equal(again.images, ds.images) and again.captions == ds.captions
    assert all(torch.equal(again.attributes[k], v) for k, v in ds.attributes.items())
    other = cap.captioned_digits(n=600, seed=4)
    assert other.captions != ds.captions and not torch.equal(other.images, ds.images)


def test_more_examples_than_source_digits_reuse_them():
    ds = cap.captioned_digits(n=2000, attributes=("stroke",), seed=1)
    assert len(ds) == 2000 and torch.bincount(ds.digits, minlength=10).min() > 150
    assert set(ds.attributes) == {"stroke"} and ds.fixed == {"position": "centre", "size": "large"}


def test_every_caption_parses_back_to_its_attributes(digits_set):
    for i, text in enumerate(digits_set.captions):
        assert cap.parse_caption(text) == digits_set.describe(i), text


def test_grammar_has_synonyms_numerals_and_word_orders(digits_set):
    text = " | ".join(digits_set.captions)
    for words in (*cap._STROKE_WORDS.values(), *cap._SIZE_WORDS.values()):
        for word in words:
            assert re.search(rf"\b{word}\b", text), word
    assert re.search(r"\b[0-9]\b", text) and re.search(r"\bseven\b", text)  # numerals and words
    for phrase in ("upper left", "top left", "on the left", "in the middle", "center"):
        assert phrase in text, phrase
    orders = {  # one pattern per word order (see the module's table of orders)
        "a s k d pp": r"^an? (small|little|tiny|large|big) \w+ \w+ (on|at|in|near) ",
        "d, k strokes, s, bare": r"^\w+, \w+ strokes, \w+, ",
        "pp, a s d in k strokes": r"^(on|at|in|near) [^,]+, an? .* in \w+ strokes$",
        "the digit d pp, s and k": r"^the digit \w+ .*, \w+ and \w+$",
        "bare: a k, s d": r"^[a-z ]+: an? \w+, \w+ \w+$",
    }
    for name, pattern in orders.items():
        assert any(re.search(pattern, c) for c in digits_set.captions), name


def test_caption_function_covers_every_combination():
    """Every digit, position, stroke and size, each left out in turn, under several seeds:
    the caption parses back to exactly what it was given."""
    for digit in range(10):
        for p in (*cap.POSITIONS, None):
            for k in (*cap.STROKES, None):
                for s in (*cap.SIZES, None):
                    seed = digit * 97 + len(p or "") * 7 + len(k or "") + len(s or "") * 3
                    text = cap.caption(digit, p, k, s, seed=seed)
                    assert cap.parse_caption(text) == {"digit": digit, "position": p, "stroke": k, "size": s}, text
    assert cap.caption(8, seed=0).split()[-2:] in (["an", "8"], ["an", "eight"], ["digit", "8"], ["digit", "eight"]) \
        or cap.caption(8, seed=0) in ("8", "eight")


def test_captions_without_the_digit_call_it_digit_and_parse_back():
    for p in (*cap.POSITIONS, None):
        for k in (*cap.STROKES, None):
            for s in (*cap.SIZES, None):
                if p is k is s is None:
                    continue
                for order in range(len(cap._ORDERS)):  # every word order (seeds 0..4 draw only orders 1..3)
                    for words in range(3):  # and synonyms
                        text = cap._caption_from(None, p, k, s, [order] + [words] * (cap._CHOICES - 1))
                        assert cap.parse_caption(text) == {"digit": None, "position": p, "stroke": k, "size": s}, text
                assert cap.parse_caption(cap.caption(None, p, k, s, seed=7))["digit"] is None
    with pytest.raises(ValueError, match="name the digit or at least one attribute"):
        cap.caption(None)


def test_partial_captions_leave_out_each_attribute_at_the_asked_rate_and_keep_the_images():
    full = cap.captioned_digits(n=3000, attributes=("position", "stroke"), seed=5)
    part = cap.captioned_digits(n=3000, attributes=("position", "stroke"), seed=5, omit_prob=0.3)
    assert torch.equal(part.images, full.images) and torch.equal(part.digits, full.digits)
    assert all(torch.equal(part.attributes[k], v) for k, v in full.attributes.items())
    said = {"digit": [], "position": [], "stroke": []}
    for i, text in enumerate(part.captions):
        parsed, truth = cap.parse_caption(text), full.describe(i)
        for name in said:  # what a partial caption says is true; what it leaves out is None
            assert parsed[name] in (None, truth[name]), text
            said[name].append(parsed[name] is not None)
    se = math.sqrt(0.3 * 0.7 / 3000)
    for name, flags in said.items():
        assert abs(1 - sum(flags) / 3000 - 0.3) < 5 * se, name
    assert sum(not any(f) for f in zip(*said.values())) > 0 and "a digit" in part.captions  # all three left out
    with pytest.raises(ValueError, match="omit_prob is the probability"):
        cap.captioned_digits(n=10, omit_prob=1.0)


def test_the_omissions_stream_is_no_other_seeds_main_stream():
    """Seed s's omissions come from a stream hashed from s, not from torch.Generator(s + 1), the main
    stream of the data set of seed s + 1 (whose first uniforms would then decide both)."""
    said = cap._mentioned(2000, ("digit", "position"), 0.3, seed=4)
    replayed = torch.rand(2000, 2, generator=torch.Generator().manual_seed(5)) >= 0.3
    assert said["digit"] != replayed[:, 0].tolist() and said["position"] != replayed[:, 1].tolist()
    assert said == cap._mentioned(2000, ("digit", "position"), 0.3, seed=4)  # deterministic
    agree = (torch.tensor(said["digit"]) == torch.tensor(cap._mentioned(2000, ("digit",), 0.3, seed=5)["digit"]))
    assert abs(agree.float().mean().item() - (0.7 ** 2 + 0.3 ** 2)) < 5 * math.sqrt(0.42 * 0.58 / 2000)


def test_parse_caption_reads_free_text_and_refuses_contradictions():
    assert cap.parse_caption("A BOLD 7 on the left!") == {"digit": 7, "position": "left", "stroke": "bold", "size": None}
    assert cap.parse_caption("seven, thin strokes, top-right")["position"] == "top right"
    assert cap.parse_caption("a 3 in the lower middle")["position"] == "bottom"
    assert cap.parse_caption("") == {"digit": None, "position": None, "stroke": None, "size": None}
    for text, words in (("a purple 7", "purple"), ("a bold 7 and a 3", "more than one digit"),
                        ("a bold thin 7", "more than one stroke"), ("a 7 left and right", "more than one column"),
                        ("a 12", "one digit 0-9")):
        with pytest.raises(ValueError, match=words):
            cap.parse_caption(text)
    with pytest.raises(TypeError, match="string"):
        cap.parse_caption(7)


def test_held_out_combinations_only_in_held_out():
    train = cap.captioned_digits(seed=0)
    held = cap.captioned_digits(seed=0, split="held_out")
    assert train.held_out == held.held_out == cap.DEFAULT_HELD_OUT
    assert not cap.held_out_mask(train.digits, train.attributes, train.held_out).any()
    assert cap.held_out_mask(held.digits, held.attributes, held.held_out).all()
    for digit, name, value in cap.DEFAULT_HELD_OUT:
        code = cap.ATTRIBUTES[name].index(value)
        assert ((held.digits == digit) & (held.attributes[name] == code)).sum() > 20
        # the digit and the value are each seen in training, only not together
        assert (train.digits == digit).sum() > 100 and (train.attributes[name] == code).sum() > 100
    assert set(held.digits.tolist()) == {d for d, _, _ in cap.DEFAULT_HELD_OUT}
    for i, text in enumerate(held.captions):
        assert cap.parse_caption(text) == held.describe(i)


def test_held_out_follows_the_attributes_that_vary():
    ds = cap.captioned_digits(n=300, attributes=("position", "stroke"), split="held_out")
    assert all(name != "size" for _, name, _ in ds.held_out) and "size" not in ds.attributes
    assert all(cap.parse_caption(c)["size"] is None for c in ds.captions)
    custom = cap.captioned_digits(n=200, held_out=((3, "size", "large"),), split="held_out")
    assert set(custom.digits.tolist()) == {3} and (custom.attributes["size"] == 1).all()


def test_mnist_source_on_the_fixture(mnist_dir):
    ds = cap.captioned_digits(source="mnist", root=mnist_dir, mnist_split="t10k", n=300)
    assert ds.images.shape == (300, 1, 48, 48) and ds.layout == cap.LAYOUTS["mnist"]
    assert ds.images.min() == -1.0 and ds.images.max() > 0.9
    assert all(cap.parse_caption(c) == ds.describe(i) for i, c in enumerate(ds.captions))
    big = cap.captioned_digits(source="digits", canvas=32, n=50)
    assert big.images.shape == (50, 1, 32, 32) and big.layout.extents == (9.0, 13.0)


@pytest.mark.parametrize("kwargs, words", [
    (dict(source="cifar"), "source must be one of 'digits', 'mnist'"),
    (dict(source="mnist"), "pass root=<folder>"),
    (dict(root="somewhere"), "pass it with source='mnist'"),
    (dict(split="test"), "split must be one of 'train', 'held_out'"),
    (dict(n=0.5), "n \\(the number of examples\\) must be a positive integer"),
    (dict(seed="0"), "seed must be an integer"),
    (dict(canvas=12), "canvas must be an integer of at least 16"),
    (dict(attributes="position"), "attributes must be a tuple of names"),
    (dict(attributes=("position", "colour")), "'colour' unknown"),
    (dict(attributes=("stroke", "stroke")), "a name repeats"),
    (dict(held_out=((7, "colour", "red"),)), "'colour' is not among the attributes that vary"),
    (dict(held_out=((7, "stroke", "shiny"),)), "not 'shiny'"),
    (dict(held_out=((11, "stroke", "bold"),)), "a digit must be an integer 0..9"),
    (dict(held_out=(7, "stroke", "bold")), "each held_out entry must be a \\(digit, attribute, value\\) triple"),
    (dict(held_out=((7, "stroke", "bold"), (7, "stroke", "thin"))), "holds out every stroke of the digit 7"),
    (dict(attributes=("size",), held_out=None, split="held_out"), None),  # (5, size, small) applies: fine
    (dict(attributes=("position",), held_out=(), split="held_out"), "split='held_out' needs held-out combinations"),
])
def test_bad_options_are_refused_with_the_fix(kwargs, words):
    if words is None:
        assert len(cap.captioned_digits(**{"n": 10, **kwargs})) == 10
        return
    with pytest.raises(ValueError, match=words):
        cap.captioned_digits(**{"n": 10, **kwargs})


def test_caption_refuses_bad_attributes():
    with pytest.raises(ValueError, match="position must be one of"):
        cap.caption(7, "middle")
    with pytest.raises(ValueError, match="a digit must be an integer 0..9"):
        cap.caption(10)
