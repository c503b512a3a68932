"""The evaluate stage: score grounded answers of a model (or of a predictions file) against records.

Answers are judged by the shared ``vcot.grounding.answers`` (the rule distill accepts teacher answers by).

Shared with train's generation evaluation (concept packages, since no stage imports another's package):

- ``vcot.scoring.metrics``: the grounding and answer metrics of one sample and of a set of samples (pure).
- ``vcot.scoring.field_metrics``: the grounding metrics of the 2025-26 papers (TreeBench, TreeVGR, GRIT, VisCoT, MM-GCoT).
- ``vcot.scoring.response``: one response scored against its record, boxes read back through the run's
  ``vcot.grounding.model_format.ModelFormat`` (the adapter's card).
- ``vcot.models.generation``: batched greedy inference with left padding (model mode), with its box-aware
  repetition penalty (leaves coordinate digits inside ``<box>`` alone; defaults in ``vcot.models.penalty``).

This package's modules, in dependency order:

- ``scoring``: committed records and predictions files in, joined by id, one scored row per sample out.
- ``history``: the re-evaluation history in storage, and regression checks against it.
- ``judge``: an LLM judge for free-form answers (VisCoT's protocol) on ``vcot.llm``.
- ``served``: served mode's answers, a model an OpenAI-compatible endpoint serves, asked on ``vcot.llm``.
- ``benchmark``: the VisCoT benchmark's per-subset table; ``styles``: chain of thought vs direct answers.
- ``report``: the self-contained HTML report.
- ``lmms``: the lmms-eval model plugin (``lmms-eval --model vcot``).
- ``config`` and ``stage``: the stage's configuration and its one entry function ``evaluate``.
"""
