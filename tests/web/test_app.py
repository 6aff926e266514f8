"""Every route of the web server through FastAPI's TestClient: the happy path against the
library's own output, and each bad input (missing fields, out-of-range values, an oversized or
unstated upload, a wrong or missing token, a foreign Host, a full queue) answered with a 4xx or
503 and a message the page shows."""

import io
import re
import threading
import time
import tomllib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from scripts import REPO

from difflab.web import STATIC, Catalog, Limits, create_app, is_loopback, to_png

LOCAL = "http://127.0.0.1"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def catalog(digits_run_dir):
    return Catalog([digits_run_dir])


@pytest.fixture
def client(catalog):
    app = create_app(catalog, Limits(max_n=4, max_steps=50, max_upload_mb=0.01, max_queue=2))
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def wait(client, job_id, timeout=20.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = client.get(f"/api/jobs/{job_id}").json()
        if s["state"] in ("done", "failed"):
            return s
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} unfinished: {s}")


def error(response, status):
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()["error"]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int32)


def digit_png(run, label=2, seed=0):
    return to_png(run.sample(1, "ddim", 10, 1.0, label, seed))


def bottom_half_mask():
    m = -torch.ones(1, 1, 8, 8)
    m[..., 4:, :] = 1
    return to_png(m)


# ------------------------------------------------------------------ the page and the models
def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="generate"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").content == (STATIC / name).read_bytes()
    # no external resource anywhere in the page: it works offline
    for name in ("index.html", "app.js", "style.css"):
        assert not re.search(r"(https?:)?//[a-z]", (STATIC / name).read_text().replace("http://HOST", "")), name
    for path in ("/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2fapp.py"):  # (sent as written)
        r = client.get(path)
        assert r.status_code == 404 and b"create_app" not in r.content, path
    assert error(client.get("/nowhere"), 404) == "Not Found"
    assert error(client.get("/api/generate"), 405) == "Method Not Allowed"


def test_the_static_files_ship_with_the_package():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["difflab.web"]
    shipped = {p.name for pattern in patterns for p in STATIC.parent.glob(pattern)}
    assert shipped == {p.name for p in STATIC.iterdir()} == {"index.html", "app.js", "style.css"}


def test_models_lists_ids_classes_and_limits(client):
    info = client.get("/api/models").json()
    assert [m["id"] for m in info["models"]] == ["digits"] and info["models"][0]["classes"] == 10
    assert info["limits"] == {"max_n": 4, "max_steps": 50, "max_upload_mb": 0.01, "max_queue": 2}
    assert info["token"] is False and info["queues"] == {"cpu": {"waiting": 0, "running": 0}}


# ------------------------------------------------------------------ generate and the jobs
def test_generate_gives_the_models_own_samples_as_data_urls_and_files(client, catalog):
    r = client.post("/api/generate", json={"model": "digits", "label": 7, "steps": 20, "seed": 5, "n": 2})
    assert r.status_code == 202 and r.json()["total"] == 20 and r.json()["position"] in (0, 1)
    s = wait(client, r.json()["job"])
    assert s["state"] == "done" and s["step"] == s["total"] == 20 and s["error"] is None
    assert s["preview"].startswith("data:image/png;base64,") and len(s["images"]) == 2
    want = catalog["digits"].run.sample(2, "ddim", 20, 1.0, 7, 5)
    for k in range(2):
        png = client.get(f"/api/jobs/{s['id']}/{k}.png")
        assert png.headers["content-type"] == "image/png"
        assert png.headers["content-disposition"] == f'attachment; filename="difflab-digits-generate-seed5-{k}.png"'
        assert np.array_equal(pixels(png.content), np.round((want[k, 0].clamp(-1, 1).numpy() + 1) * 127.5))
    assert "no file '2.png'" in error(client.get(f"/api/jobs/{s['id']}/2.png"), 404)
    assert "no file 'x.png': it has 2 result(s); ask for 0.png .. 1.png" in error(
        client.get(f"/api/jobs/{s['id']}/x.png"), 404)
    assert "no file '0.gif'" in error(client.get(f"/api/jobs/{s['id']}/0.gif"), 404)
    assert "no job 'cpu-99-0'" in error(client.get("/api/jobs/cpu-99-0"), 404)
    assert "no job" in error(client.get("/api/jobs/cpu-99-0/0.png"), 404)


@pytest.mark.parametrize("body, status, message", [
    (None, 400, "must be a JSON object"),
    (b"{not json", 400, "not valid JSON"),
    ({"model": "../../etc/passwd"}, 404, "unknown model '../../etc/passwd'; this server has digits"),
    ({"n": 5}, 400, "n must lie in 1 .. 4, got 5 (the server's --max-n)"),
    ({"steps": 51}, 400, "steps must lie in 1 .. 50, got 51"),
    ({"steps": -3}, 400, "steps must lie in 1 .. 50"),
    ({"label": 11}, 400, "label must lie in 0 .. 9"),
    ({"guidance": 4}, 400, "needs a class (label)"),
    ({"sampler": "nope"}, 400, "sampler must be one of"),
    ({"seed": "abc"}, 400, "seed must be an integer"),
])
def test_generate_refuses_bad_fields(client, body, status, message):
    if isinstance(body, bytes):
        r = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/api/generate", json=body)
    assert message in error(r, status)


def test_a_failed_job_reports_its_message(client, catalog, monkeypatch):
    run = catalog["digits"].run
    monkeypatch.setattr(run, "sample", lambda *a, **k: (_ for _ in ()).throw(ValueError("the model says no")))
    s = wait(client, client.post("/api/generate", json={}).json()["job"])
    assert s["state"] == "failed" and s["error"] == "the model says no" and s["images"] == []


def test_a_full_queue_answers_503_with_retry_after_and_positions_count_up(client):
    queue = client.app.state.queues["cpu"]
    gate = threading.Event()
    blocker = queue.submit(lambda p: gate.wait(20) and [], 1)
    try:
        while queue.status(blocker.id)["state"] != "running":
            time.sleep(0.005)
        first = client.post("/api/generate", json={"steps": 2}).json()
        second = client.post("/api/generate", json={"steps": 2}).json()
        assert (first["position"], second["position"]) == (1, 2)
        assert client.get(f"/api/jobs/{second['job']}").json()["state"] == "queued"
        full = client.post("/api/generate", json={"steps": 2})
        assert full.headers["retry-after"] == "5"
        assert "busy: 2 job(s) wait on cpu besides the running one" in error(full, 503)
        assert client.get("/api/models").json()["queues"]["cpu"] == {"waiting": 2, "running": 1}
    finally:
        gate.set()
    assert wait(client, second["job"])["state"] == "done"


# ------------------------------------------------------------------ inpaint and img2img
def test_inpaint_keeps_the_unmasked_pixels_and_img2img_runs(client, catalog):
    image = digit_png(catalog["digits"].run)
    r = client.post("/api/inpaint", data={"label": "2", "steps": "10", "n": "2", "seed": "1"},
                    files={"image": ("a.png", image, "image/png"), "mask": ("m.png", bottom_half_mask(), "image/png")})
    assert r.status_code == 202, r.text
    s = wait(client, r.json()["job"])
    assert s["state"] == "done" and s["info"]["kind"] == "inpaint"
    for k in range(2):
        got = pixels(client.get(f"/api/jobs/{s['id']}/{k}.png").content)
        assert np.array_equal(got[:4], pixels(image)[:4])  # the kept top half, pixel for pixel
    r = client.post("/api/img2img", data={"strength": "0.3", "steps": "10"},
                    files={"image": ("a.png", image, "image/png")})
    s = wait(client, r.json()["job"])
    assert s["state"] == "done" and s["info"]["strength"] == 0.3 and len(s["images"]) == 1


def test_editing_requests_refuse_bad_uploads_and_fields(client, catalog):
    image = digit_png(catalog["digits"].run)
    mask = bottom_half_mask()

    def inpaint(data=None, **files):
        files = {k: (k + ".png", v, "image/png") for k, v in files.items()}
        return client.post("/api/inpaint", data=data or {}, files=files)

    assert "attach the image" in error(inpaint(mask=mask), 400)
    assert "mask is missing" in error(inpaint(image=image), 400)
    assert "the mask is 4x4 pixels, but the model works on 8x8" in error(
        inpaint(image=image, mask=to_png(torch.ones(1, 1, 4, 4))), 400)
    assert "paint the region" in error(inpaint(image=image, mask=to_png(-torch.ones(1, 1, 8, 8))), 400)
    assert "not an image" in error(inpaint(image=b"hello", mask=mask), 400)
    assert "resample must lie in 1 .. 20" in error(inpaint({"resample": "0"}, image=image, mask=mask), 400)
    assert "sampler must be one of ddpm, ddim" in error(inpaint({"sampler": "pc"}, image=image, mask=mask), 400)
    big = to_png(torch.rand(1, 3, 64, 64) * 2 - 1)  # a 12 kB PNG against a 10 kB limit
    assert len(big) > 0.01 * 2 ** 20
    assert "more than this server's limit of 0.01 MB (--max-upload-mb)" in error(inpaint(image=big, mask=mask), 413)
    assert "multipart form" in error(client.post("/api/inpaint", json={"strength": 1}), 415)
    assert "strength is missing" in error(client.post("/api/img2img", files={"image": ("a.png", image)}), 400)
    assert "strength must lie in (0, 1]" in error(
        client.post("/api/img2img", data={"strength": "1.5"}, files={"image": ("a.png", image)}), 400)
    assert "attach the image to start from" in error(client.post("/api/img2img", data={"strength": "0.5"},
                                                                 files={"other": ("a.png", image)}), 400)


# ------------------------------------------------------------------ the token and the Host
def test_a_post_from_another_sites_page_is_refused(client):
    """A page on another origin open in the same browser may send a form to 127.0.0.1 (the browser
    adds Origin): refused before it runs anything. The server's own page, and scripts, pass."""
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        r = client.post("/api/generate", json={"steps": 2}, headers={"origin": origin})
        assert f"a request from another site ({origin}) is refused" in error(r, 403)
    r = client.post("/api/generate", json={"steps": 2}, headers={"origin": LOCAL, "host": "127.0.0.1"})
    assert r.status_code == 202
    assert wait(client, r.json()["job"])["state"] == "done"


def test_a_body_without_content_length_is_refused(client):
    r = client.post("/api/generate", content=iter([b'{"n": 1}']), headers={"content-type": "application/json"})
    assert "chunked requests are refused" in error(r, 411)  # (a streamed body: chunks, no length)
    # a stated length beside chunks (the server would read the chunks, past any limit)
    r = client.post("/api/generate", content=b'{"n": 1}', headers={"content-type": "application/json",
                                                                   "transfer-encoding": "chunked"})
    assert "chunked requests are refused" in error(r, 411)
    r = client.post("/api/generate", content=b"[" * 5_000, headers={"content-type": "application/json"})  # (nesting past the recursion limit)
    assert "not valid JSON" in error(r, 400)


def test_the_token_is_checked_on_every_request(catalog):
    app = create_app(catalog, Limits(), token=TOKEN)
    with TestClient(app, base_url="http://192.168.1.20:8000") as c:  # another machine's address: fine with a token
        for method, path in (("get", "/"), ("get", "/static/app.js"), ("get", "/api/models"),
                             ("post", "/api/generate"), ("get", "/api/jobs/cpu-1-0")):
            assert "needs its token" in error(getattr(c, method)(path), 401)
            assert "wrong token" in error(getattr(c, method)(path, headers={"Authorization": "Bearer nope"}), 403)
        assert "wrong token" in error(c.get("/api/models?token=" + TOKEN[:-1]), 403)
        ok = c.get("/api/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["token"] is True and "set-cookie" not in ok.headers
        page = c.get(f"/?token={TOKEN}")  # the address difflab serve prints: the page gets a cookie
        assert page.status_code == 200
        cookie = page.headers["set-cookie"]
        assert f"difflab_token={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert c.get("/static/app.js").status_code == 200  # the cookie carries the token from now on
        r = c.post("/api/generate", json={"steps": 2})
        assert r.status_code == 202
        assert wait(c, r.json()["job"])["state"] == "done"
    with pytest.raises(ValueError, match="at least 8 characters"):
        create_app(catalog, token="short")


def test_without_a_token_only_localhost_names_are_served(client):
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "127.0.0.2"):
        assert client.get("/api/models", headers={"host": host}).status_code == 200, host
    for host in ("evil.example:8000", "192.168.1.20", "", "localhost.evil.example"):
        assert "addressed to localhost only" in error(client.get("/api/models", headers={"host": host}), 403)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("LOCALHOST")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.org")


def test_a_clip_model_answers_with_gifs(clip_run_dir):
    app = create_app(Catalog([clip_run_dir]), Limits())
    with TestClient(app, base_url=LOCAL) as c:
        (m,) = c.get("/api/models").json()["models"]
        assert (m["kind"], m["frames"]) == ("clip", 8)
        s = wait(c, c.post("/api/generate", json={"label": 2, "steps": 3, "n": 1}).json()["job"])
        assert s["state"] == "done" and s["images"][0].startswith("data:image/gif;base64,R0lGOD")  # GIF89a
        assert s["preview"].startswith("data:image/png;base64,")
        gif = c.get(f"/api/jobs/{s['id']}/0.gif")
        assert gif.headers["content-type"] == "image/gif" and gif.content[:6] == b"GIF89a"
        assert gif.headers["content-disposition"].endswith('-seed0-0.gif"')
        assert "ask for 0.gif .. 0.gif" in error(c.get(f"/api/jobs/{s['id']}/0.png"), 404)
        png = to_png(torch.zeros(1, 1, 16, 16))
        r = c.post("/api/img2img", data={"strength": "0.5"}, files={"image": ("a.png", png, "image/png")})
        assert "makes clips (8 frames)" in error(r, 400)
