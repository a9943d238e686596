"""Dataset converters: each dataset's native on-disk layout -> the records of `mt3.data.records`.

Every converter module `mt3.converters.<name>` follows one protocol, so `mt3 prepare-data` (`base.prepare_dataset`)
drives them all the same way (parallel workers, progress bar, `--skip-bad`, atomic shards, resume):

    NAME: str                                   # dataset name written into records, e.g. "slakh"
    SPLITS: tuple[str, ...]                     # splits it produces, MT3's choices
    def list_tracks(root: Path) -> dict[str, list[TrackSource]]
        # walks the native layout; raises InputError(path, problem) if the layout is not recognisable
    def load_track(source: TrackSource) -> list[TrackRecord]
        # reads one source (audio resampled to 16 kHz mono + labels as a NoteSequence); raises InputError naming the
        # offending file. A list because one source may yield several records (Cerberus4 stem combinations).

Optional: `manifest_fields(sources) -> dict` (recorded in each split's manifest, checked on resume) and
`check_out(out: Path)` (refuses an --out the converter cannot use; `pairs` names its tasks after the folder).

`TrackSource` is any picklable object with an `id: str` attribute (a small frozen dataclass per converter).
"""

# dataset name (as typed on the command line) -> module
CONVERTERS: dict[str, str] = {
    "maestro": "mt3.converters.maestro",
    "slakh": "mt3.converters.slakh",
    "cerberus4": "mt3.converters.cerberus4",
    "musicnet": "mt3.converters.musicnet",
    "guitarset": "mt3.converters.guitarset",
    "urmp": "mt3.converters.urmp",
    "pairs": "mt3.converters.pairs",  # your own recordings: audio files beside MIDI files of the same stem
}
