"""`mt3 serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--max-upload-mb N] [--max-audio-seconds S]
[--programs P,P,... | --two-pass-programs] [--reassign-programs family|dominant]`.

Thin: `mt3.serving.server.serve` loads the model once and runs uvicorn (upload page at /, POST /transcribe, GET
/healthz).
"""

from __future__ import annotations

import argparse

from mt3.commands.transcribe import add_consistency_arguments, consistency_bindings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, metavar="DIR",
                        help="model dir from `mt3 train` (default: the bundled model, else runs/local_tiny)")
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="extra gin file read after DIR/config.gin and gin/infer.gin (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, metavar="N", help="larger uploads get 413")
    parser.add_argument("--max-audio-seconds", type=float, default=600.0, metavar="S",
                        help="longer audio gets 400 (default 600)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="segments decoded together across requests (default: INFER_BATCH_SIZE from gin, 32)")
    add_consistency_arguments(parser)  # applied to every request, as `mt3 transcribe` applies them to every file
    parser.set_defaults(gin_bindings=[])


def main(args: argparse.Namespace) -> int:
    from mt3.errors import InputError
    from mt3.serving.server import serve
    from mt3.transcription import resolve_model_dir

    if args.max_upload_mb <= 0 or args.max_audio_seconds <= 0:
        raise InputError(None, "--max-upload-mb and --max-audio-seconds must be positive")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {args.batch_size}")
    bindings = [*args.gin_bindings, *consistency_bindings(args)]  # a bad --programs is named before anything loads
    from mt3.serving.server import check_port

    check_port(args.host, args.port)  # before resolving and loading the model
    checkpoint = resolve_model_dir(args.checkpoint, "serve")  # names the default model when it is used
    serve(checkpoint, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_audio_seconds=args.max_audio_seconds, batch_size=args.batch_size, gin_files=args.gin_file,
          gin_bindings=bindings)
    return 0
