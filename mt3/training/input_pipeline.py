"""Training input streams for `mt3 train`, each with a position that a checkpoint stores and a restart resumes from.

Three kinds (`DatasetConfig.pipeline` / `.source`):

- "indexed" (default for the registered transcription tasks): an index-based deterministic sampler. Each host takes
  its share of a split's records (record i with i % num_hosts == host); every epoch of a task is a seeded permutation
  of those records, cut into blocks of `block_tracks` records; a block's examples (one random crop per 2000-frame
  chunk, MT3's rule, or MT3-style audio mixes within the block) are produced by plain numpy code and emitted in a
  seeded order. The mixture's task for global block b is drawn from (seed, b) with the task rates. Everything is a pure
  function of (seed, task, epoch, block), so the position is (block, offset in block, blocks drawn per task): a few
  integers. A restart recomputes only the block it stopped in, so resume costs the same at step 10 and step 10^6.
  Records are read by byte offset (a header scan of each shard, no data read), without TensorFlow
  (`mt3.training.indexed_records`).
- "seqio": MT3's seqio pipeline (`mt3.tasks.get_dataset`), deterministic for a seed; resume rebuilds it and skips the
  batches consumed (time grows with the step). Checkpoints written before the indexed sampler existed resume this way.
- "synthetic": random batches, batch i a pure function of (seed, shard, i).

See docs/architecture.md, "Resume", for why an index-based sampler rather than tf.data iterator checkpointing.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np

from mt3.training.indexed_records import (
    IndexedTask,
    examples_per_track,
    host_records,
    indexed_tasks,
    read_record,
)

MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
PIPELINES = ("indexed", "seqio")
STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# Synthetic batches and the decoder-padding cut (shared by every stream)
# ---------------------------------------------------------------------------------------------------------------

def synthetic_batches(cfg, *, host_batch_size: int, shard_id: int, vocab_size: int,
                      input_depth: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Random batches with the contract's features: batch i depends only on (seed, shard_id, i), so skipping is free."""
    length, target_length = cfg.task_feature_lengths["inputs"], cfg.task_feature_lengths["targets"]
    index = start
    while cfg.num_epochs is None or index < cfg.num_epochs:  # one "epoch" = one batch for synthetic data
        rng = np.random.default_rng([cfg.seed or 0, shard_id, index])
        inputs = rng.normal(scale=0.1, size=(host_batch_size, length, input_depth)).astype(np.float32)
        lengths = rng.integers(1, target_length + 1, size=host_batch_size)
        targets = rng.integers(3, vocab_size, size=(host_batch_size, target_length)).astype(np.int32)
        positions = np.arange(target_length)[None]
        targets[positions == (lengths[:, None] - 1)] = 1  # EOS
        targets[positions >= lengths[:, None]] = 0
        decoder_inputs = np.concatenate([np.zeros((host_batch_size, 1), np.int32), targets[:, :-1]], axis=1)
        yield {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
               "decoder_target_tokens": targets, "decoder_loss_weights": (targets > 0).astype(np.float32)}
        index += 1


def trim_target_padding(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Cuts the decoder features to the batch's longest target rounded up to `multiple` (never longer than given).

    Exact: the cut columns are padding (loss weight 0, masked out of attention), so loss and gradients are unchanged."""
    targets = batch["decoder_target_tokens"]
    longest = int(np.max(np.nonzero(np.any(targets > 0, axis=0))[0], initial=-1)) + 1
    length = min(targets.shape[1], max(multiple, -(-longest // multiple) * multiple))
    decoder = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")
    return {k: (v[:, :length] if k in decoder else v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# The indexed stream
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IndexedPosition:
    """Where a host's indexed stream stands: the next example is number `offset` of global block `block`, and
    `task_blocks[t]` blocks of task t were drawn before `block`. Stored in checkpoints as a small JSON dict."""

    block: int = 0
    offset: int = 0
    task_blocks: tuple[int, ...] = ()

    def to_json(self) -> dict:
        return {"version": STATE_VERSION, "kind": "indexed", "block": self.block, "offset": self.offset,
                "task_blocks": list(self.task_blocks)}

    @classmethod
    def from_json(cls, obj: dict) -> IndexedPosition:
        if obj.get("kind") != "indexed" or obj.get("version") != STATE_VERSION:
            raise ValueError(f"not an indexed input-pipeline state: {obj!r}")
        return cls(int(obj["block"]), int(obj["offset"]), tuple(int(n) for n in obj["task_blocks"]))


def _words(*parts: int) -> list[int]:
    return [int(p) & 0xFFFFFFFF for p in parts]


def _task_of_block(seed: int, probabilities: np.ndarray, block: int) -> int:
    """The mixture's task of global block `block`: drawn from (seed, block) with the block probabilities."""
    if len(probabilities) == 1:
        return 0
    return int(np.random.default_rng(_words(seed, 0x5EED, block)).choice(len(probabilities), p=probabilities))


def _schedule(seed: int, probabilities: np.ndarray, position: IndexedPosition
              ) -> Iterator[tuple[int, int, int, tuple[int, ...]]]:
    """(global block, task, task block, task_blocks before it) from `position` on (a plain generator, holding no
    stream: the input workers' feeder thread runs it)."""
    counts = list(position.task_blocks)
    block = position.block
    while True:
        task = _task_of_block(seed, probabilities, block)
        before = tuple(counts)
        counts[task] += 1
        yield block, task, before[task], before
        block += 1


class IndexedStream:
    """Batches of model features from registered transcription tasks; `.position` is what a checkpoint stores.

    Blocks are computed ahead, in order, by a thread pool (`workers`; memory bounded by `workers + 2` blocks), or with
    `num_workers` > 0 by that many processes (`mt3.training.input_workers`; about 3 blocks per worker): the same
    batches and positions either way, since a block is a pure function of (seed, task, epoch, block).
    """

    def __init__(self, tasks: Sequence[IndexedTask], *, split: str, task_feature_lengths: dict, batch_size: int,
                 seed: int, shard_id: int = 0, num_shards: int = 1, num_epochs: int | None = None,
                 block_tracks: int = 16, data_dir=None, position: IndexedPosition | None = None,
                 workers: int | None = None, mix_config=None, augment_config=None,
                 target_length_multiple: int | None = None, shuffle: bool = True, frame_targets: bool = False,
                 num_workers: int = 0):
        if block_tracks < 1:
            raise ValueError(f"block_tracks must be >= 1, got {block_tracks}")
        if split != "train":  # eval targets keep same-pitch overlaps, as MT3's (only its training data is trimmed)
            tasks = [dataclasses.replace(t, tokenize_config=dataclasses.replace(
                t.tokenize_config, trim_overlapping_notes=False)) for t in tasks]
        self.tasks = list(tasks)
        self.input_length = int(task_feature_lengths["inputs"])
        self.target_length = int(task_feature_lengths["targets"])
        self.batch_size, self.seed, self.num_epochs, self.block_tracks = batch_size, int(seed or 0), num_epochs, \
            block_tracks
        self.records = [host_records(t, split, shard_id, num_shards, data_dir) for t in self.tasks]
        self.blocks_per_epoch = [-(-len(r) // block_tracks) for r in self.records]
        rates = np.array([max(t.rate, 0.0) for t in self.tasks], np.float64)
        self.rates = rates / rates.sum() if rates.sum() > 0 else np.full(len(rates), 1 / len(rates))
        # Rates count examples (seqio); the sampler draws blocks, whose sizes in examples differ between tasks.
        self.examples_per_block = np.array(
            [examples_per_track(t, split, data_dir) * len(r) / n if len(self.tasks) > 1 else 1.0
             for t, r, n in zip(self.tasks, self.records, self.blocks_per_epoch, strict=True)], np.float64)
        weights = self.rates / self.examples_per_block
        self.probabilities = weights / weights.sum()
        self.task_examples = [0] * len(self.tasks)  # examples this stream emitted per task (data-stats, run record)
        position = position or IndexedPosition(task_blocks=(0,) * len(self.tasks))
        if len(position.task_blocks) != len(self.tasks):
            raise ValueError(f"input-pipeline state has {len(position.task_blocks)} tasks, this stream "
                             f"{len(self.tasks)}")
        self.position = position
        self.batches = 0
        self._mix, self._augment, self._multiple = mix_config, augment_config, target_length_multiple
        self._shuffle = shuffle
        self._frame_targets = frame_targets  # piano rolls for the auxiliary encoder heads (mt3.data.frame_targets)
        self._closed = False
        self._workers = workers or max(1, min(4, os.cpu_count() or 1))
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.num_workers = num_workers  # > 0: blocks computed by that many processes instead of `workers` threads
        self._iterator = self._batches()

    # ----- pure functions of (seed, task, epoch, block) -----
    def _task_of_block(self, block: int) -> int:
        return _task_of_block(self.seed, self.probabilities, block)

    def block_records(self, task: int, task_block: int) -> tuple[int, list[tuple[str, int]]] | None:
        """(epoch, this block's records) of the task's `task_block`-th block; None past `num_epochs`."""
        epoch, index = divmod(task_block, self.blocks_per_epoch[task])
        if self.num_epochs is not None and epoch >= self.num_epochs:
            return None
        records = self.records[task]
        order = np.arange(len(records))
        if self._shuffle:
            order = np.random.default_rng(_words(self.seed, self.tasks[task].salt, epoch)).permutation(len(records))
        picked = order[index * self.block_tracks:(index + 1) * self.block_tracks]
        return epoch, [records[int(i)] for i in picked]

    def block_examples(self, task: int, task_block: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """The (inputs, target ids) examples of one block, in emission order (None past the last epoch)."""
        from mt3.data import augmentation, track_examples

        found = self.block_records(task, task_block)
        if found is None:
            return None
        epoch, located = found
        spec = self.tasks[task]
        config = spec.tokenize_config
        key = (self.seed, spec.salt, epoch, task_block)
        tracks = []
        for path, offset in located:
            if self._closed:  # the stream was closed (preemption): do not hold up the process exit
                return []
            record = read_record(path, offset)
            tracks.append(track_examples.tokenize_track(record.audio, record.sequence, config))
        examples: list[tuple[np.ndarray, np.ndarray]] = []
        if self._mix is not None and self._mix.enabled:
            from mt3 import mixing

            group = self._mix.records_per_group
            for g in range(0, len(tracks), group):
                rng = np.random.default_rng(_words(*key, 1, g))
                part = list(mixing.mixed_training_examples(tracks[g:g + group], config, self._mix,
                                                           self.input_length, rng))
                examples += augmentation.augment_examples(part, self._augment, np.array(_words(*key, 1, g)))
        else:
            for j, track in enumerate(tracks):
                rng = np.random.default_rng(_words(*key, 0, j))
                part = list(track_examples.training_examples(track, config, self.input_length, rng))
                examples += augmentation.augment_examples(part, self._augment, np.array(_words(*key, 0, j)))
        if spec.skip_too_long:
            examples = [e for e in examples if len(e[1]) <= self.target_length]
        if self._frame_targets:  # (inputs, ids, onset roll, frame roll), decoded from the untruncated ids
            from mt3.data import frame_targets

            fps = config.spectrogram_config.frames_per_second
            examples = [(x, y, *frame_targets.rolls_from_ids(y, len(x), config.codec, fps,
                                                             include_ties=config.include_ties)) for x, y in examples]
        if not self._shuffle:
            return examples
        order = np.random.default_rng(_words(*key, 2)).permutation(len(examples))
        return [examples[int(i)] for i in order]

    # ----- the stream -----
    def _schedule(self) -> Iterator[tuple[int, int, int, tuple[int, ...]]]:
        """(global block, task, task block, task_blocks before it) from the current position on."""
        return _schedule(self.seed, self.probabilities, self.position)

    def _examples(self) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], IndexedPosition, int]]:
        """Each example with the position after it and its task's index."""
        schedule = self._schedule()
        blocks = self._blocks_from_processes(schedule) if self.num_workers else self._blocks_from_threads(schedule)
        skip = self.position.offset
        try:
            for block, task, before, examples in blocks:
                if examples is None:  # this task ran out of epochs: the stream ends, as seqio's would
                    return
                for index in range(skip, len(examples)):
                    yield examples[index], IndexedPosition(block, index + 1, before), task
                skip = 0
        finally:
            blocks.close()  # now, not at garbage collection: stops the threads' or processes' work ahead

    def _blocks_from_threads(self, schedule) -> Iterator[tuple]:
        """(block, task, before, examples) in schedule order, computed ahead by the in-process thread pool."""
        # Not a `with` block: leaving the stream (a preemption) must not wait for blocks computed ahead.
        pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="mt3-data")
        pending: collections.deque = collections.deque()
        try:
            while True:
                while len(pending) < self._workers + 1:
                    block, task, task_block, before = next(schedule)
                    pending.append((block, task, before, pool.submit(self.block_examples, task, task_block)))
                block, task, before, future = pending.popleft()
                yield block, task, before, future.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _blocks_from_processes(self, schedule) -> Iterator[tuple]:
        """The same, computed by `num_workers` processes (`mt3.training.input_workers`), same order."""
        from mt3.training import input_workers

        requests = ((item, (item[1], item[2])) for item in schedule)  # key: (block, task, task block, before)
        self._process_map = input_workers.OrderedProcessMap(self.block_examples, requests, self.num_workers)
        try:
            for (block, task, _, before), examples in self._process_map:
                yield block, task, before, examples
        finally:
            self._process_map.close()

    def worker_pids(self) -> list[int]:
        """The process ids of the input workers (none with `num_workers` = 0 or before the first batch)."""
        process_map = getattr(self, "_process_map", None)
        return process_map.pids if process_map is not None else []

    def __getstate__(self) -> dict:
        """What a worker process needs to compute blocks: the stream's description, not its iterator or workers."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_iterator", "_process_map", "_drawn")}

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        examples = self._examples()
        while True:
            chunk = []
            for item in examples:
                chunk.append(item)
                if len(chunk) == self.batch_size:
                    break
            if len(chunk) < self.batch_size:  # drop_remainder, as seqio batches
                return
            batch = model_features([e for e, _, _ in chunk], self.input_length, self.target_length)
            if self._multiple:
                batch = trim_target_padding(batch, self._multiple)
            self.position, self.batches = chunk[-1][1], self.batches + 1
            for _, _, task in chunk:
                self.task_examples[task] += 1
            yield batch

    def blocks(self) -> Iterator[tuple[int, list, list[tuple[str, int]]]]:
        """(task index, examples before batching and truncation, records read) of each block from the current
        position on, in the order training reads them (`mt3 data-stats` reports what training sees)."""
        for _, task, task_block, _ in self._schedule():
            found = self.block_records(task, task_block)
            examples = self.block_examples(task, task_block)
            if found is None or examples is None:
                return
            yield task, examples, found[1]

    def mixture_summary(self, horizon_blocks: int = 10000) -> list[dict]:
        """Per task: its rate share, block probability, examples per block, and the shares of examples the sampler
        realises over the first `horizon_blocks` blocks of this seed (a pure function: no data is read) and in what
        this stream has emitted, and the blocks drawn so far (from the position)."""
        if getattr(self, "_drawn", (None,))[0] != horizon_blocks:  # a pure function of the seed: computed once
            self._drawn = (horizon_blocks, np.bincount([self._task_of_block(b) for b in range(horizon_blocks)],
                                                       minlength=len(self.tasks)))
        realised = self._drawn[1] * self.examples_per_block
        emitted = sum(self.task_examples)
        return [{"task": t.name, "rate": float(t.rate), "rate_share": float(self.rates[i]),
                 "block_probability": float(self.probabilities[i]),
                 "examples_per_block": float(self.examples_per_block[i]),
                 "realised_share": float(realised[i] / realised.sum()),
                 "emitted_examples": int(self.task_examples[i]),
                 "emitted_share": self.task_examples[i] / emitted if emitted else None,
                 "blocks_drawn": int(self.position.task_blocks[i]) if self.position.task_blocks else 0}
                for i, t in enumerate(self.tasks)]

    def close(self) -> None:
        """Stops the blocks being computed ahead (their threads return at the next record)."""
        self._closed = True
        self._iterator.close()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)


def model_features(examples: Sequence[tuple[np.ndarray, np.ndarray]], input_length: int,
                   target_length: int) -> dict[str, np.ndarray]:
    """(inputs, target ids) pairs -> the feature converter's batch: inputs zero-padded to L, targets trimmed/padded
    to T, decoder inputs = targets shifted right with 0 as BOS, loss weight 1 on non-pad targets (seqio's rules).
    Examples may carry two more items, onset and frame rolls [L', 128] (`mt3.data.frame_targets`): 'aux_onsets' and
    'aux_frames', zero-padded to L."""
    hop = examples[0][0].shape[-1]
    inputs = np.zeros((len(examples), input_length, hop), np.float32)
    targets = np.zeros((len(examples), target_length), np.int32)
    for i, (x, y, *_) in enumerate(examples):
        x, y = x[:input_length], y[:target_length]
        inputs[i, :len(x)] = x
        targets[i, :len(y)] = y
    decoder_inputs = np.concatenate([np.zeros((len(examples), 1), np.int32), targets[:, :-1]], axis=1)
    batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets,
             "decoder_loss_weights": (targets > 0).astype(np.float32)}
    if len(examples[0]) > 2:  # frame-target rolls (mt3.data.frame_targets.FEATURES), zero-padded to L like the inputs
        for k, key in enumerate(("aux_onsets", "aux_frames"), start=2):
            batch[key] = np.zeros((len(examples), input_length, examples[0][k].shape[-1]), np.uint8)
            for i, example in enumerate(examples):
                batch[key][i, :len(example[k])] = example[k][:input_length]
    return batch


# ---------------------------------------------------------------------------------------------------------------
# Choosing and opening a stream
# ---------------------------------------------------------------------------------------------------------------

def make_batch_iterator(cfg, *, host_batch_size: int, shard_id: int, num_shards: int, skip_batches: int = 0,
                        vocab_size: int = 1536, input_depth: int = 128, state: dict | None = None,
                        note=None) -> Iterator[dict[str, np.ndarray]]:
    """This host's batches (numpy) of `cfg` (a `train.DatasetConfig`).

    `state` (an indexed position as stored in a checkpoint) resumes the indexed sampler where it stopped. Without it,
    `skip_batches` > 0 means a checkpoint from a seqio-pipeline run: the seqio pipeline is rebuilt and that many
    batches skipped, as before (`note(line)` says so). A fresh stream uses `cfg.pipeline`; a name the indexed sampler
    cannot read is an InputError saying why and how to fix it, never a silent switch of pipeline. Audio mixing,
    augmentation and frame targets come from `cfg` (bound in gin/train.gin), not from gin here.
    """
    if cfg.target_length_multiple and num_shards > 1:
        raise ValueError("target_length_multiple needs one data shard: hosts would disagree on batch shapes")
    if cfg.source == "synthetic":
        return synthetic_batches(cfg, host_batch_size=host_batch_size, shard_id=shard_id, vocab_size=vocab_size,
                                 input_depth=input_depth, start=skip_batches)
    note = note or (lambda line: None)
    if getattr(cfg, "module", None):  # T5X's DatasetConfig.module (gin: MIXTURE_OR_TASK_MODULE)
        from mt3 import registry

        registry.import_modules(cfg.module, "MIXTURE_OR_TASK_MODULE")
    if state is not None or (cfg.pipeline == "indexed" and not skip_batches):
        return IndexedStream(
            indexed_tasks(cfg.mixture_or_task_name, data_dir=cfg.data_dir), split=cfg.split,
            task_feature_lengths=dict(cfg.task_feature_lengths),
            batch_size=host_batch_size, seed=cfg.seed or 0, shard_id=shard_id, num_shards=num_shards,
            num_epochs=cfg.num_epochs, block_tracks=cfg.block_tracks, data_dir=cfg.data_dir,
            position=IndexedPosition.from_json(state) if state is not None else None,
            mix_config=cfg.mix_config, augment_config=cfg.augment_config,
            target_length_multiple=cfg.target_length_multiple, shuffle=cfg.shuffle,
            frame_targets=cfg.frame_targets and cfg.split == "train", num_workers=getattr(cfg, "num_workers", 0))
    if skip_batches and cfg.pipeline == "indexed":
        note(f"the checkpoint holds no input-pipeline state (written by the seqio pipeline): rebuilding that pipeline "
             f"and skipping {skip_batches} batches as before (this run keeps it; time grows with the step)")
    return seqio_batches(cfg, host_batch_size=host_batch_size, shard_id=shard_id, num_shards=num_shards,
                         skip_batches=skip_batches)


def seqio_batches(cfg, *, host_batch_size: int, shard_id: int, num_shards: int,
                  skip_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The seqio pipeline's batches after `skip_batches` (each skipped batch is read and preprocessed again)."""
    import tensorflow as tf  # lazy: only the seqio pipeline needs TensorFlow

    try:
        tf.config.set_visible_devices([], "GPU")  # the input pipeline runs on CPU; the accelerators belong to JAX
    except RuntimeError:  # TensorFlow's devices were initialised already (a second iterator): nothing to change
        pass
    from mt3 import preprocessors, tasks

    with preprocessors.training_options(mix_config=cfg.mix_config, augment_config=cfg.augment_config,
                                        frame_targets=cfg.frame_targets):
        ds = tasks.get_dataset(cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
                               split=cfg.split, batch_size=host_batch_size, shuffle=cfg.shuffle, seed=cfg.seed,
                               shard_id=shard_id, num_shards=num_shards, num_epochs=cfg.num_epochs,
                               data_dir=cfg.data_dir)
    if skip_batches:
        ds = ds.skip(skip_batches)
    from mt3.data import frame_targets

    keep = MODEL_FEATURES + frame_targets.FEATURES  # [B, L, 128] rolls, only there when the auxiliary loss is on
    batches = ({k: v for k, v in batch.items() if k in keep} for batch in ds.as_numpy_iterator())
    if cfg.target_length_multiple:
        batches = (trim_target_padding(b, cfg.target_length_multiple) for b in batches)
    return batches


def stream_state(batches) -> dict | None:
    """The JSON position a checkpoint stores for this stream (None: batches consumed say it all)."""
    position = getattr(batches, "position", None)
    return position.to_json() if position is not None else None
