"""Pages people look at: self-contained HTML files with images and their boxes drawn.

- ``html``: the shared pieces (an image inlined as a JPEG, its boxes as an SVG overlay in house coordinates,
  grounded tags highlighted); evaluate's report is built from them;
- ``preview``: ``vcot-preview``, a page of records with their boxes, to look at data before training.

May import: ``vcot.grounding``, ``vcot.io`` and the entrypoint frame.
"""
