"""The evaluate stage: score grounded answers of a model (or of a predictions file) against records.

Answers are judged by the shared ``vcot.answers`` (the rule distill accepts teacher answers by).

Modules, in dependency order:

- ``metrics``: the grounding and answer metrics of one sample and of a set of samples (pure).
- boxes are read back through the run's ``vcot.model_format.ModelFormat`` (the adapter's card).
- ``scoring``: committed records and predictions files in, joined by id, one scored row per sample out.
- ``streaming``: the boxes complete so far in a streamed response.
- ``penalty``: the box-aware repetition penalty (leaves coordinate digits inside ``<box>`` alone).
- ``generation``: batched greedy inference with left padding (model mode).
- ``history``: the re-evaluation history in storage, and regression checks against it.
- ``report``: the self-contained HTML report.
- ``config`` and ``stage``: the stage's configuration and its one entry function ``evaluate``.
"""
