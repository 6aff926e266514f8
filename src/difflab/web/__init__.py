"""The web page: sample, inpaint and edit a trained model in a browser (``difflab serve``).

    from difflab.web import Catalog, Limits, create_app
    app = create_app(Catalog(["runs/digits"]), Limits(max_n=8))   # a FastAPI app (pip install -e ".[web]")

An interface beside the command line: :mod:`.catalog` (the models, under ids the server
assigns), :mod:`.params` (a request's checks and the server's limits), :mod:`.images` (tensors
<-> PNG, clips -> GIF), :mod:`.jobs` (one job at a time per device, the rest in line), :mod:`.tasks` (what a
job runs), :mod:`.app` (the routes, the token and the size limits), and the page itself in
``static/`` (plain HTML, CSS and JavaScript). FastAPI is imported only by :func:`create_app`.
"""

from .app import STATIC, create_app, is_loopback
from .catalog import Catalog, ServedModel, model_id
from .images import BadImage, clip_grid_png, data_url, read_image, read_mask, to_gif, to_png
from .jobs import Job, JobNotFound, JobQueue, QueueFull
from .params import BadRequest, Limits, SampleParams, parse_img2img, parse_inpaint, parse_sample
from .tasks import generate_task, img2img_task, inpaint_task

__all__ = [
    "create_app", "is_loopback", "STATIC",
    "Catalog", "ServedModel", "model_id",
    "to_png", "to_gif", "clip_grid_png", "data_url", "read_image", "read_mask", "BadImage",
    "JobQueue", "Job", "QueueFull", "JobNotFound",
    "Limits", "BadRequest", "SampleParams", "parse_sample", "parse_inpaint", "parse_img2img",
    "generate_task", "inpaint_task", "img2img_task",
]
