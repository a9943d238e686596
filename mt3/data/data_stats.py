"""Statistics of a task or mixture read through the real seqio pipeline — the first tool to run on a new dataset.

Reads task-level examples (before padding/trimming, so over-long targets are visible), decodes their targets with the
task's codec, and reports shapes, target-length percentiles, programs and drums seen, and the fraction of examples
whose targets the feature converter would truncate.
"""

from __future__ import annotations

import collections

import numpy as np

DEFAULT_FEATURE_LENGTHS = {"inputs": 256, "targets": 1024}


def dataset_statistics(name: str, *, split: str = "train", num_examples: int = 100,
                       task_feature_lengths: dict[str, int] | None = None, seed: int = 0,
                       data_dir: str | None = None) -> dict:
    import seqio

    from mt3 import datasets, tasks, vocabularies  # noqa: F401  (tasks registers the registry)
    from mt3.errors import InputError

    lengths = dict(task_feature_lengths or DEFAULT_FEATURE_LENGTHS)
    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError as err:
        raise InputError(None, f"unknown task or mixture {name!r} ({err})") from err
    with datasets.data_dir_override(data_dir):
        ds = provider.get_dataset(lengths, split=split, shuffle=True, seed=seed, num_epochs=None,
                                  trim_output_features=False, use_cached=False)
    vocab = provider.output_features["targets"].vocabulary
    codec = vocabularies.build_codec(_vocab_config_for(vocab))
    program_range = codec.event_type_range("program")
    drum_range = codec.event_type_range("drum")

    input_frames, target_lens, programs, drums, ids = [], [], collections.Counter(), 0, []
    from tqdm import tqdm

    for ex in tqdm(ds.take(num_examples).as_numpy_iterator(), total=num_examples, desc=f"reading {name}:{split}"):
        input_frames.append(ex["inputs"].shape[0])
        targets = np.asarray(ex["targets"])
        target_lens.append(len(targets))
        events = vocabularies.decode_tokens(targets, codec.num_classes)  # extra ids -> invalid, not programs
        events = events[events >= 0]
        programs.update((events[(events >= program_range[0]) & (events <= program_range[1])] - program_range[0])
                        .tolist())
        drums += int(np.sum((events >= drum_range[0]) & (events <= drum_range[1])))
        if "id" in ex:  # tasks keep the track id; mixtures pass only the output features
            ids.append(ex["id"].decode())
    if not target_lens:
        raise InputError(None, f"{name}:{split} produced no examples")
    tl = np.array(target_lens)
    return {
        "name": name,
        "split": split,
        "num_examples": len(tl),
        "distinct_tracks": len(set(ids)) if ids else None,
        "task_feature_lengths": lengths,
        "inputs_shape": [int(np.max(input_frames)), int(ex["inputs"].shape[1])],
        "inputs_frames_min": int(np.min(input_frames)),
        "target_length_percentiles": {str(p): float(np.percentile(tl, p)) for p in (5, 50, 90, 95, 99, 100)},
        "target_length_mean": float(tl.mean()),
        "fraction_targets_truncated": float(np.mean(tl > lengths["targets"])),
        "programs_seen": {str(k): v for k, v in sorted(programs.items())},
        "drum_events": drums,
    }


def _vocab_config_for(vocab):
    """The VocabularyConfig whose codec has this vocabulary's size (MT3 and ismir2021 presets differ in size)."""
    from mt3 import vocabularies

    for config in vocabularies.PRESETS.values():
        if vocabularies.build_codec(config).num_classes == vocab.vocab_size - vocabularies.NUM_SPECIAL_TOKENS - \
                vocabularies.DEFAULT_EXTRA_IDS:
            return config
    raise ValueError(f"no vocabulary preset has size {vocab.vocab_size}")


def format_statistics(stats: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    tracks = f", {stats['distinct_tracks']} tracks" if stats["distinct_tracks"] is not None else ""
    table = Table(title=f"{stats['name']} [{stats['split']}]: {stats['num_examples']} examples{tracks}")
    table.add_column("statistic")
    table.add_column("value")
    table.add_row("inputs shape (max)", str(stats["inputs_shape"]))
    table.add_row("inputs frames (min)", str(stats["inputs_frames_min"]))
    for p, v in stats["target_length_percentiles"].items():
        table.add_row(f"target length p{p}", f"{v:.0f}")
    table.add_row("target length mean", f"{stats['target_length_mean']:.1f}")
    table.add_row("fraction truncated", f"{stats['fraction_targets_truncated']:.3f} "
                                        f"(> {stats['task_feature_lengths']['targets']} tokens)")
    table.add_row("programs seen (events)", ", ".join(f"{k}:{v}" for k, v in stats["programs_seen"].items()) or "-")
    table.add_row("drum events", str(stats["drum_events"]))
    console = Console(width=120, record=True)
    with console.capture() as capture:
        console.print(table)
    return capture.get()
