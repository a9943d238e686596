"""Feature converter for continuous encoder inputs (audio frames) and token decoder targets.

seqio's EncDecFeatureConverter assumes integer encoder tokens; MT3's audio inputs are float frames of rank 2. This
converter keeps seqio's conventions (pad/trim to task lengths, decoder inputs = targets shifted right with BOS 0, loss
on non-pad positions including EOS) and T5X's model feature names. Packing is off by default, as MT3 trains.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

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
