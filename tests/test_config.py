"""Stage config: flags, VCOT_* env fallbacks, exit code 2 with a useful message, secrets redacted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from vcot.config import option, parse_config, redacted


@dataclass
class DemoConfig:
    """Demo stage."""

    output: str = option(help="Where to write.")
    num_shards: int = option(1, help="How many pods split the input.")
    val_fraction: float = option(0.1, help="Share of records for validation.")
    mode: Literal["multimodal", "text"] = option("multimodal", help="Tokenization mode.")
    overwrite: bool = option(False, help="Replace a committed output.")
    inputs: list[str] = option([], help="Comma-separated input URIs.")
    api_key: str | None = option(None, help="Teacher key.", secret=True)
    base_url: str | None = option(None, help="Endpoint.")

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise ValueError("--num-shards must be at least 1: set it (or VCOT_NUM_SHARDS) to 1 or more")


def test_flags_then_env_then_defaults() -> None:
    env = {"VCOT_NUM_SHARDS": "4", "VCOT_MODE": "text", "VCOT_OUTPUT": "s3://env/out", "VCOT_OVERWRITE": "true"}
    config = parse_config(DemoConfig, ["--output", "s3://flag/out", "--inputs", "a, b"], environ=env)
    assert config.output == "s3://flag/out"
    assert config.num_shards == 4 and config.mode == "text" and config.overwrite is True
    assert config.inputs == ["a", "b"] and config.val_fraction == 0.1 and config.base_url is None
    assert parse_config(DemoConfig, ["--no-overwrite"], environ=env).overwrite is False


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--output is required: pass it or set VCOT_OUTPUT"),
        (["--output", "x", "--num-shards", "two"], {}, "--num-shards='two' is not a valid int"),
        (["--output", "x"], {"VCOT_NUM_SHARDS": "0"}, "--num-shards must be at least 1"),
        (["--output", "x"], {"VCOT_MODE": "video"}, "VCOT_MODE='video' is not one of multimodal, text"),
        (["--output", "x"], {"VCOT_OVERWRITE": "maybe"}, "is not a boolean"),
        (["--output", "x", "--mode", "video"], {}, "invalid choice"),
    ],
)
def test_invalid_values_exit_2_and_say_what_to_set(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(DemoConfig, argv, prog="vcot-demo", environ=env)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_env_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, ["--help"], environ={})
    out = capsys.readouterr().out
    assert "VCOT_VAL_FRACTION" in out and "Share of records for validation" in out


def test_secrets_are_redacted() -> None:
    config = parse_config(DemoConfig, ["--output", "o", "--api-key", "sk-123"], environ={})
    assert config.api_key == "sk-123"
    assert redacted(config)["api_key"] == "***" and redacted(config)["output"] == "o"


def test_every_yaml_reader_uses_the_one_loader_that_refuses_duplicated_keys() -> None:
    """Recipes, --set values, mixtures: one loader (vcot.config.load_yaml), so no reader keeps the last of two keys."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "vcot"
    readers = [
        str(path.relative_to(root.parent))
        for path in sorted(root.rglob("*.py"))
        if re.search(r"yaml\.(safe_)?load\b|yaml\.(full_|unsafe_)?load\(|import yaml", path.read_text(encoding="utf-8"))
    ]
    assert readers == ["vcot/config.py"]


def test_load_yaml_refuses_duplicated_keys_at_any_depth_and_keeps_merge_keys() -> None:
    import pytest

    from vcot.config import load_yaml
    from vcot.errors import ConfigError

    assert load_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n", "recipe r")["run"] == {"x": 3, "y": 2}
    for text, where in (("a: 1\na: 2\n", "line 2"), ("a:\n  - {b: 1, b: 2}\n", "line 2"), ("1: a\n1.0: b\n", "line 2")):
        with pytest.raises(ConfigError, match=f"twice in one mapping \\({where}\\): remove or rename one$"):
            load_yaml(text, "mixture m.yaml")
    with pytest.raises(ConfigError, match=r"^recipe r is not valid YAML \(.* at line 2, column \d+\): fix its syntax$"):
        load_yaml("a: [1, 2\n", "recipe r")

