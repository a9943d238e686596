"""HTTP tests for mt3.serving.server against a REAL uvicorn server on 127.0.0.1 (a free port, run in a thread),
serving the
trained tiny checkpoint: MIDI/JSON/PNG responses, limits (413/400), bad audio (400 with the reason), shared batches
across 8 concurrent requests, /healthz, and that the service keeps serving after bad requests."""

from __future__ import annotations

import base64
import io
import logging
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from helpers import build_tiny_model, running_server

from mt3 import model_loading
from mt3.serving import server


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def base_url(tiny):
    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings, batch_size=8)
    with running_server(im, max_upload_mb=0.5, max_audio_seconds=5.0, batch_wait_ms=50) as url:
        yield url


def _post(url, name: str, data: bytes, **params):
    return requests.post(f"{url}/transcribe", params=params, files={"file": (name, data)}, timeout=120)


def _wav_bytes(seconds: float, subtype: str = "PCM_16") -> bytes:
    import soundfile

    t = np.arange(int(seconds * 16000)) / 16000
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV",
                    subtype=subtype)
    return buffer.getvalue()


def test_healthz(base_url):
    body = requests.get(f"{base_url}/healthz", timeout=10).json()
    assert body["status"] == "ok"
    assert body["model"]["step"] > 0 and body["model"]["batch_size"] == 8 and body["model"]["input_frames"] == 256
    assert body["limits"] == {"max_upload_bytes": 524288, "max_audio_seconds": 5.0}


def test_midi_json_and_png_responses(base_url, tiny):
    import pretty_midi

    data = tiny.wav(3).read_bytes()
    midi = _post(base_url, "song.wav", data)
    assert midi.status_code == 200 and midi.headers["content-type"] == "audio/midi"
    assert 'filename="song.mid"' in midi.headers["content-disposition"]
    pm = pretty_midi.PrettyMIDI(io.BytesIO(midi.content))
    notes = sorted((round(n.start, 3), n.pitch, i.program) for i in pm.instruments for n in i.notes)
    assert notes
    body = _post(base_url, "song.wav", data, format="json", midi="true").json()
    assert set(body) >= {"notes", "invalid_events", "dropped_events", "seconds", "midi_base64"}
    import soundfile

    seconds = soundfile.info(str(tiny.wav(3))).duration
    assert body["seconds"] == pytest.approx(seconds, abs=1e-3) and body["segments"] == int(np.ceil(seconds / 2.048))
    assert sorted((round(n["onset"], 3), n["pitch"], n["program"]) for n in body["notes"]) == notes
    assert base64.b64decode(body["midi_base64"]) == midi.content
    png = _post(base_url, "song.wav", data, format="png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_bad_requests_get_reasons_and_the_service_keeps_serving(base_url, tiny):
    corrupt = _post(base_url, "broken.wav", b"RIFF\x00\x00\x00\x00WAVEfmt garbage that is not audio")
    assert corrupt.status_code == 400
    assert corrupt.json()["detail"].startswith("broken.wav: unreadable, corrupt or unsupported audio format")
    assert "Malformed 'fmt ' chunk" in corrupt.json()["detail"]  # the decoder's reason about the file is kept
    not_audio = _post(base_url, "notes.mp3", b"just some text, no audio at all")
    for response, name in ((corrupt, "broken.wav"), (not_audio, "notes.mp3")):  # the user's file only
        detail = response.json()["detail"]
        assert "\n" not in detail and detail.startswith(f"{name}: ")
        for leak in ("object at 0x", "BytesIO", "soundfile", "audioread", "NoBackendError", "Traceback"):
            assert leak not in detail, (leak, detail)
    assert not_audio.json()["detail"] == "notes.mp3: unreadable, corrupt or unsupported audio format (Format not " \
                                         "recognised; ffmpeg cannot decode it either)"
    empty = _post(base_url, "empty.wav", b"")
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    too_long = _post(base_url, "long.wav", _wav_bytes(6.0))
    assert too_long.status_code == 400 and "at most 5 s" in too_long.json()["detail"]
    oversize = _post(base_url, "big.wav", _wav_bytes(0.1) + b"\x00" * 600_000)
    assert oversize.status_code == 413

    def chunks():  # a valid multipart stream without Content-Length: the middleware counts the body
        yield b'--zzz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(40):
            yield b"x" * 20_000
        yield b"\r\n--zzz--\r\n"

    chunked = requests.post(f"{base_url}/transcribe", data=chunks(), timeout=60,
                            headers={"Content-Type": "multipart/form-data; boundary=zzz"})
    assert chunked.status_code == 413
    assert _post(base_url, "song.wav", tiny.wav(4).read_bytes(), format="nope").status_code == 400
    no_file = requests.post(f"{base_url}/transcribe", timeout=10)
    assert no_file.status_code == 422  # one line a person can act on, not FastAPI's list of dicts
    assert no_file.json() == {"detail": "no file uploaded: send the audio as the multipart/form-data field 'file'"}
    bad_flag = _post(base_url, "song.wav", tiny.wav(4).read_bytes(), format="json", midi="maybe")
    assert bad_flag.status_code == 422 and bad_flag.json()["detail"].startswith("midi: ")
    ok = _post(base_url, "song.wav", tiny.wav(4).read_bytes(), format="json")
    assert ok.status_code == 200 and ok.json()["notes"]


def test_concurrent_requests_share_batches(base_url, tiny, caplog):
    files = [tiny.wav(3).read_bytes(), tiny.wav(4).read_bytes()]
    before = requests.get(f"{base_url}/healthz", timeout=10).json()["decoder"]
    with caplog.at_level(logging.INFO, logger="mt3.serving.server"), ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: _post(base_url, f"f{i}.wav", files[i % 2], format="json"), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    bodies = [r.json() for r in responses]
    for i, body in enumerate(bodies):  # a request's notes do not depend on which others shared its batches
        assert body["notes"] == bodies[i % 2]["notes"]
    after = requests.get(f"{base_url}/healthz", timeout=10).json()["decoder"]
    assert after["requests"] - before["requests"] == 8
    assert after["segments"] - before["segments"] == 4 * bodies[0]["segments"] + 4 * bodies[1]["segments"]
    assert after["shared_batches"] > before["shared_batches"] and after["max_requests_per_batch"] >= 2
    assert after["batches"] - before["batches"] < 8  # fewer batches than requests: they were shared
    shared_logs = [r.getMessage() for r in caplog.records if "request(s)" in r.getMessage()]
    assert any(" from 1 request(s)" not in m for m in shared_logs)


def test_client_detail_hides_server_internals():
    import tempfile

    from mt3.errors import InputError

    err = InputError("clip.m4a", "unreadable, corrupt or unsupported audio format (soundfile: Error opening "
                                 "<_io.BytesIO object at 0x7f3a2b1c0d90>: Format not recognised.; audioread: "
                                 f"ffmpeg could not decode {tempfile.gettempdir()}/tmpk2j4/upload.m4a)")
    assert server.client_detail(err, "clip.m4a") == (
        "clip.m4a: unreadable, corrupt or unsupported audio format (Format not recognised.; ffmpeg could not decode "
        "clip.m4a)")
    assert server.client_detail(InputError("x.wav", "file is empty (0 bytes)"), "x.wav") == "x.wav: file is empty " \
                                                                                           "(0 bytes)"


class _FailingModel:
    """A loaded model whose decoder breaks: the server must answer 500 with one line, not a traceback."""

    def __init__(self, im):
        self._im = im

    def __getattr__(self, name):
        return getattr(self._im, name)

    def predict_batch_scored(self, frames, allowed=None):
        raise RuntimeError("device exploded at <jaxlib.Thing object at 0xdeadbeef>")


def test_decoding_failure_is_a_one_line_500(tiny, caplog):
    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings, batch_size=2)
    with caplog.at_level(logging.ERROR, logger="mt3.serving.server"), running_server(_FailingModel(im)) as url:
        response = _post(url, "song.wav", tiny.wav(3).read_bytes(), format="json")
        assert response.status_code == 500
        assert response.json() == {"detail": "song.wav: transcription failed on the server (the server log has the "
                                             "details)"}
        assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"  # still serving
    assert any("device exploded" in r.getMessage() or (r.exc_info and "device exploded" in str(r.exc_info[1]))
               for r in caplog.records)


def test_head_healthz_and_two_file_fields(base_url, tiny):
    head = requests.head(f"{base_url}/healthz", timeout=10)
    assert head.status_code == 200 and not head.content
    data = _wav_bytes(1.0)  # two of them stay under the fixture's 0.5 MB limit
    two = requests.post(f"{base_url}/transcribe", files=[("file", ("a.wav", data)), ("file", ("b.wav", data))],
                        timeout=120)
    assert two.status_code == 400 and "several 'file' fields" in two.json()["detail"]


def test_busy_port_and_bad_batch_size_are_one_line_before_the_model_loads(tmp_path, capsys):
    """`mt3 serve --port BUSY` once loaded the model, printed a URL and then died in uvicorn (exit 3): now one line,
    exit 2, and no model is needed to find out (the checkpoint named here does not even exist)."""
    from mt3 import cli

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = cli.main(["serve", "--port", str(port), "--checkpoint", str(tmp_path / "no_model")])
        err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "--port" in err, err
    assert cli.main(["serve", "--batch-size", "0", "--checkpoint", str(tmp_path / "no_model")]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_serve_takes_the_instrument_consistency_flags_of_transcribe(tiny, tmp_path, monkeypatch, capsys):
    """`mt3 serve --programs/--two-pass-programs/--reassign-programs` bind the same InferenceConfig fields as
    `mt3 transcribe`, the served model reports them in /healthz, and a bad program list is one line before loading."""
    from mt3 import cli, model_loading
    from mt3.serving import server

    assert cli.main(["serve", "--programs", "0,300", "--checkpoint", str(tmp_path / "no_model")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--programs" in err and "300" in err, err

    seen = {}
    monkeypatch.setattr(server, "serve", lambda checkpoint, **kw: seen.update(kw))
    assert cli.main(["serve", "--checkpoint", str(tiny.model_dir), "--port", "0", "--programs", "0,33",
                     "--reassign-programs", "family"]) == 0
    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=[*tiny.bindings, *seen["gin_bindings"]])
    described = im.describe()
    assert described["programs"] == [0, 33] and described["reassign_programs"] == "family"
    assert not described["two_pass_programs"]


def test_requests_get_the_instrument_consistency_of_transcribe(tiny):
    """The server's per-request path (shared batching decoder) applies a user program set, and two-pass with
    reassignment, exactly as `transcribe_many` applies them to a file: the same notes, request by request, while
    concurrent requests (first-pass unmasked and second-pass masked rows together) share batches."""
    import asyncio

    from mt3 import program_consistency
    from mt3.audio import load_audio

    audio = [load_audio(tiny.wav(i)) for i in (3, 4)]

    def notes(ns):
        return sorted((n.program, n.is_drum, n.pitch, round(n.start_time, 4), round(n.end_time, 4)) for n in ns.notes)

    async def through_server(im):
        decoder = server.BatchingDecoder(im, batch_wait_ms=50)
        decoder.start()
        try:
            return await asyncio.gather(*(server.transcribe_request(im, decoder, a) for a in audio))
        finally:
            decoder.stop()

    plain = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings, batch_size=8)
    found = program_consistency.program_note_counts(plain.transcribe_many(audio[:1], progress=False)[0].ns)
    user_set = [found.most_common(1)[0][0]]  # a set the model does play: the masked decode keeps notes
    for extra in ([f"PROGRAMS = {user_set}"], [f"PROGRAMS = {user_set}", "PROGRAMS_MODE = 'mask'"],
                  ["TWO_PASS_PROGRAMS = True", "MIN_PROGRAM_SHARE = 0.3", "REASSIGN_PROGRAMS = 'family'"]):
        im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=[*tiny.bindings, *extra], batch_size=8)
        expected = im.transcribe_many(audio, progress=False)
        served = asyncio.run(through_server(im))
        for got, want in zip(served, expected, strict=True):
            assert notes(got.ns) == notes(want.ns)
            assert got.program_report.lines() == want.program_report.lines()  # and says the same about it
        assert served[0].ns.notes
        if "PROGRAMS" in extra[0]:
            assert all(set(program_consistency.program_note_counts(r.ns)) <= set(user_set) for r in served)


def test_quiet_upload_says_so(base_url):
    import soundfile

    t = np.arange(16000) / 16000
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.001 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV",
                    subtype="FLOAT")
    body = _post(base_url, "quiet.wav", buffer.getvalue(), format="json").json()
    assert len(body["warnings"]) == 1 and body["warnings"][0].startswith("quiet.wav: the audio is very quiet (peak -60")
    assert _post(base_url, "loud.wav", _wav_bytes(1.0), format="json").json()["warnings"] == []
    midi = _post(base_url, "quiet.wav", buffer.getvalue())
    assert midi.status_code == 200 and "very quiet" in midi.headers["x-warning"]


def test_csv_json_and_png_are_the_files_transcribe_writes(base_url, tiny, tmp_path):
    """format=csv (and the page's one-request downloads: csv, png in format=json) give what `mt3 transcribe --csv
    --json --png` writes for the same audio: the same CSV text and notes."""
    import json

    from mt3 import transcription

    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings, batch_size=8)
    assert transcription.transcribe_files([tiny.wav(3)], tmp_path, notes_csv=True, notes_json=True, png=True,
                                          model=im, progress=False) == []
    cli_csv = (tmp_path / "track3.notes.csv").read_text()
    cli_notes = json.loads((tmp_path / "track3.notes.json").read_text())
    data = tiny.wav(3).read_bytes()
    served = _post(base_url, "track3.wav", data, format="csv")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/csv")
    assert 'filename="track3.notes.csv"' in served.headers["content-disposition"]
    assert served.text == cli_csv and len(cli_csv.splitlines()) == len(cli_notes) + 1 > 1
    body = _post(base_url, "track3.wav", data, format="json", midi="true", csv="true", png="true").json()
    assert body["csv"] == cli_csv and body["notes"] == cli_notes
    assert base64.b64decode(body["png_base64"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "csv" not in _post(base_url, "track3.wav", data, format="json").json()  # only on request
    bad = _post(base_url, "track3.wav", data, format="xml")
    assert bad.status_code == 400 and "midi, json, png, csv" in bad.json()["detail"]


def test_silent_upload_gets_the_warning_transcribe_prints(base_url, tiny, tmp_path, capsys):
    """A silent file: the command line warns, so the response does too (the same line, from one function)."""
    import soundfile

    from mt3 import transcription

    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros(16000, np.float32), 16000)
    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings, batch_size=8)
    transcription.transcribe_files([path], tmp_path / "out", model=im, progress=False)
    cli = [line.split(f"{path}: ", 1)[1] for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert cli == ["the audio is silent (1.00 s, every sample zero): no notes"]
    body = _post(base_url, "silent.wav", path.read_bytes(), format="json").json()
    assert body["warnings"] == [f"silent.wav: {cli[0]}"] and body["notes"] == []
    for fmt in ("midi", "csv", "png"):
        assert _post(base_url, "silent.wav", path.read_bytes(), format=fmt).headers["x-warning"] == cli[0]
