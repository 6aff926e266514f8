"""The run folder's ``config.yaml``: written by the trainer, never over a file a person wrote.

The rule: the trainer writes ``<run>/config.yaml`` (the run's whole config) when the file is
absent, when difflab wrote it and nobody edited it since, or when it holds exactly this run's
config already (then it is left as it is, comments and all: ``--config exp/config.yaml --out exp``
keeps the user's file). A file that holds another config and that difflab did not write as it
is now -- the user's own config, or the run's file edited by hand -- is never written over: the
run is refused up front, every differing field named, with what to do.

difflab's own files are told apart by their first line, which holds the SHA-256 of the rest;
an edit changes the rest and no longer matches. Files written before that header existed count
as difflab's when they are byte-identical to the resumed checkpoint's config.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional

from .config import RESUMABLE_FIELDS, TrainConfig, config_diff, config_from_text, config_to_text

__all__ = ["render_run_config", "run_config_action"]

_HEADER = "# The config of this run, written by difflab train (sha256 of the lines below: {digest}).\n"
_NOTE = ("# Edits here change nothing by themselves: pass this file as --config to apply them\n"
         "# (with --resume only the fields that do not change what is trained may change).\n")
_HEADER_RE = re.compile(r"^# The config of this run, written by difflab train \(sha256 of the lines below: "
                        r"([0-9a-f]{64})\)\.\n")


def render_run_config(cfg: TrainConfig) -> str:
    """The text of ``<run>/config.yaml`` for ``cfg``: the header, then the YAML."""
    body = _NOTE + config_to_text(cfg)
    return _HEADER.format(digest=hashlib.sha256(body.encode()).hexdigest()) + body


def _written_by_difflab(text: str) -> bool:
    m = _HEADER_RE.match(text)
    return m is not None and hashlib.sha256(text[m.end():].encode()).hexdigest() == m.group(1)


def run_config_action(path: Path, cfg: TrainConfig, resumed: Optional[TrainConfig] = None) -> str:
    """What to do with the run's ``config.yaml`` at ``path`` before training ``cfg``: "write"
    or "keep"; ValueError (every differing field named) when it holds a config a person wrote.
    ``resumed``: the config of the checkpoint a resumed run continues."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "write"
    except IsADirectoryError:
        raise ValueError(f"{str(path)!r} is a folder; the run folder's config.yaml must be a file: move it "
                         "away, or train into another --out") from None
    new = render_run_config(cfg)
    if raw == new.encode():
        return "keep"
    try:
        text = raw.decode()
        parsed: Optional[TrainConfig] = config_from_text(text)
    except (ValueError, TypeError, UnicodeDecodeError, AttributeError):
        text, parsed = None, None
    if parsed is not None and not config_diff(parsed, cfg, ignore=()):
        return "keep"  # this run's config in the user's own words (prediction: eps = null under ddpm)
    if text is not None and (_written_by_difflab(text) or (
            resumed is not None and text == config_to_text(resumed))):  # (before the header existed)
        return "write"
    if parsed is None:
        raise ValueError(
            f"{str(path)!r} holds no readable config and difflab did not write it: training here would write "
            "over it. Move it away, or train into another --out")
    diff = "; ".join(f"{k}: {a!r} there, {b!r} in this run" for k, a, b in config_diff(parsed, cfg, ignore=()))
    if resumed is not None:
        raise ValueError(
            f"{str(path)!r} was edited and the resumed run would write over it, ignoring these edits: {diff}. "
            "The run trains with the config it was given (--resume: the checkpoint's) and the flags, not this "
            "file's: to apply the "
            f"edits, pass the file as --config (on --resume only {', '.join(RESUMABLE_FIELDS)} may change); to "
            "drop them, delete the file")
    raise ValueError(
        f"{str(path)!r} holds another config than this run's and difflab did not write it: training would write "
        f"over it ({diff}). Pass that file as --config and put the changes in it instead of flags, or copy it "
        "elsewhere first, or train into another --out")
