"""Tokenize: grounded records -> Parquet rows of token ids, assistant-only labels and image grids."""

from vcot.tokenize.encode import IGNORE_INDEX, Encoder, VisionSettings, image_grid, num_image_tokens
from vcot.tokenize.stage import TokenizeConfig, read_tokenized_config, tokenize

__all__ = [
    "IGNORE_INDEX",
    "Encoder",
    "TokenizeConfig",
    "VisionSettings",
    "image_grid",
    "num_image_tokens",
    "read_tokenized_config",
    "tokenize",
]
