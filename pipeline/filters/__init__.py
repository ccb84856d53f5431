"""The filters: exact ROUGE-L (``rouge``), the novelty index (``novelty``, with ``minhash``), the named quality
rules (``heuristics``) and the chain that runs them over a list of records (``chain``). Pure: no file I/O."""
