"""MT3's model: `network` (Flax T5.1.1 encoder-decoder), `models` (loss, eval, predict), `decoding` (KV-cached
greedy/sampling decode), `layers` (building blocks). Submodules import JAX/Flax; nothing here imports TensorFlow."""
