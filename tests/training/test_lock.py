"""One training per run folder (difflab.training.lock): the lock file, its owner, stale locks,
and the trainer holding it. The two-process case with the ``difflab`` command:
tests/test_bad_input_training.py::test_two_trainings_into_one_folder_one_is_refused.

Runs: the tiny MLP of tiny_config.py (a few steps each).
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from tiny_config import tiny

import difflab as dl
from difflab.training import Trainer
from difflab.training.lock import LOCK_NAME, RunLock, RunLocked


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": None, "since": "2026-01-01 00:00:00",
            "command": "difflab train", "token": "someone-else", **fields}
    (folder / LOCK_NAME).write_text(json.dumps(info))
    return folder / LOCK_NAME


def test_the_lock_names_its_owner_refuses_a_second_and_is_released(tmp_path):
    with RunLock(tmp_path / "run") as first:
        info = json.loads(first.path.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as err:
            RunLock(tmp_path / "run").acquire()
        msg = str(err.value)
        assert str(tmp_path / "run") in msg and f"process {os.getpid()}" in msg and "another --out" in msg
        assert "\n" not in msg
        with pytest.raises(RunLocked):
            RunLock(tmp_path / "run").check()
    assert not first.path.exists()
    RunLock(tmp_path / "run").check()  # free again


def test_release_never_deletes_a_lock_that_is_not_its_own(tmp_path):
    lock = RunLock(tmp_path).acquire()
    _write_lock(tmp_path, token="taken-over")
    lock.release()
    assert (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid)
    notes = []
    lock = RunLock(tmp_path, say=notes.append).acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"process {pid} on this host, no longer runs" in notes[0]
    assert str(tmp_path) in notes[0] and "taking over" in notes[0]
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the stale file moved aside is gone too


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/stat"), reason="process start times from /proc")
def test_a_process_id_reused_by_a_younger_process_is_stale(tmp_path):
    _write_lock(tmp_path, pid=os.getpid(), started="1")  # this pid, but not this process's start time
    notes = []
    RunLock(tmp_path, say=notes.append).acquire().release()
    assert notes and "no longer runs" in notes[0]


def test_a_lock_from_another_host_is_refused_and_says_how_to_remove_it(tmp_path):
    _write_lock(tmp_path, host="some-other-machine", pid=_dead_pid())
    with pytest.raises(RunLocked, match="on host 'some-other-machine'.*delete the lock file"):
        RunLock(tmp_path).acquire()


def test_an_unreadable_lock_is_respected_while_young_and_taken_over_when_old(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")  # created, not yet written
    with pytest.raises(RunLocked, match="being written"):
        RunLock(tmp_path).acquire()
    old = time.time() - 60
    os.utime(tmp_path / LOCK_NAME, (old, old))
    notes = []
    RunLock(tmp_path, say=notes.append).acquire().release()
    assert notes and "unreadable" in notes[0]


@pytest.mark.parametrize("stale", ["", "{garbled", "dead pid"])
@pytest.mark.parametrize("fresh", ["taken", "being written"])
def test_a_fresh_lock_taken_while_a_stale_one_is_removed_is_never_deleted(tmp_path, monkeypatch, stale, fresh):
    """Process B judges the lock stale; before B moves it aside, process A removes that stale lock
    and takes a fresh one (written, or still empty). B's rename then moves A's lock: B must see that
    it is not the file it judged (empty and garbled locks have no content to compare: their
    identity, inode + mtime + size, tells), put it back and be refused, so only A holds the lock."""
    path = tmp_path / LOCK_NAME
    if stale == "dead pid":
        _write_lock(tmp_path, pid=_dead_pid())
    else:
        path.write_text(stale)
        old = time.time() - 60
        os.utime(path, (old, old))
    a = RunLock(tmp_path, say=lambda msg: None)
    calls = []

    def a_moves_in(lock):  # RunLock._judged_stale: between judging and renaming
        calls.append(lock)
        if len(calls) > 1:
            return  # A's own take-over (fresh == "taken") passes this hook too
        if fresh == "taken":
            a.acquire()  # A judges the same lock stale, removes it and takes its own
        else:
            path.unlink()
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # A's lock, created, not yet written

    monkeypatch.setattr(RunLock, "_judged_stale", a_moves_in)
    b = RunLock(tmp_path, say=lambda msg: None)
    with pytest.raises(RunLocked, match=f"process {os.getpid()}" if fresh == "taken" else "being written"):
        b.acquire()
    assert not b.held and calls[0] is b
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # A's lock, back in place; nothing aside
    if fresh == "taken":
        assert a.held and json.loads(path.read_text())["token"] == a.token
        a.release()
        assert not path.exists()
    else:
        assert path.read_text() == ""


# ------------------------------------------------------------------ the trainer
def test_the_trainer_holds_the_lock_while_training_and_releases_it(tmp_path):
    seen = []

    def loss_fn(model, batch):
        seen.append((tmp_path / LOCK_NAME).is_file())
        return model(batch.x0, batch.t, batch.cond).pow(2).mean()

    trainer = Trainer(tiny(steps=2, ckpt_every=2), tmp_path, loss_fn=loss_fn, progress=False)
    assert not (tmp_path / LOCK_NAME).exists()  # set up: nothing taken yet
    trainer.train()
    assert seen[-2:] == [True, True] and not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_the_lock_is_released_when_training_fails(tmp_path, error):
    def loss_fn(model, batch):
        raise error("stop")

    with pytest.raises(error):
        Trainer(tiny(steps=2), tmp_path, loss_fn=loss_fn, progress=False).train()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_trainer_is_refused_while_a_living_process_holds_the_folder(tmp_path):
    """This test's own process plays the other training (alive, another lock token)."""
    _write_lock(tmp_path)
    with pytest.raises(RunLocked, match=f"in use by another training \\(process {os.getpid()}"):
        Trainer(tiny(steps=2), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # nothing written


def test_a_trainer_takes_over_a_stale_lock_with_a_note(tmp_path, capsys):
    Trainer(tiny(steps=2, ckpt_every=2), tmp_path, progress=False).train()
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid)  # as a training killed with SIGKILL leaves it
    Trainer(tiny(steps=4, ckpt_every=2), tmp_path, resume=True, progress=False).train()
    err = capsys.readouterr().err
    assert f"taking over the lock of run folder {str(tmp_path)!r}" in err and f"process {pid}" in err
    assert not (tmp_path / LOCK_NAME).exists() and dl.load(tmp_path).step == 4


def test_a_trainer_set_up_before_another_one_trained_is_refused(tmp_path):
    """Two trainers set up on an empty folder: the lock lets one train at a time, and the second,
    finding a checkpoint that was not there when it was set up, is refused rather than starting
    over on top of it."""
    a = Trainer(tiny(steps=2, ckpt_every=2), tmp_path, progress=False)
    b = Trainer(tiny(steps=2, ckpt_every=2, seed=9), tmp_path, progress=False)
    a.train()
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step_00000002").iterdir()}
    with pytest.raises(FileExistsError, match="changed while this training was being set up.*--resume"):
        b.train()
    after = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step_00000002").iterdir()}
    assert before == after and not (tmp_path / LOCK_NAME).exists()
