"""The stages as pure functions of records: Self-Instruct bootstrap (``bootstrap``, ``instances``), Evol-Instruct
(``evolve``), export formats (``export``) and the parsers of teacher replies (``parsing``). They ask the teacher
and the filters; they never read or write files (``pipeline.runs`` does)."""
