"""instruct-pipeline: seed tasks in, a clean instruction dataset (and a LoRA adapter) out."""

__version__ = "0.1.0"
