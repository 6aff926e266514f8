"""``difflab serve``: the safety rules of its options (a non-loopback --host needs --token, limits
and ports checked) refused with one line before anything starts, the missing extra named with
its install command, and a real server process that answers with its token and stops on Ctrl+C."""

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from difflab.cli import main
from difflab.cli.serve import check_host
from difflab.training.config import TrainConfig
from difflab.training.trainer import Trainer

TOKEN = "cli-test-token-123"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A class-conditional MLP on the flattened 8x8 digits, two steps (the pixels don't matter here)."""
    out = tmp_path_factory.mktemp("serve_cli") / "digits"
    cfg = TrainConfig.from_dict({
        "model": {"name": "mlp", "kwargs": {"dim": 64, "width": 16, "depth": 1, "num_classes": 10}},
        "diffusion": {"schedule": "linear", "T": 100}, "data": {"name": "digits", "flatten": True},
        "sample": {"every": -1}, "batch_size": 8, "steps": 2, "ckpt_every": 2, "device": "cpu", "tensorboard": False,
    })
    Trainer(cfg, out, progress=False).train()
    return out


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 makes the page reachable from other machines: give it a --token too"),
    (["--host", "192.168.1.5", "--token", ""], "give it a --token too"),
    (["--port", "70000"], "--port must lie in 0 .. 65535, got 70000"),
    (["--max-n", "0"], "--max-n must be an integer >= 1, got 0"),
    (["--max-steps", "-1"], "--max-steps must be an integer >= 1"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be a number in (0, 1024]"),
    (["--max-queue", "-1"], "--max-queue must be an integer >= 0"),
    (["--host", "0.0.0.0", "--token", "short"], "--token must be a string of at least 8 characters"),
])
def test_unsafe_or_bad_options_are_refused_in_one_line(run_dir, capsys, args, message):
    assert main(["serve", "--ckpt", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("difflab serve: error: ") and message in err and "Traceback" not in err


def test_loopback_hosts_need_no_token_and_others_do():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.1.1"):
        check_host(host, None)
    for host in ("0.0.0.0", "::", "myhost.local", "10.0.0.2"):
        with pytest.raises(ValueError, match="--token"):
            check_host(host, None)
        check_host(host, TOKEN)


def test_a_missing_web_extra_is_named_with_its_install_command(run_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", "--ckpt", str(run_dir)]) == 1
    assert 'install the web extra: pip install -e ".[web]"' in capsys.readouterr().err


def test_a_run_that_is_not_there_is_refused(tmp_path, capsys):
    assert main(["serve", "--ckpt", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_server_process_answers_with_its_token_and_stops_on_ctrl_c(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "difflab.cli", "serve", "--ckpt", str(run_dir), "--port", "0", "--token", TOKEN,
         "--max-n", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()  # printed once the socket is bound
        m = re.match(r"difflab serve: digits on (http://127\.0\.0\.1:\d+)/\?token=(\S+)  \(Ctrl\+C stops\)", line)
        assert m and m.group(2) == TOKEN, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = m.group(1)
        status, body = get(url + "/api/models", TOKEN)
        assert status == 200 and b'"max_n":2' in body
        assert get(url + "/api/models")[0] == 401 and get(url + "/", "wrong-token-xyz")[0] == 403
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert proc.stdout.read() == "difflab serve: stopped\n" and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_port_in_use_is_one_line_with_the_fix(run_dir, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "--ckpt", str(run_dir), "--port", str(port)]) == 1
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert f"difflab serve: error: cannot listen on 127.0.0.1:{port}" in err and "--port 0 for any free one" in err
