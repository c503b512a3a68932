"""The convert stage: VisCOT, ScienceQA, A-OKVQA, LLaVA-CoT, LaCoT, the field's benchmarks (VLMEvalKit's TSV
layout, RefCOCO) and your own data into canonical grounded records.

One module per source (``viscot``, ``scienceqa``, ``aokvqa``, ``llava_cot``, ``lacot``, ``vlmevalkit``, ``refcoco``,
``own_records``) turns input items into
records or rejections; ``stage`` filters, splits, writes shards and commits; ``quality`` holds the
filter and the report; ``synthetic`` writes small VisCOT-format data for local runs and tests.
"""

from vcot.convert.stage import ConvertConfig, convert

__all__ = ["ConvertConfig", "convert"]
