"""Thin container entrypoints, one module per stage.

Each is a few lines: ``main()`` hands a config dataclass and one library function to
:func:`vcot.cli.run_stage`, which configures logging, reads flags/``VCOT_*`` env, logs the resolved
config (secrets redacted) and turns user-fixable errors into one line and a non-zero exit::

    def main(argv: list[str] | None = None) -> int:
        return run_stage("convert", ConvertConfig, convert, argv)

At module level an entrypoint imports its config and nothing heavy: torch, transformers, TRL and gradio load when the
stage runs, never for ``--help`` (``tests/test_entrypoints.py`` checks it).
"""
