"""Grounded text and the model contract: what a grounded rationale is, and how one model writes and reads it.

- ``boxes``: the house box format ``<ref>..</ref><box>[x1, y1, x2, y2]</box>`` (0-1000 of the original image),
  the other box syntaxes and coordinate frames, parsing, rendering and conversion (the one tag table);
- ``records``: the canonical grounded record that convert and distill write and every later stage reads;
- ``answers``: final answers read out of a response and judged against a record;
- ``families``: the per-family facts (``model_type`` names, released image geometry, native frame and syntax),
  one row per family in one table;
- ``model_format``: the model contract (family, coordinate frame, box syntax, image geometry, prompt wording),
  reading its per-family facts from ``families``;
- ``prompts``: the one place a record becomes a chat (tokenize trains on it, evaluate prompts with it);
- ``streaming``: the boxes of a response as it streams in (the live demo).

Pure text and numbers: no torch, no storage. May import: ``vcot.errors`` and nothing else of vcot.
"""
