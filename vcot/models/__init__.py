"""Models: loading a base model (+ adapter) and its processor, and generating from it.

- ``loading``: a base model from a folder, ``s3://`` prefix or hub id, with or without a LoRA adapter or 4-bit
  quantization, the same way in train, evaluate, export and the demo; the adapter's card (``vcot-model.json``);
- ``adapters``: named adapters on one base: the frozen reference RL scores against (a complete copy of the
  adapter it continues), the SFT adapter BiN answers with, and switching between them;
- ``generation``: batched greedy generation with left padding (evaluate, train's evaluation between steps), and the
  repetition penalty that leaves box coordinates alone (its logits processor);
- ``penalty``: that penalty's defaults and what it spares, without torch (configs import them: ``--help`` stays fast).

May import: ``vcot.grounding``, ``vcot.io`` and the entrypoint frame.
"""
