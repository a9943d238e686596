"""`mt3 transcribe AUDIO_OR_DIR [...] -o OUT_DIR|- [--checkpoint DIR] [--png] [--json] [--csv] [--sonify]
[--overwrite | --skip-existing] [--min-note-ms MS] [--min-pitch P] [--max-pitch P] [--midi-tempo QPM]`.

Thin: `mt3.transcription.transcribe_files` does the work (and documents the output layout). Every file
that cannot be read gets one error line while the others go on; the exit code is 2 if any file failed.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="AUDIO_OR_DIR",
                        help="audio files (wav/flac/mp3/ogg/...) or directories (expanded to their audio files)")
    parser.add_argument("-o", "--output-dir", required=True, metavar="OUT_DIR",
                        help="directory the outputs go to (created if missing; see 'Output names' below); '-' writes "
                             "the MIDI file of a single input to stdout")
    parser.add_argument("--checkpoint", default=None, metavar="DIR",
                        help="model dir from `mt3 train` (default: the bundled model, else runs/local_tiny)")
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="extra gin file read after the model dir's config.gin and gin/infer.gin (repeatable)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="segments decoded together (default: INFER_BATCH_SIZE from gin, 32)")
    parser.add_argument("--png", action="store_true", help="also write NAME.png, a piano roll coloured by instrument")
    parser.add_argument("--json", action="store_true", help="also write NAME.notes.json (one object per note)")
    parser.add_argument("--csv", action="store_true",
                        help="also write NAME.notes.csv (one row per note; is_drum is 0 or 1)")
    parser.add_argument("--sonify", action="store_true",
                        help="also write NAME.sonified.wav: the MIDI rendered with fluidsynth and a General MIDI "
                             "soundfont when installed, else a simple sine synth")
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="C",
                        help="drop notes whose confidence is below C (0..1; default 0: keep all). A note's confidence "
                             "is the decoder's probability of its onset tokens (time, program, velocity, pitch: their "
                             "product); --json/--csv carry it per note. Precision at each threshold: "
                             "docs/confidence.md")
    parser.add_argument("--decode-mask", choices=("none", "invalid", "invalid_skip", "note_state"), default="none",
                        help="mask, at each decoding step, tokens the notes decoded so far make invalid: invalid = "
                             "what the note decoder would reject (e.g. the end of a note that is not sounding); "
                             "invalid_skip = the same, but a refused pitch is not replaced by another pitch; "
                             "note_state = invalid, and no onset of a note already sounding (default none, as MT3). "
                             "Measured: docs/recipe_study.md, 'Decoding that cannot emit invalid events'")
    parser.add_argument("--decoder-runtime", choices=("auto", "xla", "onnxruntime"), default="auto",
                        help="where the greedy decoder's steps run: onnxruntime (the step as one ONNX graph: "
                             "2-3x less CPU per step, nothing traced per shape; float32 sums in another order), xla, "
                             "or auto (default: onnxruntime for greedy decoding on the CPU without --decode-mask, "
                             "else xla). Measured: docs/decoding_speed.md")
    add_consistency_arguments(parser)
    notes = parser.add_argument_group("notes written (every output holds the same notes; drums are never filtered)")
    notes.add_argument("--min-note-ms", type=float, default=0.0, metavar="MS",
                       help="drop pitched notes shorter than MS milliseconds (default 0: keep all)")
    notes.add_argument("--min-pitch", type=parse_pitch, default=0, metavar="P",
                       help="drop pitched notes below P: a MIDI number (36), a note name (C2, F#3) or a frequency "
                            "(65.4Hz, the lowest pitch at or above it)")
    notes.add_argument("--max-pitch", type=parse_pitch, default=127, metavar="P",
                       help="drop pitched notes above P (as --min-pitch; a frequency gives the highest pitch at or "
                            "below it)")
    notes.add_argument("--midi-tempo", type=float, default=120.0, metavar="QPM",
                       help="tempo written to the MIDI file, for a DAW's beat grid (default 120; note times in "
                            "seconds do not change). No pitch bends are written: the model's vocabulary has none, so "
                            "every note is on the semitone grid")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    existing.add_argument("--skip-existing", action="store_true",
                          help="transcribe only inputs with a missing output and write only what is missing (a "
                               "rerun of an interrupted batch); exit code 0 when nothing failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(gin_bindings=[])
    parser.epilog = (parser.epilog or "") + OUTPUT_NAMES_HELP


OUTPUT_NAMES_HELP = """
Output names (nothing is ever written over an input, or over another input's output):
  files in a directory argument keep their path relative to it:
    mt3 transcribe slakh/ -o out               slakh/Track00001/mix.flac -> out/Track00001/mix.mid
  file arguments keep their path relative to the deepest directory holding all of them:
    mt3 transcribe song.wav -o out             -> out/song.mid
    mt3 transcribe slakh/Track*/mix.flac -o out -> out/Track00001/mix.mid, out/Track00002/mix.mid, ...
  inputs that differ only in their extension keep it: song.mp3, song.ogg -> out/song.mp3.mid, out/song.ogg.mid
  beside NAME.mid: NAME.png, NAME.notes.json, NAME.notes.csv, NAME.sonified.wav (--png, --json, --csv, --sonify)
Directories: every format the loader reads (wav, flac, mp3, ogg/oga/opus, aiff, au, caf, w64, m4a/aac/mp4/wma/webm);
  other files, and the tool's own NAME.sonified.wav, are skipped and counted in one line.
A file's outputs appear together or not at all; -o and --batch-size are checked before the model loads.
Silence and very short files are valid input: zero notes (with a warning line), exit code 0; a very quiet recording
  (peak below -40 dBFS) gets a warning line saying what the model hears: a model that normalises its input (the
  bundled one) hears it raised to its training level, except below -80 dBFS, which it treats as silence.
The MIDI file: one named track per instrument (its General MIDI name), each pitched program on a channel of its own,
  drums on channel 10; two notes of one pitch never sound at once on a channel (a later onset ends the earlier note;
  onsets within 1 ms are one note); more than 15 pitched programs are merged into their GM family (a warning line).
  Velocity is the model's, or 100 for a model with one velocity bin.
Each file's line counts invalid and dropped events: tokens the decoder could not use. Invalid: an event that makes no
  sense where it stands (e.g. the end of a note that is not sounding); dropped: events timed past the end of their
  segment. A few are normal; many mean the model is unsure of this audio. The last line sums up the run (files
  transcribed, skipped, failed; notes; seconds of audio and of wall time).
"""


def main(args: argparse.Namespace) -> int:
    from mt3 import allocator
    from mt3.transcription import transcribe_files

    allocator.release_large_buffers()  # freed KV caches go back to the OS (docs/decoding_speed.md, Peak memory)

    failures = transcribe_files(
        args.inputs, args.output_dir, checkpoint=args.checkpoint, gin_files=args.gin_file,
        gin_bindings=[*args.gin_bindings, *consistency_bindings(args),
                      *confidence_bindings(args), *decode_mask_bindings(args), *runtime_bindings(args)], step=args.step,
        batch_size=args.batch_size,
        png=args.png, notes_json=args.json, notes_csv=args.csv, sonify_wav=args.sonify, overwrite=args.overwrite,
        skip_existing=args.skip_existing, note_filter=note_filter(args), midi_qpm=args.midi_tempo,
        progress=not args.no_progress)
    return 2 if failures else 0


def parse_pitch(text: str) -> float:
    """'60', 'C4', 'F#3', 'Bb2' or '440Hz' -> a MIDI pitch (argparse type; C4 = 60). A frequency is returned unrounded
    as a float pitch so each bound can round it inward (`note_filter`)."""
    import pretty_midi

    value = text.strip()
    try:
        if value.lower().endswith("hz"):
            hz = float(value[:-2])
            if not 8.0 <= hz <= 13000.0:
                raise ValueError
            return min(max(pretty_midi.hz_to_note_number(hz), 0.0), 127.0)
        if value.lstrip("-").isdigit():
            pitch = int(value)
        else:
            pitch = pretty_midi.note_name_to_number(value)
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pitch: give a MIDI number 0..127, a note name (C4 = 60, "
                                         "F#3, Bb2) or a frequency (440Hz, 8..13000)") from err
    if not 0 <= pitch <= 127:
        raise argparse.ArgumentTypeError(f"{text!r} is outside the MIDI pitch range 0..127 (C-1..G9)")
    return pitch


def note_filter(args: argparse.Namespace):
    """--min-note-ms/--min-pitch/--max-pitch as a `midi_io.NoteFilter` (a frequency bound rounds inward, within a
    twentieth of a semitone of a pitch counting as that pitch); InputError for an impossible range."""
    import math

    from mt3 import midi_io
    from mt3.errors import InputError

    low = float(args.min_pitch)
    high = float(args.max_pitch)
    low = round(low) if abs(low - round(low)) < 0.05 else math.ceil(low)
    high = round(high) if abs(high - round(high)) < 0.05 else math.floor(high)
    try:
        return midi_io.NoteFilter(min_note_ms=args.min_note_ms, min_pitch=int(low), max_pitch=int(high))
    except ValueError as err:
        raise InputError(None, f"--min-note-ms/--min-pitch/--max-pitch: {err}") from None


def confidence_bindings(args: argparse.Namespace) -> list[str]:
    """--min-confidence as a gin binding of inference.InferenceConfig (checked here: one line, before any load)."""
    from mt3.errors import InputError

    value = getattr(args, "min_confidence", 0.0) or 0.0
    if not 0.0 <= value < 1.0:
        raise InputError(None, f"--min-confidence must be in [0, 1), got {value:g}")
    return [f"inference.InferenceConfig.min_confidence = {value!r}"] if value else []


def decode_mask_bindings(args: argparse.Namespace) -> list[str]:
    """--decode-mask as a gin binding of inference.InferenceConfig (argparse has checked the choice)."""
    value = getattr(args, "decode_mask", "none") or "none"
    return [] if value == "none" else [f"inference.InferenceConfig.decode_mask = '{value}'"]


def runtime_bindings(args: argparse.Namespace) -> list[str]:
    """--decoder-runtime as a gin binding of inference.InferenceConfig (argparse has checked the choice)."""
    value = getattr(args, "decoder_runtime", "auto") or "auto"
    return [] if value == "auto" else [f"inference.InferenceConfig.decoder_runtime = '{value}'"]


def add_consistency_arguments(parser: argparse.ArgumentParser) -> None:
    """The instrument-consistency flags, shared by `mt3 transcribe` and `mt3 serve` (one set of names and meanings)."""
    parser.add_argument("--programs", default=None, metavar="P,P,...",
                        help="the GM programs playing (e.g. 0,33,40): every pitched note ends up in one of them; a "
                             "note of another program moves to the nearest allowed one (same GM family first, else "
                             "the nearest program number; drums unaffected). Each file's line says what moved. "
                             "Instrument consistency: docs/instrument_consistency.md")
    parser.add_argument("--programs-mode", choices=("move", "mask"), default=None,
                        help="how --programs applies: move (default) decodes freely and moves notes into the set; "
                             "mask forbids other programs in the decoder, which then drops notes it would have "
                             "given them (for a set you are sure of)")
    parser.add_argument("--two-pass-programs", action="store_true",
                        help="decode twice: the second pass may only use the programs the first pass found "
                             "(gin MIN_PROGRAM_SHARE of the pitched notes, default 0.05)")
    parser.add_argument("--reassign-programs", choices=("none", "family", "dominant"), default=None,
                        help="after decoding, move each note to the file's dominant program of its GM family "
                             "(family) or of the whole file (dominant)")


def consistency_bindings(args: argparse.Namespace) -> list[str]:
    """--programs / --two-pass-programs / --reassign-programs as gin bindings of inference.InferenceConfig."""
    from mt3 import program_consistency
    from mt3.errors import InputError

    bindings = []
    if getattr(args, "programs", None) is not None:
        try:
            programs = program_consistency.parse_programs(args.programs)
        except ValueError as err:
            raise InputError(None, str(err)) from None
        bindings.append(f"inference.InferenceConfig.programs = {list(programs)}")
    if getattr(args, "programs_mode", None):
        bindings.append(f"inference.InferenceConfig.programs_mode = '{args.programs_mode}'")
    if getattr(args, "two_pass_programs", False):
        bindings.append("inference.InferenceConfig.two_pass_programs = True")
    if getattr(args, "reassign_programs", None):
        bindings.append(f"inference.InferenceConfig.reassign_programs = '{args.reassign_programs}'")
    return bindings
