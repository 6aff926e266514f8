"""report.md of the classic experiments, written from their metrics (experiments/classic.py's
``res``, also saved as metrics.json): every claim comes from a number; a claim the numbers do not
back is written as such."""

from __future__ import annotations

import math
from pathlib import Path

from difflab.evaluation import report

# The command of the full-size run, named in the reduced-size report.
GPU_COMMAND = "python experiments/classic.py --size gpu --device cuda"


def fmt(v, d=3):
    return f"{v:.{d}f}"


def model_words(train: dict) -> str:
    """The MNIST network in words, from the run's config."""
    mdl, kw = train["model"], train["model"].get("kwargs", {})
    size = f"{train['parameters'] / 1e6:.2f}M parameters, {train['steps']} steps of batch {train['batch_size']}"
    if train.get("seconds"):
        size += f", {train['seconds'] / 60:.0f} minutes of training"
    if mdl["name"] == "unet":
        widths = "-".join(str(kw.get("channels", 128) * k) for k in kw.get("channel_mult", (1, 2, 2, 2)))
        attn = kw.get("attention_levels") or []
        nrb = kw.get("num_res_blocks", 2)
        words = (f"a class-conditional U-Net ({widths} channels over {len(kw.get('channel_mult', ()))} levels, "
                 f"{nrb} residual block{'s' if nrb != 1 else ''} per level, "
                 + (f"attention at level{'s' if len(attn) > 1 else ''} {', '.join(map(str, attn))}" if attn
                    else "no attention in the levels")
                 + (", ADM's scale-shift norm" if kw.get("use_scale_shift_norm") else "") + ")")
    elif mdl["name"] == "mlp":
        words = "a residual MLP on the flattened digits"
    else:
        words = f"`{mdl['name']}`"
    d = train.get("diffusion")
    if d:
        words += f", {d['schedule']} schedule with T = {d['T']}, {d['prediction']}-prediction"
    return f"{words} ({size})"


def guidance_text(gr: list, name: str) -> list:
    """What the guidance sweep shows, claim by claim from the rows (w >= 1: guided or conditional)."""
    w1 = next((r for r in gr if r["guidance"] == 1.0), None)
    guided = sorted((r for r in gr if r["guidance"] >= 1.0), key=lambda r: r["guidance"])
    if w1 is None or len(guided) < 2:
        return []
    best = min(gr, key=lambda r: r["fid"])
    top = guided[-1]
    acc = [r["accuracy"] for r in guided]
    most = max(guided, key=lambda r: r["accuracy"])
    monotone = all(b >= a - 0.002 for a, b in zip(acc, acc[1:]))
    if most is w1 or most["accuracy"] <= w1["accuracy"]:
        L = [f"- Accuracy does not rise with guidance here: {fmt(100 * w1['accuracy'], 1)}% at w = 1, "
             + ", ".join(f"{fmt(100 * r['accuracy'], 1)}% at w = {r['guidance']:g}" for r in guided[1:]) + "."]
    else:
        L = [f"- **Sharper class**: accuracy goes from {fmt(100 * w1['accuracy'], 1)}% at w = 1 to "
             f"{fmt(100 * most['accuracy'], 1)}% at w = {most['guidance']:g}"
             + (" and never falls by more than 0.2 points as w grows." if monotone else
                "; it does not rise monotonically with w (" + ", ".join(f"{fmt(100 * a, 1)}%" for a in acc) + ").")]
    L += [f"- {name} is lowest at w = {best['guidance']:g} ({fmt(best['fid'], 2)}; w = 1: {fmt(w1['fid'], 2)})."]
    if top["fid"] > best["fid"]:
        L += [f"- **Then artefacts**: past w = {best['guidance']:g} {name} rises to {fmt(top['fid'], 2)} at "
              f"w = {top['guidance']:g}; recall falls from {fmt(w1['recall'])} (w = 1) to {fmt(top['recall'])} "
              "(less variety within each class)"
              + (f" and precision from {fmt(max(r['precision'] for r in guided))} (its highest) to "
                 f"{fmt(top['precision'])}: strong guidance pushes samples off the data manifold (the thick, "
                 "over-saturated strokes in the bottom rows of the grid)."
                 if top["precision"] < max(r["precision"] for r in guided) - 0.02 else
                 f"; precision stays at {fmt(top['precision'])}, so at this scale the cost is diversity more than "
                 "off-manifold samples.")]
    else:
        L += [f"- Up to w = {top['guidance']:g} {name} does not rise again; recall goes from {fmt(w1['recall'])} "
              f"(w = 1) to {fmt(top['recall'])}."]
    return L + [""]


def label(r: dict) -> str:
    return f"{r['name']} {r['steps']}"


def steps_text(m: dict, S: dict, name: str) -> list:
    """The few-step sampling section: the yardstick, the table and what it shows."""
    return (steps_intro(m, S, name) + tolerance_claims(m["steps"], m["tolerance"], name)
            + family_claims(m["steps"]) + same_step_claims(m["steps"]) + [""])


def steps_intro(m: dict, S: dict, name: str) -> list:
    """What each setting draws, how much FID moves by chance (the tolerance), the figure and the table."""
    st, tol, nz = m["steps"], m["tolerance"], m["fid_noise"]
    ref = st[0]
    refname = label(ref)
    return ["### Few-step sampling", "",
            f"Every setting draws {S['n']} class-conditional samples (w = 1, one network pass per step; Heun takes "
            "two) from its own spacing of the noise levels (DDPM and DDIM: trailing timesteps; the "
            "DPM-Solver++ / Euler / Heun solvers: uniform in log-SNR; `fitted levels`: dpmpp_3m on noise levels "
            f"fitted to this network by `dl.samplers.optimize_sigmas` on {S['fit_n']} other noise draws).", "",
            f"**How much FID moves by chance**: the DDIM-50 setting drawn {len(nz['fid'])} times from independent "
            f"noise gives {name} " + ", ".join(fmt(v, 2) for v in nz["fid"])
            + f" (sd {fmt(nz['sd'], 2)}, range {fmt(nz['range'], 2)}). Two independent sample sets of one setting "
            f"thus differ by about {fmt(math.sqrt(2) * nz['sd'], 2)} (sd). 'Nearly the same quality as {refname}' "
            f"below means an FID at most **{fmt(tol['fid'], 2)}** above its {fmt(ref['fid'], 2)}: the larger of "
            f"{fmt(100 * tol['relative'], 0)}% of it ({fmt(tol['relative_fid'], 2)}) and two sd of such a difference "
            f"({fmt(tol['noise_fid'], 2)}).", "",
            "![steps](mnist_steps.png)", "",
            report.markdown_table(st, ["name", "steps", "calls_per_batch", "fid", "accuracy", "precision", "recall",
                                       "seconds", "speedup_passes", "speedup_seconds", "within_tolerance"],
                                  ["sampler", "steps", "network passes", name, "accuracy", "precision", "recall",
                                   "seconds", "speed-up (passes)", "speed-up (seconds)",
                                   f"within {fmt(tol['fid'], 2)}"]),
            "", f"Seconds: wall-clock for the {S['n']} samples on the machine named at the top; network passes are "
            "exact.", ""]


def tolerance_claims(st: list, tol: dict, name: str) -> list:
    """Which settings stay within tolerance of the reference (the first row), the ones at 2-5x
    speed, and the fastest."""
    ref = st[0]
    refname = label(ref)
    ok = sorted((r for r in st[1:] if r["within_tolerance"]), key=lambda r: r["calls_per_batch"])
    if not ok:
        return [f"- No faster setting stays within {fmt(tol['fid'], 2)} of {refname}'s {name} ({fmt(ref['fid'], 2)})."]
    two_five = [r for r in ok if 2 <= r["speedup_passes"] <= 5]
    fast = ok[0]
    L = [f"- **Within tolerance of {refname}** ({fmt(ref['fid'], 2)}, accuracy {fmt(ref['accuracy'])}, "
         f"{fmt(ref['seconds'], 1)} s): " + "; ".join(
             f"{label(r)} ({fmt(r['fid'], 2)}, {r['speedup_passes']:.0f}x fewer passes, "
             f"{r['speedup_seconds']:.1f}x faster)" for r in reversed(ok)) + "."]
    if two_five:
        L += ["- **At 2-5x speed**: " + ", ".join(f"{label(r)} ({r['speedup_passes']:.0f}x)" for r in two_five)
              + f" stay{'s' if len(two_five) == 1 else ''} within tolerance."]
    else:
        L += ["- No setting with a 2-5x speed-up in network passes stays within tolerance."]
    return L + [f"- **Fastest within tolerance**: {fast['name']} with {fast['steps']} steps, {name} "
                f"{fmt(fast['fid'], 2)} against {fmt(ref['fid'], 2)}, accuracy {fmt(fast['accuracy'])} against "
                f"{fmt(ref['accuracy'])}: {fast['speedup_passes']:.0f}x fewer network passes, "
                f"{fast['speedup_seconds']:.0f}x less wall-clock time."]


def family_claims(st: list) -> list:
    """Per sampler: from how many steps on it stays within tolerance (or that it never / always does)."""
    L = []
    for fam in dict.fromkeys(r["name"] for r in st):
        rows = sorted((r for r in st if r["name"] == fam and r is not st[0]), key=lambda r: r["steps"])
        if not rows:
            continue
        good = [r for r in rows if r["within_tolerance"]]
        bad = [r for r in rows if not r["within_tolerance"]]
        if good and bad and max(b["steps"] for b in bad) < min(g["steps"] for g in good):
            L += [f"- {fam}: within tolerance from {good[0]['steps']} steps; at {bad[-1]['steps']} steps "
                  f"{fmt(bad[-1]['fid'], 2)}."]
        elif good and not bad:
            L += [f"- {fam}: within tolerance at every step count tried ({', '.join(str(r['steps']) for r in rows)})."]
        elif bad and not good:
            L += [f"- {fam}: outside tolerance at every step count tried (best {fmt(min(r['fid'] for r in rows), 2)} "
                  f"at {min(rows, key=lambda r: r['fid'])['steps']} steps)."]
        else:
            L += [f"- {fam}: " + ", ".join(f"{r['steps']} steps {fmt(r['fid'], 2)}"
                                           + ("" if r["within_tolerance"] else " (outside)") for r in rows) + "."]
    return L


def same_step_claims(st: list) -> list:
    """DDIM with eta = 1 against DDPM at the same steps, and fitted against log-SNR-uniform levels."""
    L = []
    pairs = [(r, q) for r in st if r["sampler"] == "ddim" and r.get("eta") == 1.0
             for q in st if q["sampler"] == "ddpm" and q["steps"] == r["steps"]]
    if pairs and all(abs(r["fid"] - q["fid"]) <= 1e-5 * max(abs(q["fid"]), 1e-3) for r, q in pairs):
        L += ["- DDIM with eta = 1 repeats DDPM's numbers at the same steps: its step is DDPM's ancestral step "
              "with the posterior variance (Song et al. 2021, eq. 16), and both draw the same noise from the same "
              "seed, so the samples coincide up to float rounding (`tests/samplers/test_ddim.py` checks this on an "
              "exact model); only the wall-clock times differ."]
    for r in (r for r in st if r.get("fitted")):
        plain = next((q for q in st if q["sampler"] == r["sampler"] and q["steps"] == r["steps"]
                      and not q.get("fitted")), None)
        if plain is not None:
            L += [f"- Fitted noise levels ({fmt(r['fit_seconds'], 0)} s to fit) take {r['sampler']} at "
                  f"{r['steps']} steps from {fmt(plain['fid'], 2)} (log-SNR-uniform levels) to {fmt(r['fid'], 2)}."]
    return L


def size_note(res: dict) -> str:
    """What the size means for the numbers, for the report's first paragraph."""
    S, m = res["settings"], res["mnist"]
    return {
        "tiny": "**tiny size** (a smoke test of the code path: the numbers mean nothing).",
        "cpu": ("**reduced size, on the CPU**: MNIST downsampled to 14x14 (antialiased), the model "
                + model_words(m["train"]) + f"; {S['n']} samples per setting (FID is biased upward at small n, so "
                "the floor is also given at the same n); the classifier (trained at 28x28) sees every image, real or "
                "generated, upsampled bilinearly from 14x14, so all FIDs here compare 14x14 digits. The full-size run "
                f"(28x28, configs/mnist_cond.yaml's U-Net, 10,000 samples) is `{GPU_COMMAND}` (add "
                "`--mnist-run runs/mnist_cond` to evaluate the model `python benchmarks/mnist_cond_gpu.py` trains)."),
        "gpu": "**full size**: configs/mnist_cond.yaml's U-Net, 10,000 samples per setting.",
    }[res["size"]]


def two_d_section(res: dict, command: str) -> list:
    """The title, how the report was made, and section 1: the Swiss roll and guidance in 2D."""
    S, sw, g2 = res["settings"], res["swiss_roll"], res["guidance_2d"]
    T = S["toy_ddpm_steps"]
    ddpm_key = f"ddpm_{T}"
    L = [f"# Diffusion experiments, reproduced ({res['size']} size)", "",
         f"Made by `{command}` in {res['seconds'] / 60:.1f} minutes on {res['device']}. This is the {size_note(res)}",
         "All numbers are in `metrics.json`.", "",
         "## 1. Two dimensions", "", "### Swiss roll: forward and reverse process", "",
         "![forward](swiss_forward.png)", "",
         "The forward process q(x_t | x_0) dissolves the roll into N(0, I); the reverse process (DDPM, "
         f"{T} steps) rebuilds it:", "", "![reverse](swiss_reverse.png)", "",
         "![samples](swiss_samples.png)", "",
         report.markdown_table(
             [dict(name="fresh data (floor)", **sw["floor"]), dict(name=f"DDPM, {T} steps", **sw[ddpm_key]),
              dict(name="DDIM, 50 steps", **sw["ddim_50"])],
             ["name", "sliced_wasserstein", "mmd2", "precision", "recall"],
             ["samples", "sliced W2 (lower is better)", "MMD^2", "precision", "recall"]), "",
         f"DDPM's samples sit at sliced W2 = {fmt(sw[ddpm_key]['sliced_wasserstein'], 4)} from the data, against "
         f"{fmt(sw['floor']['sliced_wasserstein'], 4)} for a fresh draw of the data itself.", "",
         "### Classifier-free guidance on a labelled 2D set (8 Gaussians)", "",
         "![guidance 2d](guidance_2d.png)", "",
         report.markdown_table(g2["rows"], ["guidance", "accuracy", "precision", "recall", "sliced_wasserstein",
                                            "on_manifold"],
                               ["w", "accuracy (requested mode)", "precision", "recall", "sliced W2 (all classes)",
                                "on manifold"]), ""]
    r0 = {r["guidance"]: r for r in g2["rows"]}
    if 0.0 in r0 and len(g2["rows"]) > 1:
        top = max(g2["rows"], key=lambda r: r["guidance"])
        L += [f"Without guidance from the label (w = 0, the unconditional model) a sample lands in the requested mode "
              f"{fmt(100 * r0[0.0]['accuracy'], 1)}% of the time (chance: 12.5%); at w = {top['guidance']:g} "
              f"{fmt(100 * top['accuracy'], 1)}%.", ""]
    return L


def mnist_floor_section(res: dict) -> list:
    """Section 2's opening: the metrics (the classifier's features) and the floor of real digits."""
    S, m = res["settings"], res["mnist"]
    fl, n, name, c = m["floor"], S["n"], m["metric"], m["classifier"]
    fl_n = fl[f"train5k_first_{n}"]
    clf_path = c.get("path", "classifiers/mnist")
    L = ["## 2. MNIST", "",
         f"Metrics: {name} — the penultimate layer of a small CNN trained by `difflab train-classifier` on t10k, "
         f"test accuracy **{fmt(100 * c['test_accuracy'], 2)}%** on the {c['num_test']} held-out train5k digits"
         + (f" ({fmt(100 * c['accuracy_at_size'], 2)}% on them at {m['image_size']}x{m['image_size']}, upsampled: "
            "the most a perfect generator can score at this size). "
            if "accuracy_at_size" in c else ". ") +
         "These are not Inception FIDs. Precision/recall: k-NN manifolds (k = 3) in the same features; accuracy: "
         "the classifier's agreement with the requested class. The classifier "
         f"(`{clf_path}`) comes from `difflab train-classifier --data mnist --out "
         f"{clf_path}` (8 epochs on t10k, a few minutes on a CPU). "
         f"All samples below are drawn with the predicted x0 clipped to [-1, 1] (clip_x0 = {S.get('clip_x0')}).", "",
         "**The floor**: held-out real digits against the reference (t10k):", "",
         report.markdown_table([dict(name=f"train5k ({fl['train5k_all']['n']} images)", **fl["train5k_all"]),
                                dict(name=f"train5k ({n} random images, as many as the samples)", **fl_n)],
                               ["name", "fid", "precision", "recall", "accuracy"],
                               ["real images", name, "precision", "recall", "accuracy"]), ""]
    if "subsets_of_n" in fl:
        sub = fl["subsets_of_n"]
        L += [f"Over {len(sub['fid'])} random subsets of {n} held-out digits the floor is {fmt(sub['mean'], 2)} ± "
              f"{fmt(sub['sd'], 2)} (mean ± sd).", ""]
    if "floor_28" in m:
        L += [f"At the data's own 28x28 size the floor (all 5000 train5k digits against t10k) is "
              f"**{fmt(m['floor_28']['fid'], 3)}** (precision {fmt(m['floor_28']['precision'])}, recall "
              f"{fmt(m['floor_28']['recall'])}, accuracy {fmt(m['floor_28']['accuracy'])}).", ""]
    return L


def mnist_generation_section(res: dict) -> list:
    """The forward process on digits, unconditional against conditional samples, the guidance scale."""
    S, m = res["settings"], res["mnist"]
    n, name = S["n"], m["metric"]
    fl_n = m["floor"][f"train5k_first_{n}"]
    c = m["classifier"]
    uc, co = m["uncond_vs_cond"]
    real_acc = c.get("accuracy_at_size", c["test_accuracy"])
    below_floor = min(r["fid"] for r in m["guidance"] + m["steps"]) < fl_n["fid"]
    return ["### Forward process on example digits", "",
            f"Columns: t = {', '.join(map(str, m['forward_ts']))} (of 1000).", "", "![forward](mnist_forward.png)", "",
            "### Unconditional against conditional generation (one network, one code path)", "",
            "The same network, trained with 10% of labels dropped, samples unconditionally with the null label and "
            "conditionally with a label (DDIM, 50 steps, w = 1):", "",
            "| unconditional | conditional (a row per class) |", "|---|---|",
            "| ![u](mnist_unconditional.png) | ![c](mnist_conditional.png) |", "",
            report.markdown_table([uc, co], ["labels", "fid", "precision", "recall", "accuracy"],
                                  ["labels", name, "precision", "recall", "accuracy"]), "",
            f"Conditional samples are the requested digit **{fmt(100 * co['accuracy'], 1)}%** of the time (real "
            f"held-out digits: {fmt(100 * real_acc, 1)}%); "
            + (f"conditioning lowers {name} from {fmt(uc['fid'], 2)} to {fmt(co['fid'], 2)} "
               f"({fmt(co['fid'] / fl_n['fid'], 2)}x the floor at n = {n}, {fmt(fl_n['fid'], 2)})."
               if co["fid"] < uc["fid"] else
               f"{name} is {fmt(co['fid'], 2)} conditionally against {fmt(uc['fid'], 2)} unconditionally."), "",
            *(["A sample set can score below the floor: the network learnt t10k, the reference itself, while the "
               "held-out train5k digits come from other writers (MNIST's training and test sets have disjoint "
               "writers), so the floor measures how far other real digits sit from t10k, not a bound for samples.", ""]
              if below_floor else []),
            "### Guidance scale", "",
            "Rows: w = " + ", ".join(f"{w:g}" for w in S["guidance"]) + "; columns: classes 0-9, same noise in each "
            "column (w = 0: the unconditional model, w = 1: the conditional one, w > 1: guided).",
            "", "![guidance grid](mnist_guidance_grid.png)", "", "![guidance](mnist_guidance.png)", "",
            report.markdown_table(m["guidance"], ["guidance", "fid", "precision", "recall", "accuracy"],
                                  ["w", name, "precision", "recall", "accuracy"]), ""]


def likelihood_section(m: dict) -> list:
    b = m["bits_per_dim"]
    return ["### Likelihood", "",
            f"Variational bound (DDPM's discretized decoder, {b['timesteps']} stratified KL terms per image, null "
            f"label) on {b['n']} random held-out train5k digits: **{fmt(b['mean'])} ± {fmt(b['stderr'])} bits/dim**.",
            ""]


def write_report(res: dict, out: Path, command: str) -> Path:
    """out/report.md from the experiments' results ``res`` (metrics.json)."""
    S, m = res["settings"], res["mnist"]
    L = (two_d_section(res, command) + mnist_floor_section(res) + mnist_generation_section(res)
         + guidance_text(m["guidance"], m["metric"]) + steps_text(m, S, m["metric"]) + likelihood_section(m))
    path = Path(out) / "report.md"
    path.write_text("\n".join(L))
    return path
