"""The web server: FastAPI routes over the catalog (:mod:`.catalog`), the request checks
(:mod:`.params`), the tasks (:mod:`.tasks`) and one job queue per device (:mod:`.jobs`).

    app = create_app(Catalog(["runs/digits"]), Limits(max_n=8), token=None)
    uvicorn.run(app, host="127.0.0.1", port=8000)      # what `difflab serve` does

The routes (every answer JSON, errors as {"error": message} with a 4xx status):

- ``GET /``: the page; ``GET /static/...``: its script and style (no CDN: it works offline);
- ``GET /api/models``: the models (ids the server assigned), their classes, samplers and the limits;
- ``POST /api/generate`` (JSON): 202 and {"job", "position"}; ``POST /api/inpaint`` and
  ``POST /api/img2img`` (multipart form: the fields and the ``image`` PNG, plus ``mask`` to inpaint);
- ``GET /api/jobs/{id}``: the job's state, its place in line, its step, the preview and the results
  (PNG data URLs, GIFs for a clip model); ``GET /api/jobs/{id}/{k}.png`` (``.gif``): result k as a file.

Safety, checked on every request before any route runs (:func:`check_request`): with a token
(``difflab serve --token``), the request carries it (``Authorization: Bearer T``, or the cookie
the page gets when opened as ``/?token=T``; compared in constant time); without one the server
listens on loopback only, and refuses a Host header other than localhost's, so a web page
elsewhere cannot reach it through DNS rebinding. A request that changes something (POST) from a
page of another origin (its Origin header) is refused, so another site open in the same browser
cannot make the server work (CSRF). A body must state its length (411 otherwise) and
stay within ``--max-upload-mb`` (413), refused before it is read. FastAPI is imported when an
app is made, so difflab imports without the ``web`` extra.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations
(``request: Request``) as objects, and Request is imported inside :func:`create_app`.
"""

import hmac
import ipaddress
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from .catalog import Catalog
from .images import BadImage, data_url, read_image, read_mask
from .jobs import JobNotFound, JobQueue, QueueFull
from .params import BadRequest, Limits, parse_img2img, parse_inpaint, parse_sample
from .tasks import generate_task, img2img_task, inpaint_task

__all__ = ["create_app", "is_loopback", "STATIC", "TOKEN_COOKIE", "WEB_EXTRA"]

log = logging.getLogger("difflab.web")

STATIC = Path(__file__).resolve().parent / "static"  # package data (pyproject.toml: tool.setuptools.package-data)
TOKEN_COOKIE = "difflab_token"
WEB_EXTRA = 'pip install -e ".[web]"  (or: pip install fastapi uvicorn python-multipart)'
MAX_FORM_FIELDS = 32

# The page's own resources only: no script, style or connection to another origin (no CDN);
# images may be data: URLs (the results) and blob: URLs (an uploaded file).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's address may hold the token
}


def is_loopback(host: str) -> bool:
    """Does ``host`` (a name or an address) reach this machine only: localhost, 127.0.0.0/8, ::1?"""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _token_of(request) -> Optional[str]:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    query = parse_qs(request.url.query).get("token")
    if query:
        return query[0]
    return request.cookies.get(TOKEN_COOKIE)


def check_request(request, token: Optional[str], max_body: int) -> Optional[tuple[int, str]]:
    """(status, message) for a request refused before any route runs, else None: the token,
    the Host header of a token-less (loopback) server, the Origin of a POST (this server's own
    page, or none: a script), and the body's declared length."""
    if token is not None:
        given = _token_of(request)
        if given is None:
            return 401, ("this server needs its token: open the page as http://HOST:PORT/?token=TOKEN (the address "
                         "`difflab serve` printed), or send the header Authorization: Bearer TOKEN")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            return 403, "wrong token: use the one given to `difflab serve --token`"
    elif not is_loopback(_host_name(request.headers.get("host", ""))):
        return 403, ("this server takes requests addressed to localhost only (it has no token); to serve other "
                     "machines, restart it with --host and --token")
    if request.method in ("POST", "PUT", "PATCH"):
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return 403, (f"a request from another site ({origin}) is refused: use the page this server serves "
                         "(scripts may send no Origin header)")
        if "transfer-encoding" in request.headers:  # the server would read the chunks, not the stated length
            return 411, ("chunked requests are refused (uploads are limited in size): send the body with its "
                         "Content-Length")
        length = request.headers.get("content-length")
        if length is None:
            return 411, "the request must state its Content-Length (uploads are limited in size)"
        if not length.isdigit():
            return 400, f"Content-Length must be a number of bytes, got {length!r}"
        if int(length) > max_body:
            return 413, (f"the request is {int(length) / 2 ** 20:.3g} MB, more than this server's limit of "
                         f"{max_body / 2 ** 20:.3g} MB (--max-upload-mb); send a smaller image")
    return None


def create_app(catalog: Catalog, limits: Optional[Limits] = None, token: Optional[str] = None,
               queues: Optional[dict] = None):
    """The FastAPI application serving ``catalog`` within ``limits``; ``token``: required on
    every request when given. ``queues``: a :class:`~difflab.web.jobs.JobQueue` per device
    (default: one per device of the catalog's models, ``limits.max_queue`` long), closed when
    the app shuts down."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import FileResponse, JSONResponse, Response
        from fastapi.staticfiles import StaticFiles
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException
    except ImportError as err:
        raise ImportError(f"difflab serve needs FastAPI ({err}); install the web extra: {WEB_EXTRA}") from None
    limits = limits or Limits()
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ValueError("--token must be a string of at least 8 characters (e.g. python -c "
                         "\"import secrets; print(secrets.token_urlsafe())\")")
    if queues is None:
        queues = {}
        for model in catalog.models.values():
            name = str(model.device)
            if name not in queues:
                queues[name] = JobQueue(name, max_waiting=limits.max_queue)
    queue_of = {m.id: queues[str(m.device)] for m in catalog.models.values()}

    @asynccontextmanager
    async def lifespan(app):
        yield
        for q in queues.values():
            q.close()

    app = FastAPI(title="difflab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.catalog, app.state.limits, app.state.queues = catalog, limits, queues

    def error(status: int, message: str, headers: Optional[dict] = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refused = check_request(request, token, limits.max_upload_bytes)
        if refused is not None:
            response = error(*refused)
        else:
            response = await call_next(request)
            if token is not None and parse_qs(request.url.query).get("token"):  # the page opened as /?token=T
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc):
        return error(exc.status, str(exc))

    @app.exception_handler(BadImage)
    async def bad_image(request, exc):
        return error(400, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request, exc):
        return error(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(JobNotFound)
    async def no_job(request, exc):
        return error(404, f"no job {exc.args[0]!r} (unknown, or finished long ago and forgotten)")

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/models")
    def models():
        return {"models": catalog.describe(), "limits": limits.describe(), "token": token is not None,
                "queues": {name: q.counts() for name, q in queues.items()}}

    def submit(task, model_id: str):
        work, total, info = task
        job = queue_of[model_id].submit(work, total, info)
        status = queue_of[model_id].status(job.id)
        return JSONResponse({"job": job.id, "position": status["position"], "total": total}, status_code=202)

    async def json_fields(request) -> dict:
        try:
            fields = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRequest("the request body is not valid JSON; send an object such as "
                             '{"model": "digits", "label": 3, "n": 4}') from None
        if not isinstance(fields, dict):
            raise BadRequest("the request body must be a JSON object of fields, e.g. {\"model\": \"digits\"}")
        return fields

    async def form_fields(request) -> tuple[dict, dict]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest("send the fields and the image as a multipart form (multipart/form-data)", 415)
        try:
            form = await request.form(max_files=2, max_fields=MAX_FORM_FIELDS, max_part_size=limits.max_upload_bytes)
        except HTTPException as err:  # too many fields or files, a malformed body
            raise BadRequest(f"cannot read the form: {err.detail}") from None
        fields, files = {}, {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[key] = await value.read(limits.max_upload_bytes + 1)
                await value.close()
            else:
                fields[key] = value
        return fields, files

    def upload(files: dict, name: str, what: str) -> bytes:
        if name not in files:
            raise BadRequest(f"{name} is missing: attach {what} as the form's file field {name!r}")
        return files[name]

    @app.post("/api/generate")
    async def generate(request: Request):
        p = parse_sample(await json_fields(request), catalog, limits)
        return submit(generate_task(p), p.model.id)

    @app.post("/api/inpaint")
    async def inpaint(request: Request):
        fields, files = await form_fields(request)
        p = parse_inpaint(fields, catalog, limits)
        shape = p.model.image_shape
        image = read_image(upload(files, "image", "the image to inpaint (a PNG)"), shape, "the image")
        mask = read_mask(upload(files, "mask", "the mask (a PNG, white = fill)"), shape[-2:], "the mask")
        return submit(inpaint_task(p, image, mask), p.model.id)

    @app.post("/api/img2img")
    async def image_to_image(request: Request):
        fields, files = await form_fields(request)
        p = parse_img2img(fields, catalog, limits)
        image = read_image(upload(files, "image", "the image to start from (a PNG)"), p.model.image_shape)
        return submit(img2img_task(p, image), p.model.id)

    def find(job_id: str) -> tuple[JobQueue, dict]:
        for q in queues.values():
            try:
                return q, q.status(job_id)
            except JobNotFound:
                continue
        raise JobNotFound(job_id)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        _, s = find(job_id)
        return {**{k: s[k] for k in ("id", "kind", "state", "position", "step", "total", "error", "info")},
                "preview": data_url(s["preview"]) if s["preview"] else None,
                "images": [data_url(data, s["info"]["media"]) for data in s["results"]]}

    @app.get("/api/jobs/{job_id}/{name}")
    def job_file(job_id: str, name: str):
        q, s = find(job_id)
        info = s["info"]
        suffix = "." + info["media"].split("/")[1]  # .png, or .gif for a clip model's
        stem = name[: -len(suffix)] if name.endswith(suffix) else ""
        index = int(stem) if stem.isascii() and stem.isdigit() else -1
        if not 0 <= index < len(s["results"]):
            have = (f"ask for 0{suffix} .. {len(s['results']) - 1}{suffix}" if s["results"] else "none yet")
            raise BadRequest(f"job {job_id!r} ({s['state']}) has no file {name!r}: it has {len(s['results'])} "
                             f"result(s); {have}", 404)
        filename = f"difflab-{info['model']}-{info['kind']}-seed{info['seed']}-{index}{suffix}"
        return Response(q.result(job_id, index), media_type=info["media"],
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    return app
