"""mt3: multi-task multitrack music transcription in JAX/Flax, seqio and gin.

Heavy libraries (JAX, TensorFlow, note_seq) are imported by the modules that need them, never here, so
`import mt3` and `mt3 --help` stay instant.
"""

__version__ = "0.1.0"
