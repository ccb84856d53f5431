"""What a run did, for people: figures (``summary``), the HTML report (``html``, with ``plots`` and ``verbs``) and
the dataset card (``card``). It reads runs through ``pipeline.runs.read`` only."""
