"""The `mt3` console entry point.

Thin by design (as t5x's and basic-pitch's): parse flags, then call one library function. Subcommand modules are
imported only when chosen, so `mt3 --help` answers instantly without loading JAX or TensorFlow. Gin flags pass through
as T5X users type them: `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` (sugar for one binding).

Quiet by default: TensorFlow's and XLA's C++ start-up lines (oneDNN notes, "failed call to cuInit" on a machine without
a GPU) are switched off through the environment BEFORE any command module can import TensorFlow or JAX; `--verbose`
(any command) leaves them on. `mt3 score --json A B | head` stops quietly when the reader closes the pipe.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

# name -> (module under mt3.commands, one-line help). Order is the order `mt3 --help` lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("score", "Score an estimated MIDI against a reference MIDI (onset, onset+offset, multi-instrument F1)."),
    "tokens": ("tokens", "Tokenize a MIDI segment-wise with ties, decode, stitch and write the reconstruction."),
    "build-corpus": ("build_corpus", "Render music21 scores with fluidsynth into a Slakh2100-layout local corpus."),
    "prepare-data": ("prepare_data", "Convert a dataset from its native layout into sharded TFRecords + manifests."),
    "tasks": ("tasks", "List the registered tasks and mixtures: datasets, prepared hours, mixture rates and shares."),
    "data-stats": ("data_stats", "Read examples of a task or mixture through the real pipeline and print statistics."),
    "train": ("train", "Train a model from gin configs (sharded over a JAX device mesh, resumable)."),
    "eval": ("eval", "Evaluate checkpoints on eval tasks: results.json, results.md and piano-roll PNGs."),
    "transcribe": ("transcribe", "Transcribe audio files or folders to multitrack MIDI (+ optional piano-roll PNG, "
                                 "notes JSON/CSV and a sonified WAV)."),
    "serve": ("serve", "Serve transcription over HTTP (upload page, POST /transcribe?format=midi|json|png, "
                       "GET /healthz); see the README's HTTP API section."),
    "export-model": ("export_model", "Export a trained model dir as a bundled model (bf16 weights + config)."),
    "import-checkpoint": ("import_checkpoint", "Import a T5X checkpoint of MT3 (the released mt3/ismir2021 models) "
                                               "into a model dir."),
}

GIN_PREFIX = "--gin."


def split_gin_bindings(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pulls `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) out of argv; returns (rest, ["NAME = VALUE", ...])."""
    rest: list[str] = []
    bindings: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(GIN_PREFIX):
            body = arg[len(GIN_PREFIX):]
            if "=" in body:
                name, value = body.split("=", 1)
            elif i + 1 < len(argv):
                name, value = body, argv[i + 1]
                i += 1
            else:
                raise SystemExit(f"mt3: error: {arg} needs a value (--gin.NAME=VALUE)")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
        i += 1
    return rest, bindings


GIN_HELP = """
Gin: --gin_file=FILE reads a gin file (repeatable; searched in the working directory, then the package's gin/;
transcribe/eval/serve read it after the model dir's config.gin), and --gin.NAME=VALUE binds one macro or parameter,
e.g. --gin.BATCH_SIZE=8 or --gin.MIXTURE_OR_TASK_NAME="'local_notes_ties_vb1_train'" (a string keeps its quotes).
An unknown name or a value of the wrong type stops with one error line (exit 2).
Flags may be spelled with '-' or '_' (--batch-size or --batch_size). --verbose shows TensorFlow/XLA log lines.
"""
GIN_USAGE = " [--gin.NAME=VALUE ...]"
VERBOSE_FLAG = "--verbose"
# Environment read by TensorFlow/XLA/gRPC when they are first imported: their C++ INFO/WARNING/ERROR start-up lines
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "GLOG_minloglevel": "3"}


# absl's C++ log line ("I0000 00:00:1796421305.54 10484 port.cc:153] ...") and its preamble. TensorFlow 2.21 and XLA
# print these at import / backend start-up BEFORE absl::InitializeLog, so TF_CPP_MIN_LOG_LEVEL does not reach them.
_NATIVE_LOG_LINE = re.compile(rb"^\s*(?:[IWE]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] "
                              rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")
_filtering = False


def quiet_native_logging(verbose: bool, *, filter_stderr: bool = False) -> None:
    """Unless `verbose`, silences TensorFlow's/XLA's C++ logging (values a user set in the environment win) and, with
    `filter_stderr` (the console entry point), drops absl's pre-initialisation lines from file descriptor 2. Must run
    before TensorFlow or JAX is imported: they read these variables once, at import."""
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if filter_stderr:
        _filter_native_stderr()


def _filter_native_stderr() -> None:
    """Routes fd 2 through a pipe whose reader thread forwards every line except absl C++ log lines (so Python
    tracebacks, our error lines, tqdm bars and subprocess messages still appear, in order); undone at exit."""
    import atexit
    import threading

    global _filtering
    if _filtering:
        return
    _filtering = True
    sys.stderr.flush()
    real = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def forward(data: bytes) -> None:
        try:
            os.write(real, data)
        except OSError:  # the terminal went away: keep draining, or writers to fd 2 would block on a full pipe
            pass

    def pump() -> None:
        pending = b""
        while chunk := os.read(read_fd, 1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not _NATIVE_LOG_LINE.match(line))
            if pending and (pending[:1] not in b"IWE " or len(pending) > 4096):  # cannot become a log line: now
                out, pending = out + pending, b""
            if out:
                forward(out)
        if pending and not _NATIVE_LOG_LINE.match(pending):
            forward(pending)

    thread = threading.Thread(target=pump, name="mt3-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes our write end of the pipe: the reader drains it and stops
        thread.join(timeout=1.0)

    atexit.register(restore)


def _stdout_closed() -> int:
    """The reader of our stdout went away (`mt3 score --json A B | head -c 600`): stop without a traceback, and point
    stdout at /dev/null so the interpreter's final flush does not raise again. 141 = 128 + SIGPIPE, as a shell
    reports a tool killed by the broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def normalize_flag_spelling(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--batch_size` -> `--batch-size` (and `--gin-file` -> `--gin_file`) when only the other spelling is a flag of
    `parser`, so both styles work everywhere without doubling every flag in --help."""
    known = {opt for action in parser._actions for opt in action.option_strings}  # argparse has no public listing
    out = []
    for arg in argv:
        if arg == "--":
            out.extend(argv[len(out):])
            break
        flag, sep, value = arg.partition("=")
        if flag.startswith("--") and flag not in known:
            for other in (flag.replace("_", "-"), "--" + flag[2:].replace("-", "_")):
                if other in known:
                    flag = other
                    break
        out.append(flag + sep + value)
    return out


def build_parser() -> argparse.ArgumentParser:
    from mt3 import __version__

    parser = argparse.ArgumentParser(
        prog="mt3",
        description="Automatic music transcription: audio in, multitrack MIDI out (MT3 in JAX/Flax).",
    )
    parser.add_argument("--version", action="version", version=f"mt3 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    console = argv is None  # the real command line (not a test calling main): filter native log lines on fd 2
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])  # prints help / --version / a usage error and exits
        return 2
    name, rest = argv[0], argv[1:]
    verbose = VERBOSE_FLAG in rest
    rest = [arg for arg in rest if arg != VERBOSE_FLAG]
    quiet_native_logging(verbose, filter_stderr=console)
    module = importlib.import_module(f"mt3.commands.{COMMANDS[name][0]}")
    sub_parser = argparse.ArgumentParser(prog=f"mt3 {name}", description=COMMANDS[name][1],
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sub_parser)
    sub_parser.add_argument(VERBOSE_FLAG, action="store_true",
                            help="show TensorFlow/XLA/absl log lines (hidden by default)")
    if sub_parser.get_default("gin_bindings") is not None:  # the command takes gin: say so in its --help and usage
        sub_parser.epilog = GIN_HELP + (sub_parser.epilog or "")
        sub_parser.usage = sub_parser.format_usage().removeprefix("usage: ").rstrip("\n") + GIN_USAGE
    rest, gin_bindings = split_gin_bindings(rest)
    args = sub_parser.parse_args(normalize_flag_spelling(rest, sub_parser))
    if gin_bindings and not hasattr(args, "gin_bindings"):
        sub_parser.error("this command takes no --gin.NAME=VALUE bindings")
    if hasattr(args, "gin_bindings"):
        args.gin_bindings = list(args.gin_bindings or []) + gin_bindings

    from mt3.errors import InputError

    try:
        return int(module.main(args) or 0)
    except InputError as err:
        print(f"mt3 {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mt3 {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()


if __name__ == "__main__":
    sys.exit(main())
