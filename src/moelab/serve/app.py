"""The web app: the dashboard and prediction pages, their JSON API, and the report's files.

    GET  /                                  dashboard: experiments, job states, live curves, errors, report
    GET  /predict                           draw or upload an input, see every variant's answer and experts
    GET  /api/experiments                   every experiment: job states counted, runs done, report files
    GET  /api/experiments/{name}            one experiment's summary (the same as its entry above)
    GET  /experiments/{name}                one experiment's page: headline, filterable jobs, run table,
                                            a search's history, importances and parallel coordinates
    GET  /experiments/{name}/jobs/{key}     one job's page: each variant's progress, ETA and curves
    GET  /api/experiments/{name}/jobs       every job: state (disk + queue), variants, curves, errors
    GET  /api/experiments/{name}/job-page   jobs filtered (state, variant, grid.<axis>), sorted, running
                                            first, paged; since=VERSION or If-None-Match: only changes
    GET  /api/experiments/{name}/jobs/{key} one job: epoch n of N, elapsed, ETA, every curve
    GET  /api/experiments/{name}/run-table  one row per job x variant
    GET  /api/experiments/{name}/study      a search: history, importances, parallel coordinates (ETag)
    GET  /api/experiments/{name}/summary    summary.csv as columns and rows
    GET  /api/experiments/{name}/runs       finished runs, the default ones, and the raw input format
    POST /api/predict                       JSON {"experiment", "inputs", ["job"], ["variant"], ["runs"]}; text
                                            models: "inputs" are prompts, with ["length"], ["temperature"], ["seed"]
                                            or multipart: the same fields and image files
    GET  /files/{name}/report/index.html    the report create-plots wrote; its plots under
    GET  /files/{name}/summary/{file}       the tables and plots, read-only

Every problem is answered as JSON {"error": "..."} with a 4xx status; anything unexpected is logged
here and answered as a 500 without the traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import plotly
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from moelab.data import get_dataset_spec
from moelab.serve.catalog import Catalog
from moelab.serve.dashboard import PAGE_SIZE, Dashboard
from moelab.serve.errors import BadInput, ServeError, TooLarge, UnsupportedMedia
from moelab.serve.inputs import INVERT_CHOICES, MAX_INPUTS, array_from_json, batch, image_to_raw
from moelab.serve.predictor import Predictor
from moelab.train.evaluate import MAX_GENERATED_BYTES

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_BODY = 16 * 1024 * 1024  # a few thousand MNIST-sized inputs as JSON, or a large photo
MAX_SELECTIONS = 64
PREDICT_KEYS = ("experiment", "inputs", "job", "variant", "runs", "invert", "length", "temperature", "seed")
DEFAULT_COMPLETION_BYTES = 100
TEXT_TYPES = {".csv": "text/csv", ".md": "text/markdown", ".tex": "text/plain", ".txt": "text/plain"}

log = logging.getLogger("moelab.serve")


def create_app(catalog: Catalog, max_body_bytes: int = DEFAULT_MAX_BODY, ask_queues: bool = True) -> FastAPI:
    dashboard = Dashboard(catalog, ask_queues=ask_queues)
    predictor = Predictor(catalog)
    # no /docs: its page loads scripts from a CDN, and this app works offline
    app = FastAPI(title="moelab", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.dashboard, app.state.predictor = dashboard, predictor

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return reply({"error": error.message}, error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = error.detail if isinstance(error.detail, str) else "request not understood"
        return reply({"error": message}, error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors()]
        return reply({"error": "; ".join(problems) or "request not understood"}, 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return reply({"error": f"internal error ({type(error).__name__}); the server's log has the details"}, 500)

    @app.get("/", include_in_schema=False)
    def dashboard_page():
        return FileResponse(STATIC / "dashboard.html", headers=NO_STORE)

    @app.get("/predict", include_in_schema=False)
    def predict_page():
        return FileResponse(STATIC / "predict.html", headers=NO_STORE)

    @app.get("/experiments/{name}", include_in_schema=False)
    def experiment_page(name: str):
        catalog.experiment(name)  # an unknown name is a 404, not an empty page
        return FileResponse(STATIC / "experiment.html", headers=NO_STORE)

    @app.get("/experiments/{name}/jobs/{key}", include_in_schema=False)
    def job_page(name: str, key: str):
        catalog.job(catalog.experiment(name), key)
        return FileResponse(STATIC / "job.html", headers=NO_STORE)

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_script():
        # served from the installed plotly package: nothing copied into this repository, no CDN
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/experiments")
    def experiments():
        return reply(dashboard.experiments())

    @app.get("/api/experiments/{name}")
    def experiment(name: str):
        return reply(dashboard.experiment_summary(catalog.experiment(name)))

    @app.get("/api/experiments/{name}/jobs")
    def jobs(name: str, curves: bool = True):
        return reply(dashboard.jobs(name, curves=curves))

    @app.get("/api/experiments/{name}/job-page")
    def job_page_api(request: Request, name: str, state: str = "", variant: str | None = None, sort: str = "key",
                     order: str = "asc", offset: int = 0, limit: int = PAGE_SIZE, since: str | None = None):
        if order not in ("asc", "desc"):
            raise BadInput(f"order must be asc or desc; got {order!r}")
        grid = {k[5:]: v for k, v in request.query_params.items() if k.startswith("grid.")}
        answer = dashboard.job_page(name, [s for s in state.split(",") if s], variant or None, grid, sort,
                                    order == "desc", offset, limit, since)
        # the same question at the same version has the same answer: a client holding it gets a 304
        etag = '"' + answer["version"] + "-" + _query_digest(request) + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag, **NO_CACHE})
        response = reply(answer)
        response.headers["ETag"] = etag
        response.headers.update(NO_CACHE)
        return response

    @app.get("/api/experiments/{name}/jobs/{key}")
    def job_api(name: str, key: str):
        return reply(dashboard.job_detail(name, key))

    @app.get("/api/experiments/{name}/run-table")
    def run_table(name: str):
        return reply(dashboard.run_table(name))

    @app.get("/api/experiments/{name}/study")
    def study(request: Request, name: str):
        # the study's files change when a trial ends: a client polling in between gets a 304
        etag = '"' + dashboard.study_version(name) + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag, **NO_CACHE})
        response = reply(dashboard.study_views(name))
        response.headers["ETag"] = etag
        response.headers.update(NO_CACHE)
        return response

    @app.get("/api/experiments/{name}/summary")
    def summary(name: str):
        return reply(dashboard.summary_table(name))

    @app.get("/api/experiments/{name}/runs")
    def runs(name: str):
        tree = catalog.experiment(name)
        finished = predictor.finished_runs(tree)
        answer = {"experiment": tree.name, "runs": [r.describe() for r in finished], "default": [],
                  "input_format": None, "dataset": None, "problem": None}
        if not finished:
            answer["problem"] = f"experiment {tree.name} has no finished runs yet"
            return reply(answer)
        try:
            chosen = predictor.select(tree.name)
            fmt, dataset = predictor.input_format(chosen)
        except ServeError as error:
            answer["problem"] = error.message
            return reply(answer)
        answer.update(default=[r.describe() for r in chosen], input_format=fmt.to_dict(), dataset=dataset)
        return reply(answer)

    @app.post("/api/predict")
    async def predict(request: Request):
        fields, images = await _read_predict_request(request)
        answer = await run_in_threadpool(_predict, predictor, fields, images)
        return reply(answer)

    @app.get("/files/{name}/report/index.html", include_in_schema=False)
    def report(name: str):
        return FileResponse(catalog.report_file(catalog.experiment(name)), media_type="text/html",
                            headers={**NO_STORE, "X-Content-Type-Options": "nosniff"})

    @app.get("/files/{name}/summary/{file}", include_in_schema=False)
    def summary_file(name: str, file: str):
        path = catalog.summary_file(catalog.experiment(name), file)
        return FileResponse(path, media_type=TEXT_TYPES.get(path.suffix.lower()),
                            headers={**NO_STORE, "X-Content-Type-Options": "nosniff"})

    return app


NO_STORE = {"Cache-Control": "no-store"}  # pages and files change while jobs run
NO_CACHE = {"Cache-Control": "no-cache"}  # kept, but asked again each time (ETag answers unchanged with a 304)
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _query_digest(request: Request) -> str:
    query = sorted((k, v) for k, v in request.query_params.multi_items() if k != "since")
    return hashlib.sha1(repr(query).encode()).hexdigest()[:12]


def reply(content, status: int = 200) -> Response:
    return JSONResponse(clean_json(content), status_code=status, headers=NO_STORE)


def clean_json(value):
    """JSON-ready: NaN and infinities (a diverged loss) become null, numpy scalars plain numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return clean_json(value.item())
    return value


async def _read_predict_request(request: Request) -> tuple[dict, list[tuple[str, bytes]]]:
    """The fields of a predict request and its uploaded files (name, bytes)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        body = await request.body()
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise ServeError(f"the body is not valid JSON ({type(error).__name__}: {str(error)[:120]})") from None
        if not isinstance(doc, dict):
            raise BadInput(f"the body must be a JSON object with keys {', '.join(PREDICT_KEYS)}")
        return doc, []
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=MAX_INPUTS, max_fields=len(PREDICT_KEYS) * 2)
        except ServeError:
            raise
        except Exception as error:  # the multipart parser's own errors: a malformed upload
            detail = getattr(error, "detail", None) or getattr(error, "message", None) or str(error)
            raise ServeError(f"the multipart body cannot be read: {str(detail)[:160]}") from None
        fields: dict = {}
        images: list[tuple[str, bytes]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                images.append((value.filename or key, await value.read()))
            elif key == "inputs":
                try:
                    fields[key] = json.loads(value)
                except (json.JSONDecodeError, RecursionError):
                    raise BadInput("the form field 'inputs' is not a JSON array") from None
            else:
                fields[key] = value
        await form.close()
        return fields, images
    raise UnsupportedMedia("send predict requests as application/json, or as multipart/form-data with image files")


def _predict(predictor: Predictor, fields: dict, images: list[tuple[str, bytes]]) -> dict:
    unknown = sorted(set(fields) - set(PREDICT_KEYS))
    if unknown:
        raise BadInput(f"unknown key(s) {', '.join(map(repr, unknown))}; a predict request takes: {', '.join(PREDICT_KEYS)}")
    experiment = fields.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        raise BadInput("name the experiment: 'experiment' (a folder name under the served experiments)")
    invert = fields.get("invert", "auto")
    if invert not in INVERT_CHOICES:
        raise BadInput(f"invert must be one of {', '.join(INVERT_CHOICES)}; got {invert!r}")
    if images and "inputs" in fields:
        raise BadInput("give either 'inputs' or image files, not both")
    selections = _selections(fields)
    runs, seen = [], set()
    for job, variant in selections:
        for run in predictor.select(experiment, job, variant):
            if (run.job, run.variant) not in seen:
                seen.add((run.job, run.variant))
                runs.append(run)
    fmt, dataset = predictor.input_format(runs)
    if get_dataset_spec(dataset).tokens:
        if images:
            raise BadInput(f"{dataset} models continue text: give 'inputs' as a prompt string or a list of them")
        return {"experiment": experiment, "dataset": dataset, "input_format": fmt.to_dict(),
                **_completions(predictor, runs, fields)}
    if images:
        raw = batch(np.stack([image_to_raw(data, fmt, dataset, name, invert) for name, data in images]), fmt, dataset)
        names = [name for name, _ in images]
    else:
        raw = batch(array_from_json(fields.get("inputs")), fmt, dataset)
        names = None
    return {"experiment": experiment, "dataset": dataset, "input_format": fmt.to_dict(), "count": len(raw),
            "inputs": raw.tolist() if images else None, "runs": predictor.answer(runs, raw, names)}


def _completions(predictor: Predictor, runs: list, fields: dict) -> dict:
    """A text request: 'inputs' (a prompt or a list of prompts), 'length' bytes, 'temperature' (0:
    greedy), 'seed' (of the draws)."""
    prompts = fields.get("inputs")
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadInput("give 'inputs' as a prompt string or a list of prompt strings")
    if len(prompts) > MAX_INPUTS:
        raise TooLarge(f"{len(prompts)} prompts; at most {MAX_INPUTS} per request")
    length, temperature, seed = (fields.get("length", DEFAULT_COMPLETION_BYTES), fields.get("temperature", 0.0),
                                 fields.get("seed", 0))
    for key, value, kinds in (("length", length, (int,)), ("temperature", temperature, (int, float)), ("seed", seed, (int,))):
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise BadInput(f"'{key}' must be a number, got {value!r}")
    if not 1 <= length <= MAX_GENERATED_BYTES:
        raise BadInput(f"'length' must be between 1 and {MAX_GENERATED_BYTES} bytes, got {length}")
    if not 0 <= temperature <= 10 or temperature != temperature:
        raise BadInput(f"'temperature' must be between 0 (greedy) and 10, got {temperature}")
    return {"count": len(prompts), "length": length, "temperature": temperature, "seed": seed,
            "runs": predictor.complete(runs, prompts, length, float(temperature), seed)}


def _selections(fields: dict) -> list[tuple[str | None, str | None]]:
    """(job, variant) pairs to ask: from 'runs', else from 'job' and 'variant' (None: the default)."""
    def name(value, what: str) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise BadInput(f"'{what}' must be a string, got {type(value).__name__}")
        return value

    if "runs" in fields and fields["runs"] is not None:
        runs = fields["runs"]
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs) or not runs:
            raise BadInput("'runs' must be a non-empty list of {\"job\": KEY, \"variant\": NAME} objects")
        if len(runs) > MAX_SELECTIONS:
            raise TooLarge(f"{len(runs)} runs asked; at most {MAX_SELECTIONS}")
        bad = [sorted(set(r) - {"job", "variant"}) for r in runs if set(r) - {"job", "variant"}]
        if bad:
            raise BadInput(f"a 'runs' entry takes only 'job' and 'variant'; got {bad[0]}")
        return [(name(r.get("job"), "job"), name(r.get("variant"), "variant")) for r in runs]
    return [(name(fields.get("job"), "job"), name(fields.get("variant"), "variant"))]


class BodyLimit:
    """Refuses request bodies over `max_bytes` with a 413, by Content-Length before reading, and by
    counting while reading when there is none (chunked uploads)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await reply({"error": "the Content-Length header is not a number"}, 400)(scope, receive, send)
                return
            if declared > self.max_bytes:
                await reply({"error": self._message(declared)}, 413)(scope, receive, send)
                return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise TooLarge(self._message(received))  # answered by the app's ServeError handler
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int) -> str:
        return (f"the request body is {size:,} bytes or more; at most {self.max_bytes:,} are accepted "
                f"(serve --max-body-mb)")
