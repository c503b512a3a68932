"""Storage and commits: how every stage reaches data and publishes what it wrote.

- ``storage``: every path is a URI (``s3://bucket/key`` or a local path), opened, listed and copied through here;
- ``shards``: the JSONL(.gz) record files every stage reads and writes, hashed as they are written;
- ``manifest``: a stage output is committed by a ``_SUCCESS`` manifest written last; readers trust nothing else;
- ``layout``: where a run's stages write (``<root>/<run>/records``, ``tokenized``, ``train``, ...) and the pointer;
- ``images``: images by URI, the one loader for every stage that hands pixels to a model;
- ``parallel``: worker processes for CPU-bound record work, results in input order.

May import: the entrypoint frame (``vcot.errors``, ``vcot.config``, ``vcot.log``) and nothing else of vcot.
"""
