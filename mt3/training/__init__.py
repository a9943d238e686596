"""Training: the T5X-shaped trainer and everything a run touches.

`trainer` (pure train/eval steps), `train` (the outer loop behind `mt3 train`), `input_pipeline` (checkpointable
training streams), `partitioning` (device mesh), `checkpoints` (orbax), `compilation`, the T5X checkpoint reader and
importer (`t5x_checkpoints`, `checkpoint_import`) and `cpu_clock` (a run's CPU seconds on shared cores).
"""
