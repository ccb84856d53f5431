"""Files: append-only JSONL, whole files replaced atomically and the one JSONL reader (``files``); the task file
formats people bring: seeds, Alpaca, Self-Instruct, CSV (``readers``)."""
