"""Statistics of a task or mixture read through the pipeline training reads — the first tool to run on a new dataset.

A training task or mixture is read by the indexed sampler exactly as `mt3 train` reads it (same seed, blocks, crops and
mixture rates), so the per-task shares shown are those training realises; other names (inference-eval tasks, tasks
registered with their own tokenizer) are read through seqio, and the output says which. Examples are taken before
padding/trimming, so over-long targets are visible; targets are decoded with the task's codec to report target-length
percentiles, programs and drums seen, and the fraction the feature converter would truncate.
"""

from __future__ import annotations

import collections

import numpy as np

DEFAULT_FEATURE_LENGTHS = {"inputs": 256, "targets": 1024}


def dataset_statistics(name: str, *, split: str = "train", num_examples: int = 100,
                       task_feature_lengths: dict[str, int] | None = None, seed: int = 0,
                       data_dir: str | None = None, block_tracks: int = 16, mix_config=None,
                       augment_config=None) -> dict:
    """Statistics of `num_examples` examples of `name`'s split; see the module docstring. mix_config/augment_config:
    what training's dataset config binds (gin/train.gin), so the examples are training's."""
    from mt3 import registry
    from mt3.errors import InputError

    lengths = dict(task_feature_lengths or DEFAULT_FEATURE_LENGTHS)
    registry.get(name)  # unknown: one line with the closest names
    indexed, note = None, None
    if split in ("train", "eval"):
        from mt3.training import input_pipeline

        try:
            indexed = input_pipeline.indexed_tasks(name, data_dir=data_dir)
        except InputError as err:
            note = err.problem
    if indexed is not None:
        stats = _indexed_statistics(indexed, split=split, num_examples=num_examples, lengths=lengths, seed=seed,
                                    data_dir=data_dir, block_tracks=block_tracks,
                                    options={"mix_config": mix_config, "augment_config": augment_config})
    else:
        stats = _seqio_statistics(name, split=split, num_examples=num_examples, lengths=lengths, seed=seed,
                                  data_dir=data_dir)
        stats["pipeline_note"] = note
    return {"name": name, "split": split, **stats}


class _Tally:
    """Running statistics of (inputs, target ids) examples."""

    def __init__(self):
        self.input_frames, self.target_lens, self.programs, self.drums, self.depth = [], [], collections.Counter(), 0, 0

    def add(self, inputs: np.ndarray, targets: np.ndarray, codec) -> None:
        from mt3 import vocabularies

        self.input_frames.append(int(inputs.shape[0]))
        self.depth = int(inputs.shape[1])
        targets = np.asarray(targets)
        self.target_lens.append(len(targets))
        program_range, drum_range = codec.event_type_range("program"), codec.event_type_range("drum")
        events = vocabularies.decode_tokens(targets, codec.num_classes)  # extra ids -> invalid, not programs
        events = events[events >= 0]
        self.programs.update((events[(events >= program_range[0]) & (events <= program_range[1])]
                              - program_range[0]).tolist())
        self.drums += int(np.sum((events >= drum_range[0]) & (events <= drum_range[1])))

    def result(self, name: str, lengths: dict, distinct_tracks: int | None) -> dict:
        from mt3.errors import InputError

        if not self.target_lens:
            raise InputError(None, f"{name} produced no examples")
        tl = np.array(self.target_lens)
        return {
            "num_examples": len(tl),
            "distinct_tracks": distinct_tracks,
            "task_feature_lengths": lengths,
            "inputs_shape": [int(np.max(self.input_frames)), self.depth],
            "inputs_frames_min": int(np.min(self.input_frames)),
            "target_length_percentiles": {str(p): float(np.percentile(tl, p)) for p in (5, 50, 90, 95, 99, 100)},
            "target_length_mean": float(tl.mean()),
            "fraction_targets_truncated": float(np.mean(tl > lengths["targets"])),
            "programs_seen": {str(k): v for k, v in sorted(self.programs.items())},
            "drum_events": self.drums,
        }


def _indexed_statistics(indexed, *, split, num_examples, lengths, seed, data_dir, block_tracks, options) -> dict:
    """Reads the first `num_examples` examples of the indexed sampler (training's stream for this seed) and reports
    each task's rate, block probability and share of examples: realised over the schedule's first 10,000 blocks (no
    data read) and in the examples read here."""
    from tqdm import tqdm

    from mt3.training import input_pipeline

    stream = input_pipeline.IndexedStream(indexed, split=split, task_feature_lengths=lengths, batch_size=1,
                                          seed=seed, data_dir=data_dir, block_tracks=block_tracks, workers=1,
                                          **options)
    tally, read, tracks = _Tally(), [0] * len(indexed), set()
    with tqdm(total=num_examples, desc=f"reading {split} (indexed sampler)") as bar:
        for task, examples, located in stream.blocks():
            tracks.update(located)
            for inputs, targets, *_ in examples[:num_examples - sum(read)]:
                tally.add(inputs, targets, indexed[task].tokenize_config.codec)
                read[task] += 1
                bar.update(1)
            if sum(read) >= num_examples:
                break
    stream.close()
    shares = stream.mixture_summary()
    for row, count in zip(shares, read, strict=True):
        row.pop("emitted_examples"), row.pop("emitted_share"), row.pop("blocks_drawn")
        row["examples_read"] = count
        row["share_read"] = count / max(sum(read), 1)
    return {"pipeline": "indexed", **tally.result(f"{split} split", lengths, len(tracks)), "tasks": shares}


def _seqio_statistics(name, *, split, num_examples, lengths, seed, data_dir) -> dict:
    """The seqio pipeline's task-level examples (inference-eval tasks; names the indexed sampler cannot read)."""
    import seqio
    from tqdm import tqdm

    from mt3 import datasets, vocabularies

    provider = seqio.get_mixture_or_task(name)
    with datasets.data_dir_override(data_dir):
        ds = provider.get_dataset(lengths, split=split, shuffle=True, seed=seed, num_epochs=None,
                                  trim_output_features=False, use_cached=False)
    codec = vocabularies.build_codec(_vocab_config_for(provider.output_features["targets"].vocabulary))
    tally, ids = _Tally(), []
    for ex in tqdm(ds.take(num_examples).as_numpy_iterator(), total=num_examples, desc=f"reading {name}:{split}"):
        tally.add(ex["inputs"], ex["targets"], codec)
        if "id" in ex:  # tasks keep the track id; mixtures pass only the output features
            ids.append(ex["id"].decode())
    return {"pipeline": "seqio", **tally.result(f"{name}:{split}", lengths, len(set(ids)) if ids else None),
            "tasks": None}


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
    table.add_row("pipeline", stats.get("pipeline") or "-")
    console = Console(width=120, record=True)
    with console.capture() as capture:
        console.print(table)
        if stats.get("tasks"):
            shares = Table(title="per task: rate and share of examples (as the indexed sampler draws them)")
            for column in ("task", "rate", "rate share", "block p", "examples/block", "realised share",
                           "read", "share read"):
                shares.add_column(column)
            for row in stats["tasks"]:
                shares.add_row(row["task"], f"{row['rate']:.4g}", f"{row['rate_share']:.3f}",
                               f"{row['block_probability']:.3f}", f"{row['examples_per_block']:.1f}",
                               f"{row['realised_share']:.3f}", str(row["examples_read"]), f"{row['share_read']:.3f}")
            console.print(shares)
        if stats.get("pipeline_note"):
            console.print(f"read through seqio: {stats['pipeline_note']}")
    return capture.get()
