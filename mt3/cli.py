"""The `mt3` console entry point.

Thin by design (as t5x's and basic-pitch's): parse flags, then call one library function. Subcommand modules are
imported only when chosen, so `mt3 --help` answers instantly without loading JAX or TensorFlow. Gin flags pass through
as T5X users type them: `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` (sugar for one binding).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under mt3.commands, one-line help). Order is the order `mt3 --help` lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("score", "Score an estimated MIDI against a reference MIDI (onset, onset+offset, multi-instrument F1)."),
    "tokens": ("tokens", "Tokenize a MIDI segment-wise with ties, decode, stitch and write the reconstruction."),
    "build-corpus": ("build_corpus", "Render music21 scores with fluidsynth into a Slakh2100-layout local corpus."),
    "prepare-data": ("prepare_data", "Convert a dataset from its native layout into sharded TFRecords + manifests."),
    "data-stats": ("data_stats", "Read examples of a task or mixture through the real pipeline and print statistics."),
    "train": ("train", "Train a model from gin configs (sharded over a JAX device mesh, resumable)."),
    "eval": ("eval", "Evaluate checkpoints on eval tasks: results.json, results.md and piano-roll PNGs."),
    "transcribe": ("transcribe", "Transcribe audio files to multitrack MIDI (+ optional PNG and notes JSON)."),
    "serve": ("serve", "Serve transcription over HTTP (upload page, POST /transcribe, GET /healthz)."),
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
Gin works here as in `mt3 train`: --gin_file=FILE reads another gin file (repeatable; searched in the working
directory, then the package's gin/; transcribe/eval/serve read it after the model dir's config.gin), and
--gin.NAME=VALUE binds one macro or parameter, e.g. --gin.INFER_BATCH_SIZE=8 or --gin.MAX_DECODE_LENGTH=512.
An unknown name or a value of the wrong type stops with one error line (exit 2).
Flags may be spelled with '-' or '_' (--batch-size or --batch_size).
"""


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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])  # prints help / --version / a usage error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"mt3.commands.{COMMANDS[name][0]}")
    sub_parser = argparse.ArgumentParser(prog=f"mt3 {name}", description=COMMANDS[name][1],
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sub_parser)
    if sub_parser.get_default("gin_bindings") is not None:  # the command takes gin: say so in its --help
        sub_parser.epilog = GIN_HELP + (sub_parser.epilog or "")
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


if __name__ == "__main__":
    sys.exit(main())
