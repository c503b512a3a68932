"""Export: a committed train run -> a merged 16-bit model folder that ``vllm serve`` and ``huggingface-cli upload``
take as it is (weights, processor, chat template, ``vcot-model.json``, a README.md model card)."""

from vcot.export.stage import ExportConfig, export

__all__ = ["ExportConfig", "export"]
