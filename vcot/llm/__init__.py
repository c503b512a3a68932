"""Calling OpenAI-compatible models from a stage: distill's teacher, evaluate's judge and its served model share it.

- ``chat``: the async ``openai`` client, bounded concurrency, retries with backoff honouring Retry-After,
  and :class:`~vcot.llm.chat.CachedChat` (cache lookups, identical requests in flight sent once);
- ``cache``: request keys and the append-only answer cache in storage (a rerun never pays twice);
- ``ledger``: requests, retries, tokens and the estimated cost of a run;
- ``ask``: many questions to one model, each asked once (:func:`~vcot.llm.ask.ask_all`: evaluate's judge and served mode).

Its tests and benchmarks talk to ``vcot.dev.fake_openai``, a local OpenAI-protocol server with injectable faults.

The API key is never a flag or a config field: callers read ``OPENAI_API_KEY`` and pass it in, and it is
scrubbed from every error message.

May import: ``vcot.io`` and the entrypoint frame.
"""
