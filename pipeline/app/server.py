"""A web app: draw a digit and watch a model read it; compare runs picture by picture.

Pages: `/` (draw, or drop a photo or scan), `/health`, and `/compare?runs=ID1,ID2,...` or
`/compare?sweep=PARENT_ID` (2-6 runs: the params that differ, metrics against the first run,
the figures row by row). JSON: `POST /api/predict` (multipart field `image`, PNG or JPEG),
`GET /api/model`. The model is the registry's champion unless `--model PATH`, `--run RUN_ID` or
`--model-uri URI` names another (as for `pipeline.predict`); runs are read from the MLflow store
the pipeline uses. Pages, scripts and styles ship in `pipeline/app/web/`: no CDN, works offline.
Command: `uv run python -m pipeline.app [--port 8000] [--host 127.0.0.1]`.
"""

from __future__ import annotations

import atexit
import base64
import io
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from PIL import Image

from pipeline.core import names
from pipeline.core.errors import DataError, PipelineError, command_parser, run_cli
from pipeline.core.images import MAX_PIXELS, PNG_OR_JPEG, ImageTooLarge
from pipeline.core.shards import picture_shape
from pipeline.tracking.choose import Chosen, choose_model, read_digit, top3

WEB = Path(__file__).parent / "web"
MAX_BYTES = 10 * 1024 * 1024  # a request body larger than this is refused as it streams in
IMAGE_TYPES = ("image/png", "image/jpeg")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # MLflow's run ids: nothing else reaches the store
FIGURES = {  # the figures compared, in page order: file under the run's figures/ -> title
    names.CONFUSION_FIGURE: "Confusion matrix",
    names.MISCLASSIFIED_FIGURE: "Misclassified test digits",
    names.CURVES_FIGURE: "Learning curves",
    names.PREDICTIONS_FIGURE: "Predictions",
}
METRICS = (
    names.VAL_ACCURACY, names.TEST_ACCURACY, names.TEST_LOSS, names.MACRO_F1, names.TRAIN_SECONDS
)  # fmt: skip
MIN_RUNS, MAX_RUNS = 2, 6
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is refused with 413 as it streams in, at
    once when its Content-Length says so, else as soon as the chunks received pass the limit;
    nothing past the limit is read or stored."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._detail(int(declared))}, 413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # FastAPI passes it on to the 413 handler
                raise HTTPException(413, self._detail(received, streaming=True))
            return message

        await self.app(scope, limited, send)

    def _detail(self, size: int, streaming: bool = False) -> str:
        got = f"over {size} bytes sent" if streaming else f"upload of {size} bytes"
        return f"{got}: at most {self.max_bytes} bytes; send a smaller picture."


def png_data_url(image: np.ndarray) -> str:
    """A 0-1 image, grayscale or colour, as a PNG data URL (the input the model saw)."""
    pixels = np.round(np.asarray(image) * 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Runs:
    """Runs and their figures from one MLflow store, for the compare page."""

    def __init__(self, store_uri: str) -> None:
        import mlflow

        self.uri = store_uri
        self.client = mlflow.MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
        self.cache = Path(tempfile.mkdtemp(prefix="mnist-app-"))  # figures, once downloaded
        atexit.register(shutil.rmtree, self.cache, ignore_errors=True)
        self.lock = threading.Lock()
        self.known: set[str] = set()  # runs found in the store: a page's figures need no lookup

    def get(self, run_id: str) -> Any:
        import mlflow

        if not RUN_ID.match(run_id):
            raise HTTPException(400, f"{run_id!r} is not an MLflow run id (32 hex digits).")
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise HTTPException(404, f"no run {run_id} in the MLflow store {self.uri}.") from None
        self.known.add(run_id)
        return run

    def of_sweep(self, parent_id: str) -> list[Any]:
        """The sweep's child runs, best validation accuracy first, at most MAX_RUNS."""
        parent = self.get(parent_id)
        children = self.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{names.PARENT_TAG}` = '{parent_id}'",
            order_by=[f"metrics.{names.VAL_ACCURACY} DESC"],
            max_results=MAX_RUNS,
        )
        if len(children) < MIN_RUNS:
            raise HTTPException(
                404, f"run {parent_id} has {len(children)} child runs; compare needs {MIN_RUNS}."
            )
        self.known.update(r.info.run_id for r in children)
        return children

    def figure(self, run_id: str, name: str) -> Path:
        import mlflow

        if run_id not in self.known:
            self.get(run_id)
        if name not in FIGURES:
            raise HTTPException(404, f"no figure {name!r}: one of {', '.join(FIGURES)}.")
        local = self.cache / run_id / name
        with self.lock:  # the page asks for all figures at once
            if not local.exists():
                with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
                    local.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        got = self.client.download_artifacts(
                            run_id, f"{names.FIGURES_ARTIFACT}/{name}", tmp
                        )
                        Path(got).replace(local)
                    except (mlflow.exceptions.MlflowException, OSError):
                        self.draw(run_id, Path(tmp), local.parent)
        return local

    def draw(self, run_id: str, tmp: Path, into: Path) -> None:
        """Draw the run's figures from its figure data (a sweep's model whose figures are on
        demand) into `into`; a 404 where it has none."""
        from pipeline.tracking import experiment

        try:
            drawn = experiment.draw_run_figures(run_id, tmp, self.client)
        except PipelineError as exc:
            raise HTTPException(404, f"run {run_id} has no figures: {exc}") from None
        for name in FIGURES:
            (drawn / name).replace(into / name)


def comparison(runs: list[Any]) -> dict[str, Any]:
    """What the compare page shows: runs, params that differ, metrics against the first run."""
    keys = sorted({k for r in runs for k in r.data.params})
    differ = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    metrics = []
    for key in METRICS:
        values = [r.data.metrics.get(key) for r in runs]
        first = values[0]
        deltas = [
            None if v is None or first is None or i == 0 else v - first
            for i, v in enumerate(values)
        ]
        metrics.append({"name": key, "values": values, "deltas": deltas})
    return {
        "runs": [
            {"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status} for r in runs
        ],
        "params": [
            {"name": k, "values": [r.data.params.get(k, "") for r in runs]} for k in differ
        ],
        "metrics": metrics,
        "figures": FIGURES,
    }


@dataclass(frozen=True)
class Site:
    """What the routes serve: the model, how its pages speak of it, the runs, the templates."""

    chosen: Chosen
    wording: dict[str, Any]  # the pages' words for this model's pictures
    pages: Environment
    runs: Runs
    ui: str | None  # the MLflow UI runs link to
    # One prediction at a time: Keras models are not thread-safe.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_link(self, run_id: str | None, experiment_id: str | None) -> str | None:
        if not (self.ui and run_id and experiment_id):
            return None
        return f"{self.ui}/#/experiments/{experiment_id}/runs/{run_id}"

    @property
    def about(self) -> dict[str, Any]:
        """The model, as `/api/model` tells it."""
        about = self.chosen.about
        return {
            **about,
            "mlflow_run_url": self.run_link(about.get("run_id"), about.get("experiment_id")),
        }

    def page(self, template: str, **values: Any) -> str:
        return self.pages.get_template(template).render(**values, **self.wording)


def wording(chosen: Chosen) -> dict[str, Any]:
    """How the pages speak of `chosen`'s pictures: digits drawn by hand, or its dataset's."""
    description = chosen.about.get("description") or "images"
    handwriting = bool(chosen.about.get("handwriting", True))
    one = "a digit" if handwriting else "a picture"
    dataset = (chosen.about.get("dataset") or "mnist").replace("_", "-").upper()
    return {
        "title": f"{dataset}: {description}",
        "handwriting": handwriting,
        "one": one,
        "ask": f"Draw {one}." if handwriting else f"Open or drop {one}.",
        "description": description,
        "classes": chosen.classes,
        "size": " × ".join(map(str, chosen.model.input_shape[1:3])),
        "colour": "colour" if picture_shape(chosen.model.input_shape[1:])[2] == 3 else "grayscale",
    }


def site(request: Request) -> Site:
    return request.app.state.site


Served = Annotated[Site, Depends(site)]
router = APIRouter()


def refused(request: Request, exc: HTTPException) -> Response:
    """JSON for the API and figures, a page for the pages."""
    if request.url.path.startswith(("/api/", "/runs/")):
        return JSONResponse({"detail": exc.detail}, exc.status_code)
    page = site(request).page("error.html", status=exc.status_code, message=exc.detail)
    return HTMLResponse(page, exc.status_code)


@router.get("/", response_class=HTMLResponse)
def draw(served: Served) -> str:
    return served.page("draw.html", max_mb=MAX_BYTES // 2**20)


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/api/model")
def model(served: Served) -> dict[str, Any]:
    return served.about


@router.post("/api/predict")
async def predict(served: Served, image: Annotated[UploadFile, File()]) -> dict[str, Any]:
    if image.content_type not in IMAGE_TYPES:
        raise HTTPException(
            415, f"{image.filename}: content type {image.content_type!r}; send a PNG or JPEG."
        )
    data = await image.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise HTTPException(413, f"{image.filename}: over {MAX_BYTES} bytes.")
    name = image.filename or "image"
    # Decoding and predicting run in worker threads: the event loop keeps answering.
    try:
        answer = await run_in_threadpool(read_and_predict, served, data, name)
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except DataError as exc:
        raise HTTPException(422, str(exc)) from None
    return {**answer, "model": served.about}


def read_and_predict(served: Site, data: bytes, name: str) -> dict[str, Any]:
    chosen, classes = served.chosen, served.chosen.classes
    x = read_digit(io.BytesIO(data), name, chosen, MAX_PIXELS, PNG_OR_JPEG)
    with served.lock:
        probs = chosen.predict(x[np.newaxis].astype(np.float32))[0]
    best = top3(probs, classes)
    return {
        "digit": best[0]["digit"],
        "class": best[0]["class"],
        "classes": classes,
        "probabilities": [round(float(p), 6) for p in probs],
        "top3": best,
        "input": png_data_url(x),
    }


@router.get("/compare", response_class=HTMLResponse)
def compare(
    served: Served,
    runs_: Annotated[str | None, Query(alias="runs")] = None,
    sweep: str | None = None,
) -> str:
    if sweep:
        chosen_runs = served.runs.of_sweep(sweep.strip())
    else:
        ids = [i.strip() for i in (runs_ or "").split(",") if i.strip()]
        if not MIN_RUNS <= len(ids) <= MAX_RUNS:
            raise HTTPException(
                400,
                f"compare takes {MIN_RUNS}-{MAX_RUNS} run ids, got {len(ids)}: "
                "/compare?runs=ID1,ID2 or /compare?sweep=PARENT_ID.",
            )
        chosen_runs = [served.runs.get(i) for i in ids]
    view = comparison(chosen_runs)
    for run, info in zip(chosen_runs, view["runs"], strict=True):
        info["url"] = served.run_link(run.info.run_id, run.info.experiment_id)
    return served.page("compare.html", **view, sweep=sweep)


@router.get("/runs/{run_id}/figures/{name}")
def figure(served: Served, run_id: str, name: str) -> FileResponse:
    return FileResponse(served.runs.figure(run_id, name), media_type="image/png")


def create_app(
    chosen: Chosen, store_uri: str, mlflow_ui: str | None = None, host: str | None = None
) -> FastAPI:
    """The app on `chosen`, reading runs from `store_uri`; `mlflow_ui` is linked to if given.

    Served on a loopback `host`, requests naming any other Host are refused (400): a web page
    elsewhere cannot reach the app through a DNS name that points at 127.0.0.1.
    """
    words = wording(chosen)
    app = FastAPI(title=words["title"], docs_url="/api/docs", redoc_url=None)
    app.state.site = Site(
        chosen,
        words,
        Environment(loader=FileSystemLoader(WEB), autoescape=select_autoescape(["html"])),
        Runs(store_uri),
        mlflow_ui.rstrip("/") if mlflow_ui else None,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BYTES + 64 * 1024)  # the picture and its form
    if host in LOOPBACK:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")
    app.add_exception_handler(HTTPException, refused)
    app.include_router(router)
    return app


def main(argv: list[str]) -> None:
    parser = command_parser("app", __doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (8000)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a .keras file")
    source.add_argument("--run", metavar="RUN_ID", help="the model an MLflow run logged")
    source.add_argument("--model-uri", metavar="URI", help="e.g. models:/mnist-digits/3")
    parser.add_argument(
        "--mlflow-ui", metavar="URL", help="the MLflow UI to link runs to (default: the "
        "tracking server, when the store is one)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    import uvicorn

    from pipeline.tracking import store

    chosen = choose_model(args.model, args.run, args.model_uri, champion=True)
    store_uri = store.connect(store.configured_uri())
    ui = args.mlflow_ui or (store_uri if store_uri.startswith(("http://", "https://")) else None)
    if args.host not in LOOPBACK:
        print(
            f"warning: serving on {args.host}: anyone who can reach this machine can use the "
            "model and read the runs of the MLflow store.",
            file=sys.stderr,
        )
    print(f"model: {chosen.about.get('uri') or chosen.about.get('path')}", flush=True)
    app = create_app(chosen, store_uri, ui, args.host)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except OSError as exc:
        raise PipelineError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc


def cli() -> None:
    run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    cli()
