"""The data layer below MT3's `preprocessors`/`tasks`: the converted-dataset record format (`records`), whole-track
tokenizing and example building (`track_tokens`, `track_examples`), training-time transforms (`augmentation`,
`frame_targets`), the feature converter and `mt3 data-stats`. Preprocessing logic here is numpy; TensorFlow only
appears as the tf.data/seqio wrapper."""
