"""The convert stage: VisCOT, ScienceQA, A-OKVQA, LLaVA-CoT and your own data into canonical grounded records.

One module per source (``viscot``, ``scienceqa``, ``aokvqa``, ``llava_cot``, ``own_records``) turns input items into
records or rejections; ``stage`` filters, splits, writes shards and commits; ``quality`` holds the
filter and the report; ``synthetic`` writes small VisCOT-format data for local runs and tests.
"""

from vcot.convert.stage import ConvertConfig, convert

__all__ = ["ConvertConfig", "convert"]
