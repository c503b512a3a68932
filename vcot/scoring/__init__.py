"""Scores and rewards: how a grounded response is measured, in evaluation and in training.

- ``metrics``: the seed's grounding and answer metrics of one sample and of a set (pure);
- ``field_metrics``: the grounding metrics of the 2025-26 papers (TreeBench mIoU, dual IoU, GRIT, MM-GCoT);
- ``response``: one response scored against its record, its boxes read back through the run's model format
  (evaluate, and train's evaluation between steps, so a checkpoint is chosen by the numbers evaluate reports);
- ``rewards``: GRPO's rewards (format, answer, box IoU) with TRL's reward-function signature;
- ``gfn``: LaCoT's GFlowNet objective (RGFN) and Bayesian inference over N rationales (BiN), as tensor functions.

May import: ``vcot.grounding`` and the entrypoint frame; never storage or a model loader.
"""
