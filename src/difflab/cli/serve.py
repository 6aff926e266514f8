"""``difflab serve``: a web page to sample and edit trained models in a browser.

    pip install -e ".[web]"
    difflab serve --ckpt runs/digits                          # http://127.0.0.1:8000
    difflab serve --ckpt runs/digits --ckpt runs/mnist --port 8080 --max-n 8 --max-steps 200
    difflab serve --ckpt runs/digits --host 0.0.0.0 --token "$(python -c 'import secrets; print(secrets.token_hex())')"

Safe by default: it listens on 127.0.0.1 only; any other --host needs --token, which every
request must then carry (the page keeps it after being opened as http://HOST:PORT/?token=T).
Requests name models by the ids the server gives them (the run folder's name), never a path;
--max-n, --max-steps, --max-upload-mb and --max-queue bound what one request may ask for and how
many wait. See docs/web.md.
"""

from __future__ import annotations

from ..web import Catalog, Limits, create_app, is_loopback
from ..web.app import WEB_EXTRA

__all__ = ["add_parser", "check_host"]


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web page to sample, inpaint and edit trained models",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", action="append", required=True, metavar="RUN",
                   help="run folder, checkpoint folder or exported .safetensors file; repeat for several models")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other needs --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--token", default=None,
                   help="secret every request must carry (required with a --host other than loopback)")
    p.add_argument("--device", default="cpu", help="where the models sample (one job at a time per device)")
    p.add_argument("--max-n", type=int, default=Limits.max_n, help=f"images per request (default {Limits.max_n})")
    p.add_argument("--max-steps", type=int, default=Limits.max_steps,
                   help=f"sampler steps per request (default {Limits.max_steps})")
    p.add_argument("--max-upload-mb", type=float, default=Limits.max_upload_mb,
                   help=f"request body size in MB (default {Limits.max_upload_mb:g})")
    p.add_argument("--max-queue", type=int, default=Limits.max_queue,
                   help=f"jobs waiting per device besides the running one; more are refused "
                        f"(default {Limits.max_queue})")
    p.set_defaults(func=_main)


def check_host(host: str, token) -> None:
    """A server reachable from other machines must have a token: refuse --host X without one."""
    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} makes the page reachable from other machines: give it a --token too "
                         "(every request must then carry it), or leave --host at 127.0.0.1")


def _main(args) -> int:
    check_host(args.host, args.token)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must lie in 0 .. 65535, got {args.port}")
    limits = Limits(args.max_n, args.max_steps, args.max_upload_mb, args.max_queue)
    try:
        import uvicorn
    except ImportError as err:
        raise ImportError(f"difflab serve needs uvicorn ({err}); install the web extra: {WEB_EXTRA}") from None
    app = create_app(Catalog(args.ckpt, args.device), limits, args.token)  # checks the token, imports FastAPI
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    models = ", ".join(app.state.catalog.ids())

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # the socket is bound: say where (--port 0 takes any free port)
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else args.port
                shown = f"[{args.host}]" if ":" in args.host else args.host
                query = f"/?token={args.token}" if args.token else "/"
                print(f"difflab serve: {models} on http://{shown}:{port}{query}  (Ctrl+C stops)", flush=True)

    server = Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled, after its graceful shutdown
        pass
    except SystemExit:  # uvicorn exits when it cannot listen, after logging why (the port is taken, ...)
        if server.started:
            raise
        raise OSError(f"cannot listen on {args.host}:{args.port} (the line above says why); choose another --port, "
                      "or --port 0 for any free one") from None
    if not server.started:
        raise OSError(f"the server did not start on {args.host}:{args.port} (the lines above say why)")
    print("difflab serve: stopped", flush=True)
    return 0
