"""Model cards: the short README that ``difflab export`` writes beside a model file.

``difflab export --out digits.safetensors`` writes ``digits.md`` beside it, rendered by
:func:`model_card` from the exported file and the checkpoint it came from:

- the model: network, parameter count, process (schedule, prediction), data set, image shape, classes;
- the training: steps, wall-clock time, the final logged loss, precision, batch, the checkpoint
  step exported, EMA or raw weights, the file's dtype;
- what ``difflab eval`` measured of this checkpoint, when it did, and against what;
- where the weights came from (``converted_from``: a diffusers model converted by ``difflab convert``);
- how to use it (``difflab sample``, ``dl.load``), the SHA-256 of the weights file and the config.

The SHA-256 is written as a line of ``sha256sum``'s format, so ``sha256sum -c digits.md`` (in the
card's folder) checks the weights file; ``sha256sum`` warns about the card's other lines and
checks that one.

**Its name.** ``FILE.md`` beside ``FILE.safetensors``, not ``README.md``: several models exported
into one folder each get their own card, and a folder's own README is never touched. The card's
first line (an HTML comment, invisible when rendered) holds the SHA-256 of the lines below it, as
the run's config.yaml does: a file of the card's name that is not an unedited card written by
difflab -- the user's notes, a card edited by hand -- is the user's, and export refuses to write
over it (:func:`check_card_target`) before it writes anything.

**Which metrics.** ``difflab eval`` writes ``metrics.json`` into its ``--out`` folder (by default
``eval/<name of --ckpt>`` in the working folder) with the resolved ``--ckpt`` it measured. They
are this checkpoint's when that path is this checkpoint folder, or when it is the run folder (eval
then loads the run's newest checkpoint) and this checkpoint is the run's newest and was saved
before the evaluation's sampling began (the file's time less the sampling seconds it records):
metrics of another checkpoint never appear as this one's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Optional, Union

from safetensors import safe_open

from ..files import sha256_file
from .config import TrainConfig, config_from_text

__all__ = ["model_card", "card_path", "check_card_target", "is_difflab_card", "find_eval_metrics"]

_HEADER = "<!-- difflab model card (sha256 of the lines below: {digest}) -->\n"
_HEADER_RE = re.compile(r"^<!-- difflab model card \(sha256 of the lines below: ([0-9a-f]{64})\) -->\n")


def card_path(weights_file: Union[str, Path]) -> Path:
    """The card of ``weights_file``: ``FILE.md`` beside ``FILE.safetensors``."""
    return Path(weights_file).with_suffix(".md")


def is_difflab_card(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a card difflab wrote and nobody edited since (its first line's
    SHA-256 matches the rest). A symbolic link never is (writing would replace the link)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    m = _HEADER_RE.match(text)
    return m is not None and hashlib.sha256(text[m.end():].encode()).hexdigest() == m.group(1)


def check_card_target(path: Union[str, Path]) -> None:
    """FileExistsError unless ``path`` is free or holds a card difflab wrote and nobody edited:
    difflab never writes over a user's file (not with ``force`` either, which is about the weights)."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not is_difflab_card(path):
        raise FileExistsError(
            f"{str(path)!r} exists and is not a model card written by difflab (or was edited since); export "
            f"writes the model card of {path.with_suffix('.safetensors').name!r} under that name and never over "
            "a file of yours: move it away, or export without a card (--no-card; card=False)")


def model_card(checkpoint: Union[str, Path], weights_file: Union[str, Path], *, name: Optional[str] = None,
               metrics: Union[str, Path, None] = None, search: tuple = ()) -> str:
    """The Markdown card of ``weights_file`` (written by ``export_model`` from the checkpoint
    folder ``checkpoint``), first line included. ``name``: the weights file's name the card
    refers to (default: ``weights_file``'s; export renders the card from its temporary file).

    ``metrics``: a ``metrics.json`` of ``difflab eval`` or the folder holding one; metrics of another
    run or checkpoint are refused (ValueError). None: the first of :func:`find_eval_metrics` (eval's
    default folders, and ``search``), used only when it measured this checkpoint."""
    ck = Path(checkpoint)
    if not (ck / "state.json").is_file():
        raise ValueError(f"checkpoint {str(ck)!r} is not a checkpoint folder (no state.json); give the folder "
                         "the model was exported from, e.g. runs/digits/checkpoints/step_00001000")
    weights_file = Path(weights_file)
    name = name or weights_file.name
    meta, parameters = _exported(weights_file)
    cfg = config_from_text(meta["config"], f"the 'config' metadata of {str(weights_file)!r}")
    exported_state = json.loads(meta["state"])
    state = json.loads((ck / "state.json").read_text())
    if metrics is not None:
        measured = _measured(_metrics_file(Path(metrics)), ck, explicit=True)
    else:
        measured = None
        for file in find_eval_metrics(ck, search):
            found = _measured(file, ck, explicit=False)
            if found is not None and (measured is None or ("note" in measured and "note" not in found)):
                measured = found  # the first that measured this checkpoint, else the first note
    autoencoder = cfg.loss == "autoencoder"
    lines = [f"# {Path(name).stem}", "",
             f"{'An autoencoder (the KL autoencoder of latent diffusion)' if autoencoder else 'A diffusion model'} "
             f"exported by `difflab export` from `{ck}`: the "
             f"{'EMA' if meta['weights'] == 'ema' else 'raw'} weights of step {exported_state['step']}, as "
             f"{meta['dtype']}.", ""]
    lines += _model_section(cfg, state, exported_state, parameters, _scale_factor(weights_file) if autoencoder else None)
    lines += _training_section(cfg, ck, state, exported_state, meta)
    if measured is not None:
        lines += _eval_section(measured)
    if state.get("converted_from"):
        lines += _provenance_section(state["converted_from"])
    shape = exported_state.get("image_shape") or exported_state["sample_shape"]
    lines += _autoencoder_use_section(name, shape) if autoencoder else _use_section(name, cfg, _num_classes(cfg, state),
                                                                                     shape)
    lines += ["## Files", "",
              f"The SHA-256 of the weights (`sha256sum -c {Path(name).stem}.md` in this folder checks it):", "",
              "```", f"{sha256_file(weights_file)}  {name}", "```", "",
              "## Config", "", "<details><summary>config.yaml of the checkpoint</summary>", "",
              "```yaml", meta["config"].rstrip("\n"), "```", "", "</details>", ""]
    body = "\n".join(lines)
    return _HEADER.format(digest=hashlib.sha256(body.encode()).hexdigest()) + body


def find_eval_metrics(checkpoint: Union[str, Path], search: tuple = ()) -> list[Path]:
    """The ``metrics.json`` files that may hold ``difflab eval``'s measurements of ``checkpoint``:
    those of the folders in ``search``, then of eval's default ``--out`` for the run folder and
    for the checkpoint folder (``eval/<name>`` in the working folder), in that order; whose they
    are is read from each file's ``ckpt``."""
    ck = Path(checkpoint)
    run = _run_folder(ck)
    folders = [Path(s) for s in search] + [Path("eval") / p.name for p in (run, ck) if p is not None]
    files = [f / "metrics.json" if f.suffix != ".json" else f for f in folders]
    return [f for f in dict.fromkeys(files) if f.is_file()]


# ---------------------------------------------------------------- reading
def _exported(file: Path) -> tuple[dict, int]:
    """The metadata of an exported model file and its parameter count (from its header)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            parameters = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: not a model file
        raise ValueError(f"{str(file)!r} is not a safetensors file ({err}); a model card describes a "
                         "file written by difflab export") from None
    missing = [k for k in ("config", "state", "weights", "dtype") if k not in meta]
    if missing:
        raise ValueError(f"{str(file)!r} is not a model file written by difflab export (its metadata lacks "
                         f"{', '.join(missing)}); export one with `difflab export --ckpt RUN --out FILE`")
    return meta, parameters


def _run_folder(ck: Path) -> Optional[Path]:
    """The run folder of a checkpoint folder (``RUN/checkpoints/step_N``), else None."""
    return ck.parent.parent if ck.parent.name == "checkpoints" else None


def _num_classes(cfg: TrainConfig, state: dict) -> Optional[int]:
    n = state.get("num_classes", cfg.model.kwargs.get("num_classes"))
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _last_logged_loss(run: Optional[Path], step: int) -> Optional[tuple[float, int, int]]:
    """(loss, first step, last step) of log.csv's last row at or before ``step``: the mean loss
    over the steps since the row before; None without a readable log."""
    if run is None or not (run / "log.csv").is_file():
        return None
    try:
        with open(run / "log.csv", newline="") as f:
            rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, csv.Error):
        return None
    rows = sorted(r for r in rows if r[0] <= step)
    if not rows:
        return None
    first = rows[-2][0] + 1 if len(rows) > 1 else 1
    return rows[-1][1], first, rows[-1][0]


def _metrics_file(path: Path) -> Path:
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"metrics {str(path)!r}: no such file (give the metrics.json of `difflab eval`, "
                                "or the --out folder it wrote)")
    return file


def _read_metrics(file: Path) -> dict:
    try:
        result = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"metrics {str(file)!r} is not readable JSON ({err}); give the metrics.json "
                         "that `difflab eval` wrote") from None
    if (not isinstance(result, dict) or not isinstance(result.get("ckpt"), str)
            or not isinstance(result.get("rows"), list) or not all(isinstance(r, dict) for r in result["rows"])):
        raise ValueError(f"metrics {str(file)!r} is not a metrics.json of `difflab eval` (it needs 'ckpt' and "
                         "'rows'); give the metrics.json that `difflab eval` wrote")
    return result


def _complete_checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "state.json").is_file())


def _measured(file: Path, ck: Path, explicit: bool) -> Optional[dict]:
    """{"file", "result"} when ``file`` measured checkpoint ``ck``; {"file", "note"} when it
    measured another checkpoint of the run (explicit: ValueError); None when it measured
    something else (explicit: ValueError)."""
    try:
        result = _read_metrics(file)
    except ValueError:
        if explicit:
            raise
        return None
    target, run = Path(result["ckpt"]), _run_folder(ck)
    if target == ck.resolve():
        return {"file": file, "result": result, "how": f"`difflab eval --ckpt {ck}`"}
    run_paths = () if run is None else (run.resolve(), (run / "checkpoints").resolve())
    if target in run_paths:
        # eval loaded the run's newest checkpoint, before sampling: the seconds it records
        done = _complete_checkpoints(run)
        sampling = sum(float(r.get("seconds", 0.0)) for r in result["rows"])
        began_before = file.stat().st_mtime - sampling
        if done and done[-1].resolve() == ck.resolve() and (ck / "state.json").stat().st_mtime <= began_before:
            return {"file": file, "result": result,
                    "how": f"`difflab eval --ckpt {run}`, when this was the run's newest checkpoint"}
        why = (f"measured the run folder {str(target)!r} when its newest checkpoint was not certainly this "
               f"one, {ck.name}")
    elif any(target == p.resolve() for p in (_complete_checkpoints(run) if run is not None else [])):
        why = f"measured another checkpoint of the run, {target.name}"
    else:
        if explicit:
            raise ValueError(f"metrics {str(file)!r} measured {str(target)!r}, not this run's checkpoint "
                             f"{str(ck)!r}; give the metrics of `difflab eval --ckpt {ck}`")
        return None
    if explicit:
        raise ValueError(f"metrics {str(file)!r} {why}; evaluate this checkpoint (`difflab eval --ckpt {ck}`) "
                         "or export the one it measured")
    return {"file": file, "note": why}


# ---------------------------------------------------------------- rendering
def _table(rows: list[list[str]], head: list[str]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _kwargs(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items())


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _number(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def _scale_factor(file: Path) -> Optional[float]:
    """An exported autoencoder's latent scale factor (its ``scaling_factor`` buffer), None if absent."""
    with safe_open(str(file), framework="pt") as f:
        key = next((k for k in f.keys() if k.endswith("scaling_factor")), None)
        return None if key is None else float(f.get_tensor(key))


def _model_section(cfg: TrainConfig, state: dict, exported_state: dict, parameters: int,
                   scale_factor: Optional[float] = None) -> list[str]:
    d = cfg.diffusion
    if cfg.loss == "autoencoder":  # no process: the latent's scale instead
        shape = exported_state.get("image_shape") or exported_state["sample_shape"]
        scale = "not measured" if not scale_factor else f"{scale_factor:.6g} (1 / std of the training latents)"
        rows = [["network", f"`{cfg.model.name}`" + (f" ({_kwargs(cfg.model.kwargs)})" if cfg.model.kwargs else "")],
                ["parameters", f"{parameters:,}"], ["latent scale factor", scale],
                ["data set", cfg.data.name + (f" ({_kwargs(cfg.data.kwargs)})" if cfg.data.kwargs else "")],
                ["image shape", " × ".join(str(s) for s in shape)]]
        return ["## Model", ""] + _table(rows, ["", ""]) + [""]
    if d.process == "ddpm":
        process = f"ddpm (the discrete chain), {d.schedule} schedule, T = {d.T}"
    else:
        process = d.process + (f" ({_kwargs(d.process_kwargs)})" if d.process_kwargs else "")
    shape = exported_state.get("image_shape") or exported_state["sample_shape"]
    classes = _num_classes(cfg, state)
    data = cfg.data.name + (f" ({_kwargs(cfg.data.kwargs)})" if cfg.data.kwargs else "")
    rows = [["network", f"`{cfg.model.name}`" + (f" ({_kwargs(cfg.model.kwargs)})" if cfg.model.kwargs else "")],
            ["parameters", f"{parameters:,}"],
            ["process", f"{process}; the network predicts {d.resolved_prediction}"],
            ["data set", data],
            ["image shape", " × ".join(str(s) for s in shape)],
            ["classes", f"{classes} (class-conditional: labels 0 to {classes - 1})" if classes
             else "none (unconditional)"]]
    return ["## Model", ""] + _table(rows, ["", ""]) + [""]


def _training_section(cfg: TrainConfig, ck: Path, state: dict, exported_state: dict, meta: dict) -> list[str]:
    step = exported_state["step"]
    weights = (f"EMA (decay {state.get('ema', {}).get('decay', cfg.ema.decay)})" if meta["weights"] == "ema"
               else "raw (not the EMA)")
    exported = f"step {step} (`{ck.name}`), {weights} weights, stored as {meta['dtype']}"
    if state.get("converted_from") and step == 0:
        rows = [["training", "none in difflab: converted weights (see Provenance)"], ["exported", exported]]
        return ["## Training", ""] + _table(rows, ["", ""]) + [""]
    loss = _last_logged_loss(_run_folder(ck), step)
    elapsed = exported_state.get("elapsed_s", state.get("elapsed_s"))
    batch = f"{cfg.batch_size} images per optimizer step" + (
        f" ({cfg.grad_accum} accumulated micro-batches)" if cfg.grad_accum > 1 else "")
    rows = [["steps", f"{step:,} of the {cfg.steps:,} configured"],
            ["wall-clock time", "not recorded" if not isinstance(elapsed, (int, float))
             else f"{_duration(float(elapsed))} (to this checkpoint, over every resume)"],
            ["final loss", "not recorded (no readable log.csv in the run folder)" if loss is None
             else f"{loss[0]:.4g} (the mean over steps {loss[1]:,}–{loss[2]:,}, log.csv)"],
            ["precision", cfg.precision],
            ["batch", batch],
            ["optimizer", f"AdamW, lr {cfg.optim.lr:g} ({cfg.optim.decay} decay, {cfg.optim.warmup_steps} warm-up "
                          "steps)"],
            ["exported", exported]]
    return ["## Training", ""] + _table(rows, ["", ""]) + [""]


_IMAGE_COLUMNS = (("fid", None), ("precision", "precision"), ("recall", "recall"), ("accuracy", "accuracy"))
_TOY_COLUMNS = (("sliced_wasserstein", "sliced W2"), ("mmd2", "MMD²"), ("precision", "precision"),
                ("recall", "recall"), ("modes_covered", "modes covered"))


def _eval_section(measured: dict) -> list[str]:
    lines = ["## Evaluation (`difflab eval`)", ""]
    if "note" in measured:
        return lines + [f"`{measured['file']}` {measured['note']}: not shown here.", ""]
    r = measured["result"]
    rows = r["rows"]
    columns = _TOY_COLUMNS if any("sliced_wasserstein" in x for x in rows) else _IMAGE_COLUMNS
    columns = [(k, h or r.get("metric", "FID")) for k, h in columns
               if any(k in x for x in rows) or k in r.get("floor", {})]

    def cell(x: dict, k: str) -> str:
        if k == "modes_covered" and k in x:
            return f"{x[k]} of {x.get('num_modes', '?')}"
        return _number(x[k]) if k in x else ""

    table = [[str(x.get("sampler", "")), _number(x.get("steps", "")), _number(x.get("guidance", ""))]
             + [cell(x, k) for k, _ in columns] for x in rows]
    floor = r.get("floor")
    if isinstance(floor, dict):
        table.append([f"real data{' (' + floor['images'] + ')' if 'images' in floor else ''}: the floor", "", ""]
                     + [cell(floor, k) for k, _ in columns])
    lines += [f"Measured by {measured['how']} (`{measured['file']}`): {r.get('n', '?')} samples per setting "
              f"(seed {r.get('seed', '?')}) against {r.get('reference', 'its reference')}.", ""]
    if isinstance(r.get("classifier"), dict):
        c = r["classifier"]
        lines += [f"Features of a classifier trained on {c.get('dataset')} ({c.get('train_split')}; test accuracy "
                  f"{_number(c.get('test_accuracy'))} on {c.get('test_split')}): these are not Inception FIDs.", ""]
    lines += _table(table, ["sampler", "steps", "guidance"] + [h for _, h in columns]) + [""]
    for key in ("bits_per_dim", "bits_per_dim_ode"):
        b = r.get(key)
        if isinstance(b, dict) and "mean" in b:
            how = "variational bound" if b.get("method") == "vlb" else "probability-flow ODE"
            lines += [f"- {_number(b['mean'])} ± {_number(b.get('stderr', float('nan')))} bits/dim ({how}, "
                      f"{b.get('n', '?')} held-out images of {b.get('images', '?')})"]
    if any(isinstance(r.get(k), dict) for k in ("bits_per_dim", "bits_per_dim_ode")):
        lines.append("")
    return lines


def _provenance_section(source: dict) -> list[str]:
    if not isinstance(source, dict):
        return ["## Provenance", "", f"Converted from {source}.", ""]
    what = " ".join(str(source[k]) for k in ("format", "model") if source.get(k))
    lines = ["## Provenance", "", f"Converted by `difflab convert` from the {what} at `{source.get('source', '?')}`"
             + (f" (scheduler {source['scheduler']})" if source.get("scheduler") else "") + "."]
    notes = source.get("notes") or []
    if notes:
        lines += ["", "Notes of the conversion:", ""] + [f"- {n}" for n in notes]
    return lines + [""]


def _autoencoder_use_section(name: str, shape: list) -> list[str]:
    return ["## Use", "", "```python", "import difflab as dl", "", f"ae = dl.load({json.dumps(name)}).ema_model",
            f"z = ae.encode_latents(x)  # x [B, {', '.join(map(str, shape))}] in [-1, 1] -> scaled latents",
            "x_hat = ae.decode_latents(z)", "```", ""]


def _use_section(name: str, cfg: TrainConfig, classes: Optional[int], shape: list) -> list[str]:
    guidance = cfg.sample.guidance if classes and cfg.sample.guidance != 1.0 else None
    cli = f"difflab sample --ckpt {name}"
    cli += (" --label all --n 8" + (f" --guidance {guidance:g}" if guidance else "") if classes else " --n 16")
    cli += " --out samples.png" if len(shape) == 3 else " --save-tensor samples.pt"  # (a grid of images only)
    py = f"x = run.sample(16{', labels=0' if classes else ''}{f', guidance={guidance:g}' if guidance else ''})"
    return ["## Use", "", "```sh", cli, "```", "", "```python", "import difflab as dl", "",
            f"run = dl.load({json.dumps(name)})", f"{py}  # [16, {', '.join(map(str, shape))}], in about [-1, 1]",
            "```", ""]
