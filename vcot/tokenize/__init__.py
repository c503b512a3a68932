"""Tokenize: grounded records -> Parquet rows of token ids, assistant-only labels and image grids."""

from vcot.tokenize.encode import IGNORE_INDEX, Encoder
from vcot.tokenize.stage import TokenizeConfig, tokenize

__all__ = ["IGNORE_INDEX", "Encoder", "TokenizeConfig", "tokenize"]
