"""LoRA tuning and evaluation: the base model (``model``: GGUF conversion, loading, precision), SFT with trl and
peft (``tune``), base against tuned (``evaluate``). torch and friends load inside the functions that need them."""
