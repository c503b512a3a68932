"""Config redaction: secrets are hidden in logs and manifests, ordinary knobs are not."""

from __future__ import annotations

from dataclasses import dataclass

from vcot.config import option, redacted


@dataclass
class _Config:
    api_key: str = option("sk-1", help="A key.")
    hf_token: str = option("hf-1", help="A token.")
    aws_credentials: str = option("c", help="Credentials.")
    password: str = option("p", help="A password.")
    endpoint: str = option("e", help="Marked secret.", secret=True)
    max_new_tokens: int = option(512, help="Generation length, not a secret.")
    tokenizer: str = option("t", help="Not a secret.")
    empty_secret: str = option("", help="Nothing to hide.")


def test_redaction_by_word_not_substring() -> None:
    assert redacted(_Config()) == {
        "api_key": "***",
        "hf_token": "***",
        "aws_credentials": "***",
        "password": "***",
        "endpoint": "***",
        "max_new_tokens": 512,
        "tokenizer": "t",
        "empty_secret": "",
    }


@dataclass
class _WithUrls:
    base_url: str = option("https://user:pa55word@llm.example/v1?api-key=k-123&model=m", help="An endpoint.")
    mirrors: list = option(["http://u:p@a.example/x", "s3://bucket/no-credentials"], help="More endpoints.")


def test_credentials_written_into_urls_are_masked() -> None:
    """What distill logs and stores in its manifest for ``--base-url https://user:password@host/v1``."""
    assert redacted(_WithUrls()) == {
        "base_url": "https://***@llm.example/v1?api-key=***&model=m",
        "mirrors": ["http://***@a.example/x", "s3://bucket/no-credentials"],
    }
