"""Stand-ins for the two commands of the docs' copy-paste blocks that a test cannot run (tests/test_docs_blocks.py puts
``aws`` and ``vllm`` wrappers calling this module first on PATH):

- ``aws s3 sync SRC DST``: the AWS CLI need not be installed; the same copy through vcot's storage layer, against the
  local S3 server the environment names;
- ``vllm serve DIR [--served-model-name NAME] [--max-model-len N] [--limit-mm-per-prompt JSON]``: vLLM needs a GPU
  (or a separate 7 GB CPU build). This checks that DIR holds what vLLM reads (config, weights, tokenizer, chat
  template, the processor's ``preprocessor_config.json`` with its pixel budget), then starts an OpenAI-compatible
  server in the background (``vcot.dev.fake_openai``) that answers chat requests for NAME only (another name: 404,
  as vLLM answers) on ``VLLM_STANDIN_PORT``, and returns once it listens (vLLM would keep the terminal: the docs
  run it in another one). Its pid goes to ``VLLM_STANDIN_DIR``; the test stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from vcot.io import storage


def aws(argv: list[str]) -> int:
    if argv[:2] != ["s3", "sync"] or len(argv) != 4:
        print(f"aws (stand-in): only 'aws s3 sync SRC DST' is stood in for, not {argv}", file=sys.stderr)
        return 2
    source, dest = argv[2], argv[3]
    if storage.is_s3(source) and not storage.is_s3(dest):
        if not storage.list_uris(source):
            print(f"aws (stand-in): nothing under {source}", file=sys.stderr)
            return 1
        storage.download_prefix(source, Path(dest))
    elif storage.is_s3(dest) and not storage.is_s3(source):
        storage.upload_dir(Path(source), dest)
    else:
        print("aws (stand-in): one side must be s3://, the other a local folder", file=sys.stderr)
        return 2
    return 0


SERVED_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")


def vllm(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vllm (stand-in)")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--served-model-name")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--limit-mm-per-prompt", type=json.loads)
    args = parser.parse_args(argv)
    folder = Path(args.model)
    missing = [name for name in SERVED_FILES if not (folder / name).is_file()]
    if not list(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    template = (folder / "chat_template.jinja").is_file() or "chat_template" in _json(folder / "tokenizer_config.json")
    if not template:
        missing.append("a chat template")
    if missing:
        print(f"vllm (stand-in): {folder} lacks what vLLM reads: {', '.join(missing)}", file=sys.stderr)
        return 1
    budget = _json(folder / "preprocessor_config.json")
    if not {"min_pixels", "max_pixels"} <= set(budget):
        print(f"vllm (stand-in): {folder}/preprocessor_config.json has no min_pixels/max_pixels", file=sys.stderr)
        return 1
    port, home = int(os.environ["VLLM_STANDIN_PORT"]), Path(os.environ["VLLM_STANDIN_DIR"])
    name = args.served_model_name or args.model  # vLLM's default name is the model argument
    with open(home / f"vllm-{port}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vcot.dev.fake_openai", "--port", str(port), "--api-key", "",
             "--served-model-name", name],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    (home / f"vllm-{port}.pid").write_text(str(process.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            print(f"vllm (stand-in): the server exited: see {home}/vllm-{port}.log", file=sys.stderr)
            return 1
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                print(f"vllm (stand-in): serving {folder} as {name!r} on http://localhost:{port}/v1", file=sys.stderr)
                return 0
        time.sleep(0.2)
    print("vllm (stand-in): the server did not listen within 60 s", file=sys.stderr)
    return 1


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main() -> int:
    tool, argv = sys.argv[1], sys.argv[2:]
    return {"aws": aws, "vllm": vllm}[tool](argv)


if __name__ == "__main__":
    raise SystemExit(main())
