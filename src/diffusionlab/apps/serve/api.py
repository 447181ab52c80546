"""The server: a FastAPI app over ``work`` (the computations), ``jobs`` (the bounded queue) and
``catalog`` (the checkpoints under ``--runs``). Routes and event schema: README "The live page".

Every request body is a pydantic model that refuses unknown keys; every error is JSON
``{"error": message}`` with a 4xx status (400 a bad value or malformed JSON, 401 a missing
token, 404 an unknown checkpoint, LoRA adapter or job, 413 an oversized body, 503 a full queue with
Retry-After). Generation requests are checked in full before they are queued.
"""
import asyncio
import json
import mimetypes
import secrets
import threading
from pathlib import Path
from typing import Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ...errors import UserError
from . import work
from .catalog import Catalog, NotFound
from .jobs import Job, JobQueue, QueueFull

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_BODY = work.MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024   # an upload as base64 plus the other fields
SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid", "exponential", "constant")


def _models():
    """The request bodies (built on first use: pydantic is imported only when serving)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    from ...core.samplers import SAMPLERS

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    class Lora(Strict):
        id: str = Field(max_length=512)
        scale: float = Field(1.0, ge=-2.0, le=2.0)

    class Generate(Strict):
        checkpoint: str = Field(max_length=512)
        prompt: Optional[str] = Field(None, max_length=work.MAX_PROMPT)
        negative_prompt: Optional[str] = Field(None, max_length=work.MAX_PROMPT)
        class_: Optional[Union[int, str]] = Field(None, alias="class")
        negative_class: Optional[Union[int, str]] = None
        seed: int = Field(0, ge=0, le=2 ** 31 - 1)
        guidance: Optional[float] = Field(None, ge=0.0, le=50.0)
        guidance_rescale: float = Field(0.0, ge=0.0, le=1.0)
        guidance_interval: Optional[tuple[float, float]] = None
        autoguidance: Optional[float] = Field(None, ge=0.0, le=20.0)
        sampler: Optional[str] = None
        steps: Optional[int] = Field(None, ge=1, le=work.MAX_STEPS)
        batch: int = Field(1, ge=1, le=work.MAX_BATCH)
        lora: Optional[list[Lora]] = Field(None, max_length=work.MAX_LORA)

        @field_validator("sampler")
        @classmethod
        def _known(cls, v):
            if v not in (None, "", "auto") and v not in SAMPLERS:
                raise ValueError(f"unknown sampler {v!r}; choose from {', '.join(sorted(SAMPLERS))}")
            return v

        @field_validator("class_", "negative_class")
        @classmethod
        def _short(cls, v):
            if isinstance(v, str) and len(v) > 64:
                raise ValueError("a class is an index or a class name")
            return v

    class Img2Img(Generate):
        image: dict
        strength: float = Field(0.6, ge=0.0, le=1.0)

    class Inpaint(Generate):
        image: dict
        mask: Union[str, dict]

    class Guidance(Strict):
        job: str = Field(max_length=64)
        step: int = Field(ge=0)

    class Forward(Strict):
        image: dict
        schedule: Literal[SCHEDULES] = "linear"  # type: ignore[valid-type]
        timesteps: int = Field(1000, ge=2, le=4000)
        t: int = Field(ge=0)
        seed: int = Field(0, ge=0, le=2 ** 31 - 1)

    class Tokens(Strict):
        checkpoint: str = Field(max_length=512)
        prompt: str = Field(max_length=work.MAX_PROMPT)

    return dict(generate=Generate, img2img=Img2Img, inpaint=Inpaint, guidance=Guidance, forward=Forward, tokens=Tokens)


def create_app(runs, token: Optional[str] = None, depth: int = 16, workers: int = 1, runs_label: Optional[str] = None,
               host: str = "127.0.0.1"):
    """The app serving the checkpoints under ``runs``. ``token``: every route then needs it
    (``Authorization: Bearer T``, ``X-Token: T`` or ``?token=T``); ``depth``: jobs that may
    wait; ``workers``: generations run at once; ``runs_label``: how the command lines name the
    runs folder (default: as given)."""
    catalog = Catalog(runs)
    queue = JobQueue(depth=depth, workers=workers)
    models = _models()
    lock = threading.Lock()            # views that run the network wait for the running generation
    label = runs_label if runs_label is not None else str(runs)
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        queue.close()

    app = FastAPI(title="diffusionlab", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json", lifespan=lifespan)
    app.state.catalog, app.state.queue = catalog, queue

    def err(status: int, message: str, headers=None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        hostname = (request.headers.get("host") or "").rsplit(":", 1)[0] if not (request.headers.get("host") or "").startswith("[") \
            else (request.headers.get("host") or "").split("]")[0] + "]"
        if host in LOOPBACK and hostname not in LOOPBACK + ("testserver",):
            return err(400, f"this server answers only requests addressed to the loopback host, not {hostname!r}")
        if token is not None:
            given = request.headers.get("x-token") or request.query_params.get("token") or ""
            auth = request.headers.get("authorization") or ""
            if auth.lower().startswith("bearer "):
                given = auth[7:]
            if not secrets.compare_digest(given.encode(), token.encode()):
                return err(401, "this server needs its token: ?token=..., X-Token or Authorization: Bearer")
        if request.method in ("POST", "PUT") and int(request.headers.get("content-length") or 0) > MAX_BODY:
            return err(413, f"a request body over {MAX_BODY:,} bytes (uploads: at most {work.MAX_UPLOAD_BYTES:,} bytes)")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return err(400, "the body is not valid JSON")
        parts = []
        for e in errors[:3]:
            loc = ".".join(str(v) for v in e.get("loc", ()) if v != "body")
            msg = e.get("msg", "invalid")
            if e.get("type") == "extra_forbidden":
                msg = "unknown key (see the README's API table)"
            parts.append(f"{loc or 'body'}: {msg}")
        return err(422, "; ".join(parts))

    @app.exception_handler(UserError)
    async def user_error(request, exc):
        param = {"class_": "class"}.get(exc.param, exc.param)   # the library's parameter as the API's key
        return err(404 if isinstance(exc, NotFound) else 400, f"{param}: {exc.message}" if param else exc.message)

    @app.exception_handler(QueueFull)
    async def full(request, exc):
        return err(503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    async def body(request: Request, name: str):
        from pydantic import ValidationError

        raw = await request.body()
        if len(raw) > MAX_BODY:
            return None, err(413, f"a request body over {MAX_BODY:,} bytes")
        try:
            data = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            return None, err(400, "the body is not valid JSON")
        if not isinstance(data, dict):
            return None, err(400, "the body is a JSON object")
        try:
            return models[name].model_validate(data), None
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None

    # ------------------------------------------------------------ the page and its assets

    @app.get("/")
    def index():
        html = (STATIC / "index.html").read_text()
        if token is not None:  # the page's own assets carry the token too (every route checks it)
            import re
            from urllib.parse import quote

            html = re.sub(r'((?:src|href)="static/[^"?]+)"', lambda m: f'{m.group(1)}?token={quote(token)}"', html)
        return Response(html.encode(), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    @app.get("/static/{name}")
    def static(name: str):
        files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        if name not in files:
            return err(404, f"no asset {name!r}")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(files[name].read_bytes(), media_type=kind, headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------ models

    @app.get("/api/health")
    def health():
        return {"ok": True, "queued": len(queue.pending), "running": len(queue.running), "depth": queue.depth}

    @app.get("/api/checkpoints")
    def checkpoints():
        """The checkpoints (a list, as before), each with an ``adapters`` list: the LoRA
        adapters under the runs folder whose base is that checkpoint (``Catalog.adapter``:
        id, base, base_matches, rank, alpha, targets, step, data, digits). An adapter whose base
        is not on this server is listed under no checkpoint. A LoRA run is not a checkpoint."""
        out = catalog.list()
        adapters = catalog.adapters()
        for c in out:
            c["adapters"] = [a for a in adapters if a["base"] == c["id"]]
        return out

    @app.get("/api/samplers")
    def samplers():
        from ...core.samplers import SAMPLERS

        return {"samplers": [{"name": k, "order": v.order, "stochastic": v.stochastic, "nfe_per_step": v.nfe_per_step,
                              "fixed_nfe": v.fixed_nfe, "description": v.description} for k, v in SAMPLERS.items()],
                "schedules": list(SCHEDULES),
                "limits": {"batch": work.MAX_BATCH, "nfe": work.MAX_NFE, "prompt": work.MAX_PROMPT,
                           "upload_bytes": work.MAX_UPLOAD_BYTES, "upload_side": work.MAX_UPLOAD_SIDE,
                           "steps": work.MAX_STEPS, "queue": queue.depth}}

    @app.get("/api/model")
    def model(checkpoint: str):
        return work.architecture_view(catalog, checkpoint)   # on a copy of the network: no wait for a generation

    @app.post("/api/tokens")
    async def tokens(request: Request):
        req, bad = await body(request, "tokens")
        if bad:
            return bad
        return await asyncio.to_thread(work.tokens_view, catalog, req.checkpoint, req.prompt)

    @app.get("/api/digits")
    def digits(size: int = 32):
        if size not in (28, 32):
            return err(400, "size: 28 or 32")
        return {"digits": [work.data_url(work.png_bytes(work.dataset_digit(i, size)[None])) for i in range(16)]}

    # ------------------------------------------------------------ generation jobs

    async def submit(request: Request, kind: str):
        req, bad = await body(request, kind)
        if bad:
            return bad
        data = req.model_dump(by_alias=True)
        if kind == "inpaint" and isinstance(data.get("mask"), str):
            data["mask_spec"] = data["mask"]
        elif kind == "inpaint" and isinstance(data.get("mask"), dict) and isinstance(data["mask"].get("rect"), list):
            data["mask_spec"] = ",".join(str(v) for v in data["mask"]["rect"])   # the CLI's --mask x0,y0,x1,y1
        p = await asyncio.to_thread(work.plan, catalog, data, label, kind)

        def run(job):
            with lock:
                work.run_plan(p, job)

        job = Job(run, kind)
        pos = queue.submit(job)
        return JSONResponse({"job": job.id, "position": pos, "events": f"/api/jobs/{job.id}/events",
                             "command": p.command, "sampler": p.sampler, "steps": p.steps, "nfe_planned": p.nfe_planned},
                            status_code=202)

    @app.post("/api/generate")
    async def generate(request: Request):
        return await submit(request, "generate")

    @app.post("/api/img2img")
    async def img2img(request: Request):
        return await submit(request, "img2img")

    @app.post("/api/inpaint")
    async def inpaint(request: Request):
        return await submit(request, "inpaint")

    def find(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (finished jobs are kept for a while only)", param="job")
        return job

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str):
        job = find(job_id)
        last = job.events[-1] if job.events else None
        done = next((d for n, d in job.events if n == "done"), None)
        error = next((d["error"] for n, d in job.events if n == "error"), None)
        return {"job": job.id, "state": job.state, "position": queue.position(job), "events": len(job.events),
                "last": last[0] if last else None, "done": done, "error": error}

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str):
        job = find(job_id)
        queue.cancel(job)
        return {"job": job.id, "state": job.state}

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        job = find(job_id)

        try:  # a reconnecting EventSource resumes after the last event it saw
            resume = max(0, int(request.headers.get("last-event-id") or 0))
        except ValueError:
            resume = 0

        async def stream():
            seen, last_pos, idle = min(resume, len(job.events)), None, 0.0
            try:
                while True:
                    while seen < len(job.events):
                        name, data = job.events[seen]
                        seen += 1
                        yield f"id: {seen}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
                    if job.over and seen >= len(job.events):
                        return
                    pos = queue.position(job)
                    if pos is not None and pos != last_pos:
                        last_pos = pos
                        yield f"event: queued\ndata: {json.dumps({'position': pos})}\n\n"
                    await asyncio.sleep(0.02)
                    idle += 0.02
                    if idle >= 15:
                        idle = 0.0
                        yield ": keep-alive\n\n"
            finally:
                if not job.over:  # the client went away: free its place, stop its generation
                    queue.cancel(job)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def result(job_id: str, key: str):
        job = find(job_id)
        if job.state != "done" or key not in job.result:
            raise UserError(f"job {job_id} has no result yet (state {job.state})", param="job")
        return job.result[key]

    @app.get("/api/jobs/{job_id}/result.png")
    def result_png(job_id: str):
        return Response(result(job_id, "png"), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="diffusionlab-{job_id}.png"'})

    @app.get("/api/jobs/{job_id}/image/{k}.png")
    def result_one(job_id: str, k: int):
        images = result(job_id, "images")
        if not 0 <= k < len(images):
            return err(404, f"image {k} is outside 0..{len(images) - 1}")
        return Response(images[k], media_type="image/png")

    @app.get("/api/jobs/{job_id}/denoising.gif")
    def result_gif(job_id: str):
        return Response(result(job_id, "gif"), media_type="image/gif",
                        headers={"Content-Disposition": f'attachment; filename="denoising-{job_id}.gif"'})

    # ------------------------------------------------------------ views

    @app.post("/api/guidance")
    async def guidance(request: Request):
        req, bad = await body(request, "guidance")
        if bad:
            return bad
        job = find(req.job)

        def view():
            with lock:
                return work.guidance_view(job, req.step)
        return await asyncio.to_thread(view)

    @app.post("/api/forward")
    async def forward(request: Request):
        req, bad = await body(request, "forward")
        if bad:
            return bad
        return await asyncio.to_thread(work.forward_view, req.model_dump())

    return app


CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'")
