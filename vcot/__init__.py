"""vcot: fine-tune vision-language models to reason in grounded chains of thought."""

__version__ = "0.1.0"
