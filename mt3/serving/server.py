"""`mt3 serve`: transcription over HTTP (FastAPI + uvicorn) with requests decoded in SHARED batches.

Why a batching worker: decoding is the cost, and a batch of B segments costs about as much as one segment on an
accelerator, so concurrent uploads should ride in the same batches. One worker thread owns the model; every request
turns its audio into segments and queues them; the worker fills each batch with segments of all pending requests
(FIFO, up to the batch size, waiting `batch_wait_ms` for stragglers), decodes, and hands every request its tokens.
Stitching, MIDI writing and plotting happen on the request's side, so the worker only ever decodes.

Endpoints: `GET /` an upload page (`mt3/serving/upload_page.py`), `POST /transcribe` (multipart field `file`;
`?format=midi|json|png|csv`: the files `mt3 transcribe` writes as NAME.mid, NAME.notes.json, NAME.png and
NAME.notes.csv, byte for byte the same writers; `format=json` can carry the MIDI, CSV and PNG too, for the page's
downloads), `GET /healthz` (model and batching statistics). Every response carries the warnings the command line
prints for that file (`warnings` in JSON, an `X-Warning` header otherwise). Limits: upload bytes -> 413, audio
seconds -> 400, undecodable audio -> 400 with the reason; nothing a client sends stops the service. Error bodies are
`{"detail": "NAME: problem"}` on one line, about the user's file only (no Python reprs or server paths).

No TensorFlow here.
"""


import asyncio
import base64
import collections
import dataclasses
import logging
import re
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mt3.errors import InputError

if TYPE_CHECKING:
    from mt3.inference import InferenceModel, Transcription

log = logging.getLogger("mt3.serving.server")

FORMATS = ("midi", "json", "png", "csv")


@dataclasses.dataclass
class _Job:
    frames: np.ndarray  # [n, L, hop]
    future: Future
    allowed: np.ndarray | None = None  # bool [vocab_size]: this request's program mask (instrument consistency)
    tokens: list = dataclasses.field(default_factory=list)
    log_probs: list = dataclasses.field(default_factory=list)  # per segment: its tokens' log-probabilities (or None)
    next_segment: int = 0
    job_id: int = 0


class BatchingDecoder:
    """One worker thread decoding the queued segments of all pending requests in shared batches."""

    def __init__(self, im, *, batch_wait_ms: float = 20.0):
        self.im = im
        self.batch_wait = batch_wait_ms / 1000.0
        self._pending: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._next_id = 0
        self.stats = {"requests": 0, "batches": 0, "segments": 0, "shared_batches": 0, "max_requests_per_batch": 0,
                      "decode_seconds": 0.0}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mt3-decoder", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, frames: np.ndarray, allowed: np.ndarray | None = None) -> Future:
        """Queues one request's segments (with its token mask, if any); the Future resolves to (its list of
        codec-token arrays, their log-probabilities), one per segment."""
        future: Future = Future()
        with self._cond:
            self._next_id += 1
            self.stats["requests"] += 1
            self._pending.append(_Job(frames=frames, future=future, job_id=self._next_id, allowed=allowed))
            self._cond.notify_all()
        return future

    def _collect(self) -> list[tuple[_Job, int]] | None:
        """Up to batch_size (job, segment index) pairs, FIFO over jobs; None when stopping."""
        batch_size = self.im.batch_size
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            deadline = time.monotonic() + self.batch_wait
            while self._queued_segments() < batch_size and not self._stop:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            picked: list[tuple[_Job, int]] = []
            for job in list(self._pending):
                while job.next_segment < len(job.frames) and len(picked) < batch_size:
                    picked.append((job, job.next_segment))
                    job.next_segment += 1
                if job.next_segment >= len(job.frames):
                    self._pending.remove(job)
                if len(picked) >= batch_size:
                    break
            return picked

    def _queued_segments(self) -> int:
        return sum(len(job.frames) - job.next_segment for job in self._pending)

    def _run(self) -> None:
        while True:
            picked = self._collect()
            if picked is None:
                return
            jobs = {id(job): job for job, _ in picked}
            started = time.perf_counter()
            try:
                frames = np.stack([job.frames[i] for job, i in picked])
                if any(job.allowed is not None for job, _ in picked):  # masked and unmasked requests share a batch
                    everything = np.ones(self.im.model.module.config.vocab_size, bool)
                    masks = np.stack([everything if job.allowed is None else job.allowed for job, _ in picked])
                    ids, _, scores = self.im.predict_batch_scored(frames, masks)
                else:
                    ids, _, scores = self.im.predict_batch_scored(frames)
            except Exception as err:  # a decoding failure fails these requests, never the worker
                log.exception("decoding failed")
                for job in jobs.values():
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            elapsed = time.perf_counter() - started
            for i, ((job, _), row) in enumerate(zip(picked, ids, strict=True)):
                job.tokens.append(self.im.ids_to_tokens(row))
                job.log_probs.append(None if scores is None else scores[i, :len(job.tokens[-1])])
            for job in jobs.values():
                if len(job.tokens) == len(job.frames) and not job.future.done():
                    job.future.set_result((job.tokens, job.log_probs))
            with self._cond:
                s = self.stats
                s["batches"] += 1
                s["segments"] += len(picked)
                s["shared_batches"] += int(len(jobs) > 1)
                s["max_requests_per_batch"] = max(s["max_requests_per_batch"], len(jobs))
                s["decode_seconds"] += elapsed
            log.info("batch %d: %d segments from %d request(s) [%s] in %.3f s", self.stats["batches"], len(picked),
                     len(jobs), ",".join(str(j.job_id) for j in jobs.values()), elapsed)


class UploadTooLarge(Exception):
    pass


class UploadLimitMiddleware:
    """Pure ASGI middleware: POST bodies above `max_bytes` get 413 (Content-Length checked first, then counted)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, {"detail": f"upload is larger than {self.max_bytes} bytes"})
        received = 0
        started = too_large = False
        detail = {"detail": f"upload is larger than {self.max_bytes} bytes"}

        async def counting_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise UploadTooLarge
            return message

        async def guarded_send(message):
            # FastAPI turns an exception while reading the form into its own 400: answer 413 instead
            nonlocal started
            if too_large:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_json(send, 413, detail)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except UploadTooLarge:
            if not started:
                await _send_json(send, 413, detail)


async def _send_json(send, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _png_bytes(ns, title: str, seconds: float) -> bytes:
    """The PNG `mt3 transcribe --png` writes (`plotting.plot_piano_roll`), as bytes."""
    return _written_bytes(lambda path: _plot(ns, path, title, seconds))


def _plot(ns, path, title: str, seconds: float) -> None:
    from mt3 import plotting

    plotting.plot_piano_roll(ns, path, title=title, seconds=seconds)


def _csv_text(result) -> str:
    """NAME.notes.csv as `mt3 transcribe --csv` writes it (the same writer, so the columns never drift apart)."""
    from mt3 import midi_io

    return _written_bytes(lambda path: midi_io.write_notes_csv(result.ns, path, confidence=result.confidence)).decode()


def _written_bytes(write) -> bytes:
    """What `write(path)` puts in a file: the CLI's writers are the only definition of each output format."""
    with tempfile.TemporaryDirectory(prefix="mt3-serve-") as tmp:
        path = Path(tmp) / "out"
        write(path)
        return path.read_bytes()


def _header_value(lines: list[str]) -> str:
    """Warnings as one HTTP header value (latin-1 only: anything else becomes '?')."""
    return " | ".join(lines).encode("latin-1", "replace").decode("latin-1")


# a repr may be cut short where a message was truncated, so the closing part is optional
_OBJECT_REPR_OPENING = re.compile(r"Error opening <[\w.]+ object at 0x[0-9a-fA-F]*>?:?\s*")
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]*>?")
_DECODER_TAG = re.compile(r"\b(?:soundfile|audioread): ")
_NO_BACKEND = re.compile(r"(?:;\s*)?\bNoBackendError\b")


def client_detail(err: InputError, name: str) -> str:
    """The one-line error body for a bad upload: `NAME: problem`, about the user's file only.

    Why: decoder messages name server internals -- `<_io.BytesIO object at 0x...>` (the in-memory upload), the
    temporary file the ffmpeg fallback reads, decoder library names -- which mean nothing to the person uploading and
    leak the server's layout. The problem text itself (e.g. "Malformed 'fmt ' chunk") is kept.
    """
    problem = _OBJECT_REPR_OPENING.sub("", err.problem)
    problem = _OBJECT_REPR.sub(name, problem)
    problem = re.sub(re.escape(tempfile.gettempdir()) + r"[^\s'\";:,()]*", name, problem)
    problem = _NO_BACKEND.sub("", _DECODER_TAG.sub("", problem))
    problem = re.sub(r"\(\s*\)|\(\s*$", "", " ".join(problem.split())).strip()  # emptied or cut-short detail
    return f"{name}: {problem}"


def _validation_detail(errors: list[dict[str, Any]]) -> str:
    """FastAPI's request-validation error list -> one line a person can act on."""
    if any(tuple(e.get("loc", ()))[-1:] == ("file",) for e in errors):
        return "no file uploaded: send the audio as the multipart/form-data field 'file'"
    parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
             for e in errors]
    return "; ".join(parts) or "invalid request"


async def transcribe_request(im: "InferenceModel", decoder: BatchingDecoder, samples: np.ndarray) -> "Transcription":
    """One upload through the shared batching decoder, with the model's instrument-consistency options as
    `InferenceModel.transcribe_many` applies them to a file: a first unconstrained pass when two-pass asks for the
    program set, the decode masked to that set, then restriction and reassignment."""
    from starlette.concurrency import run_in_threadpool

    segments = im.segment_audio(samples)

    async def decode(allowed: np.ndarray | None) -> "Transcription":
        tokens, log_probs = await asyncio.wrap_future(decoder.submit(segments.frames, allowed))
        return await run_in_threadpool(im.stitch, tokens, segments.start_times, segments.audio_seconds, log_probs)

    programs, first = im.config.programs, None
    if im.first_pass_programs():
        first = await decode(None)
        programs = im.estimate_programs(first.ns)
    masked = im.masked_programs(programs)
    result = await decode(None if masked is None else im.program_mask(masked))
    im.finish_programs(result, programs, first_pass=first)
    return result


def create_app(im, *, max_upload_mb: float = 50.0, max_audio_seconds: float = 600.0, batch_wait_ms: float = 20.0):
    """The FastAPI app around a loaded InferenceModel (the model is loaded once, before the app is built)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from mt3 import audio, midi_io, model_loading
    from mt3.serving import upload_page

    decoder = BatchingDecoder(im, batch_wait_ms=batch_wait_ms)
    max_bytes = int(max_upload_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(app):
        decoder.start()
        try:
            yield
        finally:
            decoder.stop()

    app = FastAPI(title="mt3", lifespan=lifespan)
    app.state.decoder = decoder
    page = upload_page.render(max_upload_mb=max_upload_mb, max_audio_seconds=max_audio_seconds)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(list(exc.errors()))}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.api_route("/healthz", methods=["GET", "HEAD"])  # HEAD: load balancers and `curl -I` probe with it
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": im.describe(), "decoder": dict(decoder.stats),
                "limits": {"max_upload_bytes": max_bytes, "max_audio_seconds": max_audio_seconds}}

    @app.post("/transcribe")
    async def transcribe(request: Request, file: UploadFile = File(...), format: str = Query("midi"),
                         midi: bool = Query(False, description="with format=json: include the MIDI as base64"),
                         csv: bool = Query(False, description="with format=json: include NAME.notes.csv as text"),
                         png: bool = Query(False, description="with format=json: include the PNG as base64")):
        if format not in FORMATS:
            raise HTTPException(400, f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        if len((await request.form()).getlist("file")) > 1:  # FastAPI would silently take one of them
            raise HTTPException(400, "several 'file' fields in one upload: send one file per request")
        name = Path(file.filename or "upload").name
        data = await file.read()
        if len(data) > max_bytes:
            raise HTTPException(413, f"upload is larger than {max_bytes} bytes")
        try:
            samples = await run_in_threadpool(audio.load_audio_bytes, data, name=name)
        except InputError as err:
            raise HTTPException(400, client_detail(err, name)) from err
        warnings = audio.input_warnings(samples, im.sample_rate, model_loading.resolved_input_peak(im.config))
        seconds = len(samples) / im.sample_rate
        if seconds > max_audio_seconds:
            raise HTTPException(400, f"{name}: audio is {seconds:.1f} s long; this server accepts at most "
                                     f"{max_audio_seconds:g} s")
        try:
            result = await transcribe_request(im, decoder, samples)
        except Exception as err:  # the traceback is for the server log, not the client
            log.exception("transcribing %s failed", name)
            raise HTTPException(500, f"{name}: transcription failed on the server (the server log has the "
                                     "details)") from err
        # every output holds what the MIDI file holds, and the response warns of what the CLI warns (as transcribe)
        result.ns, prepared = midi_io.prepare_notes(result.ns)
        warnings += prepared.warnings()
        stem = Path(name).stem or "transcription"
        headers = {"X-Invalid-Events": str(result.invalid_events), "X-Dropped-Events": str(result.dropped_events),
                   **({"X-Warning": _header_value(warnings)} if warnings else {})}
        if format == "midi":
            return Response(midi_io.midi_bytes(result.ns, title=name), media_type="audio/midi",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.mid"', **headers})
        if format == "png":
            png_data = await run_in_threadpool(_png_bytes, result.ns, name, result.audio_seconds)
            return Response(png_data, media_type="image/png",
                            headers={"Content-Disposition": f'inline; filename="{stem}.png"', **headers})
        if format == "csv":
            return Response(await run_in_threadpool(_csv_text, result), media_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.notes.csv"', **headers})
        body = {"name": name, "notes": result.notes(), "invalid_events": result.invalid_events,
                "dropped_events": result.dropped_events, "seconds": round(result.audio_seconds, 3),
                "segments": result.num_segments, "warnings": [f"{name}: {line}" for line in warnings],
                "instrument_options": result.program_report.lines() if result.program_report else []}
        if midi:
            body["midi_base64"] = base64.b64encode(midi_io.midi_bytes(result.ns, title=name)).decode()
        if csv:
            body["csv"] = await run_in_threadpool(_csv_text, result)
        if png:
            png_data = await run_in_threadpool(_png_bytes, result.ns, name, result.audio_seconds)
            body["png_base64"] = base64.b64encode(png_data).decode()
        return JSONResponse(body)

    return UploadLimitMiddleware(app, max_bytes) if max_bytes > 0 else app


def check_port(host: str, port: int) -> None:
    """InputError unless `host:port` can be bound now (as uvicorn binds it, with SO_REUSEADDR). Checked before the
    model loads, so a busy port is one line and exit 2 rather than a model load, a URL and uvicorn's Errno 98."""
    import socket

    if not 0 <= port <= 65535:
        raise InputError(None, f"--port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise InputError(None, f"--host {host}: cannot resolve it ({err.strerror or err})") from err
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise InputError(None, f"cannot listen on {host}:{port}: {err.strerror or err} (another server is "
                                   "using that port? choose another --port)") from err


def serve(checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 50.0,
          max_audio_seconds: float = 600.0, batch_size: int | None = None, gin_files=(), gin_bindings=()) -> None:
    """`mt3 serve`: checks the port, loads the model once, then runs uvicorn until interrupted."""
    import uvicorn

    from mt3 import model_loading

    check_port(host, port)

    im = model_loading.load_inference_model(checkpoint, gin_files=gin_files, gin_bindings=gin_bindings,
                                            batch_size=batch_size)
    if not log.handlers:  # absl (via orbax) owns the root logger; give the batch log its own handler
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    print(f"mt3 serve: model step {im.info.get('step')} from {checkpoint}; batch {im.batch_size}; "
          f"http://{host}:{port}/", flush=True)
    app = create_app(im, max_upload_mb=max_upload_mb, max_audio_seconds=max_audio_seconds)
    uvicorn.run(app, host=host, port=port, log_level="info")
