"""The seqio Task and Mixture registry: MT3's task names and mixtures over prepared datasets.

Adding a dataset is a `DatasetConfig` (mt3/datasets.py) plus one `add_transcription_task_to_registry` call (and a gin
file that names its task). Task names follow MT3: `{dataset}_{notes|onsets}[_ties][_{vocab abbrev}]_{suffix}`, e.g.
`slakh_notes_ties_vb1_train`, `maestrov3_notes_validation`. Every prefix gets:

  `{prefix}_train`          splits 'train' (random crops, MT3's training stream) and 'eval' (the dataset's
                            train-eval split, same preprocessing, for teacher-forced eval during training);
  `{prefix}_{suffix}`       one per inference-eval split (split 'eval': consecutive segments, full-track references);
  `{prefix}_eval`           a mixture of the inference-eval tasks.

Mixtures: `mega_notes_ties_vb1_train` (MT3's six datasets, temperature-scaled rates), `piano_notes_train` (piano-only,
ismir2021 vocabulary), `local_mix_notes_ties_vb1_train` (the local corpus; what the CPU quickstart trains on). Any
mixture of `{prefix}_train` tasks trains on the indexed sampler with its seqio rates, whoever registered it
(`add_mixture` here, a gin `MIXTURES` macro, or a user's `seqio.MixtureRegistry.add`): seqio's registry is the one list
of what exists, and each task's source carries what the sampler needs (`TranscriptionInfo`). `mt3.registry` reads it
for every command.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import seqio

from mt3 import datasets, preprocessors, spectrograms, vocabularies
from mt3.data import track_examples
from mt3.data.feature_converters import ContinuousInputsEncDecFeatureConverter
from mt3.errors import InputError

MIXING_TEMPERATURE = 10 / 3  # MT3 / paper §3.3: rate ∝ n^(1/T) = n^0.3


@dataclasses.dataclass(frozen=True)
class TranscriptionInfo:
    """What a registered transcription task reads, kept on its seqio source (`task.source.transcription`), so that the
    indexed sampler, `mt3 eval` and `mt3 tasks` find it from seqio's registry alone.

    kind: 'train' (the `{prefix}_train` task: random crops; its 'eval' split is the train-eval split) or 'eval' (an
    inference-eval task: consecutive segments of `eval_split`). standard_tokenizer: False when the task was registered
    with another `tokenize_fn`, which only the seqio pipeline runs."""

    dataset_config: datasets.DatasetConfig
    tokenize_config: track_examples.TokenizeConfig
    skip_too_long: bool
    kind: str
    eval_split: str
    standard_tokenizer: bool = True


def task_prefix(dataset_name: str, *, vocab_config: vocabularies.VocabularyConfig, onsets_only: bool,
                include_ties: bool, spectrogram_config: spectrograms.SpectrogramConfig) -> str:
    parts = [dataset_name, "onsets" if onsets_only else "notes"]
    if include_ties:
        parts.append("ties")
    for abbrev in (spectrogram_config.abbrev, vocab_config.abbrev):
        if abbrev:
            parts.append(abbrev)
    return "_".join(parts)


def _output_features(vocab_config: vocabularies.VocabularyConfig):
    import tensorflow as tf

    vocab = vocabularies.vocabulary_from_codec(vocabularies.build_codec(vocab_config))
    return {
        "inputs": seqio.ContinuousFeature(dtype=tf.float32, rank=2),
        # EOS is appended by the preprocessor (as an id) so numpy code and seqio agree on the target layout.
        "targets": seqio.Feature(vocabulary=vocab, add_eos=False),
    }


def add_transcription_task_to_registry(
    dataset_config: datasets.DatasetConfig,
    spectrogram_config: spectrograms.SpectrogramConfig,
    vocab_config: vocabularies.VocabularyConfig,
    tokenize_fn=preprocessors.tokenize_transcription_example,
    onsets_only: bool = False,
    include_ties: bool = True,
    skip_too_long: bool = False,
    program_granularity: str | None = None,
    mt3_compat: bool = False,
) -> str:
    """Registers the train task, the inference-eval tasks and the `_eval` mixture of one dataset; returns the prefix.

    `program_granularity` defaults as MT3 trains: 'full' with multi-instrument vocabularies, 'flat' (program tokens
    dropped) for the 127-velocity-bin piano vocabulary. Same-pitch overlaps are trimmed where the dataset config says
    (MT3: Slakh and Cerberus4 only). `mt3_compat` registers `{prefix}_mt3compat_*` tasks whose targets reproduce MT3's
    tie section after a track's last note event too (docs/architecture.md, "MT3 parity").
    """
    if program_granularity is None:
        program_granularity = "flat" if vocab_config.num_velocity_bins > 1 else "full"
    prefix = task_prefix(dataset_config.name, vocab_config=vocab_config, onsets_only=onsets_only,
                         include_ties=include_ties, spectrogram_config=spectrogram_config)
    if mt3_compat:
        prefix += "_mt3compat"
    config = track_examples.TokenizeConfig(
        vocab_config=vocab_config, spectrogram_config=spectrogram_config, onsets_only=onsets_only,
        include_ties=include_ties, program_granularity=program_granularity,
        trim_overlapping_notes=dataset_config.trim_overlapping_notes, mt3_compat=mt3_compat)
    output_features = _output_features(vocab_config)
    source = datasets.make_data_source(dataset_config)
    too_long = functools.partial(preprocessors.handle_too_long, skip=skip_too_long)
    standard = tokenize_fn is preprocessors.tokenize_transcription_example
    train_info = TranscriptionInfo(dataset_config, config, skip_too_long, "train", dataset_config.train_eval_split,
                                   standard)
    if _already_registered(f"{prefix}_train", train_info):
        return prefix

    def _split_mapped_source(split_map: dict[str, str], info: TranscriptionInfo):
        return _RenamedSplitSource(source, split_map, info)

    train_preprocessors = [
        seqio.CacheDatasetPlaceholder(),  # random crops run after it, so repeats draw new crops each epoch
        functools.partial(tokenize_fn, config=config, split_kind="train"),
        too_long,
    ]
    # MT3 trims same-pitch overlaps only when it builds training data: eval targets keep the dataset's notes.
    eval_preprocessors = [
        seqio.CacheDatasetPlaceholder(),
        functools.partial(tokenize_fn, config=dataclasses.replace(config, trim_overlapping_notes=False),
                          split_kind="eval"),
    ]

    # As in MT3, the train task's 'eval' split is the train-eval split under the same (random-crop) preprocessing:
    # teacher-forced eval during training sees crops like training does, deterministic for a seed.
    seqio.TaskRegistry.add(
        f"{prefix}_train",
        source=_split_mapped_source({"train": dataset_config.train_split, "eval": dataset_config.train_eval_split},
                                    train_info),
        output_features=output_features,
        preprocessors=train_preprocessors,
        shuffle_buffer_size=256,
    )
    eval_task_names = []
    for split in dataset_config.infer_eval_splits:
        name = f"{prefix}_{split.suffix}"
        seqio.TaskRegistry.add(
            name,
            source=_split_mapped_source({"eval": split.name}, dataclasses.replace(train_info, kind="eval",
                                                                                  eval_split=split.name)),
            output_features=output_features,
            preprocessors=eval_preprocessors,
        )
        if split.include_in_mixture:
            eval_task_names.append(name)
    if eval_task_names:
        seqio.MixtureRegistry.add(f"{prefix}_eval", [(n, 1.0) for n in eval_task_names])
    return prefix


class _RenamedSplitSource(seqio.DataSource):
    """Exposes a source's splits under task split names ('train'/'eval' -> the dataset's own split names)."""

    def __init__(self, source, split_map: dict[str, str], transcription: TranscriptionInfo | None = None):
        self._source = source
        self._split_map = dict(split_map)
        self.transcription = transcription
        super().__init__(splits=tuple(split_map), num_input_examples=None, caching_permitted=True)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split):
        return self._source.list_shards(self._split_map[split])

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
        return self._source.get_dataset(self._split_map[split], shuffle=shuffle, seed=seed, shard_info=shard_info)

    def dataset_split(self, split: str) -> str:
        return self._split_map[split]


def _already_registered(train_task: str, info: TranscriptionInfo) -> bool:
    """True when `train_task` exists for the same dataset and tokenization (registering twice, e.g. a config added to
    `datasets.ALL_CONFIGS` and registered by hand too, is then a no-op); one InputError line when the name is taken by
    a different dataset or tokenization."""
    if train_task not in seqio.TaskRegistry.names():
        return False
    existing = getattr(seqio.TaskRegistry.get(train_task).source, "transcription", None)
    if existing == info:
        return True
    raise InputError(None, f"task {train_task!r} is already registered for another dataset or tokenization "
                           f"({existing.dataset_config if existing else 'not by add_transcription_task_to_registry'}); "
                           f"give the new DatasetConfig another name")


def transcription_info(task) -> TranscriptionInfo | None:
    """The TranscriptionInfo of a seqio Task registered by `add_transcription_task_to_registry`, else None."""
    return getattr(getattr(task, "source", None), "transcription", None)


def temperature_rate(dataset_config: datasets.DatasetConfig, temperature: float = MIXING_TEMPERATURE):
    """MT3's mixing rate (a seqio rate function): (number of 16 s cached examples)^(1/T), counted from the manifest's
    hours of the prepared train split when the rate is read (so `MT3_DATA_DIR` / `DATA_DIR` can be set after import)."""
    if not temperature or temperature <= 0:
        raise ValueError(f"mixing temperature must be > 0, got {temperature!r}")

    def rate(task) -> float:
        hours = datasets.prepared_hours(dataset_config, dataset_config.train_split) or 0.0
        examples = max(hours * 3600.0 / 16.0, 1.0)
        return examples ** (1.0 / temperature)

    rate.temperature = temperature  # shown by `mt3 tasks`
    return rate


def add_mixture(name: str, rates: Sequence[tuple[str, float]] | None = None, *, tasks: Sequence[str] = (),
                temperature: float | None = None) -> str:
    """Registers a seqio mixture of transcription tasks: explicit rates `[(task, rate), ...]` (relative numbers of
    examples, seqio's meaning) or MT3's temperature rule over `tasks` (`temperature_rate`). A mixture added
    straight with `seqio.MixtureRegistry.add` is equivalent; this only adds the temperature rule and one-line errors."""
    if (rates is None) == (not tasks):
        raise InputError(None, f"mixture {name!r}: give either rates [(task, rate), ...] or tasks with a temperature")
    entries: list = []
    if rates is not None:
        for task, rate in rates:
            if not isinstance(rate, int | float) or isinstance(rate, bool) or rate < 0:
                raise InputError(None, f"mixture {name!r}: rate of {task!r} must be a number >= 0, got {rate!r}")
            entries.append((_known_task(name, task), float(rate)))
    else:
        for task in tasks:
            info = transcription_info(seqio.TaskRegistry.get(_known_task(name, task)))
            if info is None:
                raise InputError(None, f"mixture {name!r}: a temperature needs transcription tasks; {task!r} is "
                                       f"not one")
            entries.append((task, temperature_rate(info.dataset_config, temperature or MIXING_TEMPERATURE)))
    seqio.MixtureRegistry.add(name, entries)
    return name


def _known_task(mixture: str, task: str) -> str:
    names = set(seqio.TaskRegistry.names())
    if task not in names:
        import difflib

        close = difflib.get_close_matches(task, sorted(names), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (`mt3 tasks` lists them)"
        raise InputError(None, f"mixture {mixture!r}: unknown task {task!r}{hint}")
    return task


# ---------------------------------------------------------------------------------------------------------------
# Registrations (MT3's choices)
# ---------------------------------------------------------------------------------------------------------------

SPECTROGRAM_CONFIG = spectrograms.SpectrogramConfig()
MT3_VOCAB = vocabularies.MT3_VOCAB_CONFIG  # 1 velocity bin
PIANO_VOCAB = vocabularies.ISMIR2021_VOCAB_CONFIG  # 127 velocity bins

# ismir2021: MAESTRO v3 with velocities, no ties, programs dropped.
_MAESTRO_PIANO = add_transcription_task_to_registry(
    datasets.MAESTROV3_CONFIG, SPECTROGRAM_CONFIG, PIANO_VOCAB, include_ties=False)
_MT3_PREFIXES = {
    cfg.name: add_transcription_task_to_registry(cfg, SPECTROGRAM_CONFIG, MT3_VOCAB, include_ties=True)
    for cfg in datasets.ALL_CONFIGS
}
_MEGA = [datasets.MAESTROV3_CONFIG, datasets.GUITARSET_CONFIG, datasets.URMP_CONFIG, datasets.MUSICNET_CONFIG,
         datasets.CERBERUS4_CONFIG, datasets.SLAKH_CONFIG]

add_mixture("mega_notes_ties_vb1_train", tasks=[f"{_MT3_PREFIXES[c.name]}_train" for c in _MEGA],
            temperature=MIXING_TEMPERATURE)
# MT3's targets exactly, its end-of-track tie section included: mega_notes_ties_vb1_mt3compat_train
add_mixture("mega_notes_ties_vb1_mt3compat_train", tasks=[
    add_transcription_task_to_registry(c, SPECTROGRAM_CONFIG, MT3_VOCAB, include_ties=True, mt3_compat=True)
    + "_train" for c in _MEGA], temperature=MIXING_TEMPERATURE)
seqio.MixtureRegistry.add(
    "mega_notes_ties_vb1_eval",
    [(f"{_MT3_PREFIXES[c.name]}_validation", temperature_rate(c)) for c in _MEGA])
add_mixture("piano_notes_train", tasks=[f"{_MAESTRO_PIANO}_train"], temperature=MIXING_TEMPERATURE)
add_mixture("local_mix_notes_ties_vb1_train", tasks=[f"{_MT3_PREFIXES['local']}_train"],
            temperature=MIXING_TEMPERATURE)
seqio.MixtureRegistry.add("local_mix_notes_ties_vb1_eval", [(f"{_MT3_PREFIXES['local']}_validation", 1.0)])


# ---------------------------------------------------------------------------------------------------------------
# Datasets that register themselves: `mt3 prepare-data pairs --out DATA_DIR/NAME` (your own recordings)
# ---------------------------------------------------------------------------------------------------------------

_PREPARED: dict[str, datasets.DatasetConfig] = {}


def register_prepared_datasets(data_dir: str | None = None) -> list[str]:
    """Registers MT3's tasks for every dataset `datasets.discover_prepared` finds under the data dir, as the local
    corpus gets them: `NAME_notes_ties_vb1_{train,validation,test}` and the `NAME_notes_ties_vb1_eval` mixture, so a
    folder of recordings trains, evaluates and mixes by name with no Python written. Returns the prefixes this call
    registered.

    Runs when this module is imported, for $MT3_DATA_DIR (else ./data/prepared); a command whose data dir is known
    only later (gin `DATA_DIR`, `--data-dir`) calls it again with that dir. A dataset already registered is kept; one
    whose task names are taken by other tasks or mixtures is skipped with a warning naming the folder."""
    import logging

    registered = []
    for config in datasets.discover_prepared(data_dir):
        if config.name in _PREPARED:
            continue
        prefix = task_prefix(config.name, vocab_config=MT3_VOCAB, onsets_only=False, include_ties=True,
                             spectrogram_config=SPECTROGRAM_CONFIG)
        names = [f"{prefix}_train", f"{prefix}_eval", *(f"{prefix}_{s.suffix}" for s in config.infer_eval_splits)]
        taken = [n for n in names if n in seqio.TaskRegistry.names() or n in seqio.MixtureRegistry.names()]
        if taken:
            logging.getLogger("mt3.tasks").warning("prepared dataset %s not registered: %r is already registered",
                                                   config.path(data_dir), taken[0])
            continue
        add_transcription_task_to_registry(config, SPECTROGRAM_CONFIG, MT3_VOCAB, include_ties=True)
        _PREPARED[config.name] = config
        registered.append(prefix)
    return registered


register_prepared_datasets()


def get_dataset(mixture_or_task_name: str, *, task_feature_lengths: dict[str, int], split: str, batch_size: int,
                shuffle: bool = True, seed: int | None = 0, shard_id: int = 0, num_shards: int = 1,
                num_epochs: int | None = None, data_dir: str | None = None, drop_remainder: bool = True):
    """Batched model features for the trainer: deterministic for a seed, so exact resume = rebuild + `.skip(n)`."""
    import tensorflow as tf

    with datasets.data_dir_override(data_dir):
        ds = seqio.get_dataset(
            mixture_or_task_name,
            task_feature_lengths=task_feature_lengths,
            feature_converter=ContinuousInputsEncDecFeatureConverter(pack=False),
            dataset_split=split,
            shuffle=shuffle,
            num_epochs=num_epochs,
            shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None,
            seed=seed,
            use_cached=False,
            verbose=False,
        )
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
