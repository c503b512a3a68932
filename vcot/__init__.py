"""vcot: fine-tune vision-language models to reason in grounded chains of thought.

The library in layers, imports running down only (tests/test_imports.py):

- the entrypoint frame: :mod:`vcot.cli`, :mod:`vcot.config`, :mod:`vcot.errors`, :mod:`vcot.log`;
- concept packages: :mod:`vcot.io` (storage and commits), :mod:`vcot.grounding` (grounded text and the model
  contract), :mod:`vcot.scoring` (metrics and rewards), :mod:`vcot.models` (loading and generation),
  :mod:`vcot.llm` (OpenAI-compatible models), :mod:`vcot.pages` (HTML pages), :mod:`vcot.cluster` (Kubernetes);
- the stages: :mod:`vcot.convert`, :mod:`vcot.distill`, :mod:`vcot.tokenize`, :mod:`vcot.train`,
  :mod:`vcot.evaluate`, :mod:`vcot.export`, and the live demo :mod:`vcot.demo`;
- :mod:`vcot.dev`: development tools no stage imports.
"""

__version__ = "0.1.0"
