"""The live demo (``vcot-demo``): the model reasons and its boxes appear on the image as it writes them.

- :mod:`vcot.demo.engine`: the model, its format (from the adapter's card, never guessed), streamed generation;
- :mod:`vcot.demo.drawing`: the image as the page shows it, with each complete mention's box drawn;
- :mod:`vcot.demo.sessions`: what the page keeps per visitor (a cancel event, their uploads) and the files' budget;
- :mod:`vcot.demo.app`: the Gradio page and the server (``gradio`` is in the ``demo`` extra).

Not a pipeline stage: it imports no stage's package (tests/test_imports.py).
"""
