"""An example application monitored by llm-ledger: lenses run over articles with ``AsyncOpenAI``.

``RunnerService.run_lens()`` and ``GeneratorService._call_llm()`` (``services.py``) are the two LLM
call sites; ``store.py`` keeps each lens run in ``source_logs`` (the lens summary on
``extra_data``) and its result in ``artifacts`` (token usage on ``usage``). ``python -m
examples.lens_app`` runs every lens over the sample articles in ``sources/`` for a user (``--user``),
by default replaying the committed cassettes offline; ``--costs user_id`` (or ``source_id``, ``lens``)
sums ``source_logs`` with the engine of ``llm-ledger report`` (``Store.costs``).
"""
