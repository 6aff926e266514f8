"""The run folder's config.yaml (difflab.training.run_config): written by the trainer, never over
a file a person wrote or edited; a resume that would ignore edits names every edited field.

Runs: the tiny MLP of tiny_config.py (a few steps each). The same through ``difflab train``:
tests/test_bad_input_training.py.
"""

import pytest
from tiny_config import tiny

from difflab.training import Trainer, load_config
from difflab.training.config import config_to_text
from difflab.training.run_config import render_run_config, run_config_action


def test_the_trainer_writes_a_config_that_says_it_wrote_it(tmp_path):
    Trainer(tiny(steps=2, ckpt_every=2), tmp_path, progress=False).train()
    text = (tmp_path / "config.yaml").read_text()
    assert text == render_run_config(tiny(steps=2, ckpt_every=2)) and text.startswith("# The config of this run")
    assert load_config(tmp_path / "config.yaml").to_dict() == tiny(steps=2, ckpt_every=2).to_dict()
    # a resume that trains longer rewrites it: difflab's own, unedited file
    Trainer(tiny(steps=4, ckpt_every=2), tmp_path, resume=True, progress=False).train()
    assert load_config(tmp_path / "config.yaml").steps == 4


def test_a_users_config_in_the_run_folder_is_kept_byte_for_byte(tmp_path):
    mine = "# my experiment: comments and my own order\n" + config_to_text(tiny(steps=2, ckpt_every=2))
    (tmp_path / "config.yaml").write_text(mine)
    Trainer(load_config(tmp_path / "config.yaml"), tmp_path, progress=False).train()
    assert (tmp_path / "config.yaml").read_text() == mine
    # another config (here: more steps) would write over it: refused before anything is written
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "config.yaml").write_text(mine)
    with pytest.raises(ValueError, match=r"holds another config than this run's .*steps: 2 there, 3 in this run"):
        Trainer(tiny(steps=3, ckpt_every=2), tmp_path / "y", progress=False)
    assert [p.name for p in (tmp_path / "y").iterdir()] == ["config.yaml"]
    assert (tmp_path / "y" / "config.yaml").read_text() == mine


def test_resume_refuses_to_ignore_edits_of_the_run_config_and_names_every_one(tmp_path):
    Trainer(tiny(steps=2, ckpt_every=2), tmp_path, progress=False).train()
    edited = (tmp_path / "config.yaml").read_text().replace("steps: 2", "steps: 4").replace("lr: 0.001", "lr: 0.01")
    (tmp_path / "config.yaml").write_text(edited)
    with pytest.raises(ValueError) as err:
        Trainer(tiny(steps=2, ckpt_every=2), tmp_path, resume=True, progress=False)
    msg = str(err.value)
    assert "was edited" in msg and "optim.lr: 0.01 there, 0.001 in this run" in msg
    assert "steps: 4 there, 2 in this run" in msg and "pass the file as --config" in msg
    assert (tmp_path / "config.yaml").read_text() == edited
    # applied through --config: steps may change on a resume, the learning rate may not
    with pytest.raises(ValueError, match=r"cannot resume .*optim.lr"):
        Trainer(load_config(tmp_path / "config.yaml"), tmp_path, resume=True, progress=False)
    (tmp_path / "config.yaml").write_text(edited.replace("lr: 0.01", "lr: 0.001"))
    t = Trainer(load_config(tmp_path / "config.yaml"), tmp_path, resume=True, progress=False)
    assert t.train()["step"] == 4
    assert (tmp_path / "config.yaml").read_text() == edited.replace("lr: 0.01", "lr: 0.001")  # kept: the run's config


def test_run_configs_written_before_the_header_count_as_difflabs_when_they_match_the_checkpoint(tmp_path):
    Trainer(tiny(steps=2, ckpt_every=2), tmp_path, progress=False).train()
    (tmp_path / "config.yaml").write_text(config_to_text(tiny(steps=2, ckpt_every=2)))  # an old run's file
    assert run_config_action(tmp_path / "config.yaml", tiny(steps=4), tiny(steps=2, ckpt_every=2)) == "write"
    with pytest.raises(ValueError, match="holds another config"):
        run_config_action(tmp_path / "config.yaml", tiny(steps=4), None)
