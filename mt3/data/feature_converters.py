"""Feature converter for continuous encoder inputs (audio frames) and token decoder targets.

seqio's EncDecFeatureConverter assumes integer encoder tokens; MT3's audio inputs are float frames of rank 2. This
converter keeps seqio's conventions (pad/trim to task lengths, decoder inputs = targets shifted right with BOS 0, loss
on non-pad positions including EOS) and T5X's model feature names. Packing is off by default, as MT3 trains.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from mt3.data import frame_targets

FeatureSpec = seqio.FeatureConverter.FeatureSpec


class ContinuousInputsEncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """{'inputs': [L', hop] f32, 'targets': [T'] i32} -> encoder_input_tokens / decoder_* features."""

    TASK_FEATURES = {
        "inputs": FeatureSpec(dtype=tf.float32, rank=2),
        "targets": FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        "encoder_input_tokens": FeatureSpec(dtype=tf.float32, rank=2),
        "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": FeatureSpec(dtype=tf.float32),
    }

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("packing continuous audio inputs is not supported (MT3 trains unpacked)")
        super().__init__(pack=False, **kwargs)

    def _convert_example(self, features):
        d = super()._convert_example(features)
        d["decoder_loss_weights"] = tf.cast(d["decoder_loss_weights"], tf.float32)
        return d

    def __call__(self, ds, task_feature_lengths):
        """seqio's conversion; training examples that carry frame targets (`mt3.data.frame_targets`, made only when the
        auxiliary loss is on) keep them as seqio passthrough features, padded or cut to the inputs' length like the
        frames they label. Without them this is exactly seqio's conversion."""
        rolls = [k for k in frame_targets.FEATURES if k in ds.element_spec]
        if not rolls or self._passthrough_features:
            return super().__call__(ds, task_feature_lengths)
        converter = type(self)(pack=False, passthrough_features={
            k: FeatureSpec(dtype=tf.uint8, rank=2) for k in rolls})
        lengths = {**task_feature_lengths, **{k: task_feature_lengths["inputs"] for k in rolls}}
        return converter(ds, lengths)
