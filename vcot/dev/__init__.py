"""Development tools: what tests, benchmarks and the Makefile use to run vcot on a laptop. No stage imports them.

- ``tiny_model``: tiny offline Qwen2.5-VL / Qwen3-VL models built in code (``python -m vcot.dev.tiny_model``);
- ``local_s3``: a real S3 server on the developer's machine (``make s3-up``);
- ``synthetic``: synthetic VisCOT-format data with known boxes (``make synthetic-data``);
- ``summary``: the summary ``make local-train`` prints;
- ``fake_openai``: a local OpenAI-protocol server with injectable faults (distill's and the judge's tests).
"""
