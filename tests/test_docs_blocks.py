"""The copy-paste blocks of README.md and docs/*.md run as written, in order, on the tiny model.

A block of commands to copy is fenced ```bash (a synopsis with placeholders, ``URI``, ``...``, ``[--flag]``, is fenced
without a language). Every ```bash block is either in :data:`RUN` (run, in its document's order, in one shell per
document as a reader would) or in :data:`SKIPPED` with the reason it cannot run here; a command inside a run block
that cannot run is in :data:`SKIPPED_COMMANDS`. A new block in neither, or an entry whose block is gone, fails
:func:`test_every_shell_block_is_run_or_skipped`. The commands of skipped blocks still have their flags parsed by
their stage (:func:`test_skipped_commands_have_valid_flags`).

The only differences from the docs' text, all here:

- :data:`BUCKETS`: the docs' buckets (``s3://bucket``, ``s3://my-bucket``, ``s3://vcot``) are one fresh prefix per
  document on the local S3 server (docs/export.md shares README's: it continues README's run ``r1``);
- :func:`preconditions`: what a reader has before a document's first block: the tiny Qwen2.5-VL uploaded where the
  docs keep the 7B base model (``models/base``, ``models/Qwen2.5-VL-7B-Instruct``), record outputs where they read an
  earlier run's (``runs/r1/distilled``: distill needs an OpenAI teacher), the own data of docs/convert.md's example,
  a teacher's ``preds.jsonl``, the pointer a ``--update-pointer`` run writes, and the files the docs show to save
  (``mix.yaml``, ``mixtures/m1.yaml``);
- :data:`TEST_SIZE`: the shipped GPU recipes at test size (their own YAML, a few knobs changed: 2 steps of 2
  samples), a mixture's ``samples: 20000`` as 40, and in the environment ``VCOT_MAX_NEW_TOKENS`` and
  ``VCOT_THREADS`` (every flag is also a variable; a flag written in the docs still wins);
- stand-ins first on PATH for ``aws s3 sync`` and ``vllm serve`` (tests/doc_standins.py says what each checks), and
  the served model's address (``vcot-evaluate --server``) pointed at the stand-in's port.

Budget: the run blocks take about 2.5 minutes on a busy 2-core machine (each command is a new process that imports
torch and loads the tiny model: that dominates).
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from vcot.train.distributed import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", *sorted(f"docs/{path.name}" for path in (REPO_ROOT / "docs").glob("*.md")))
SHELL = ("bash", "sh", "shell", "console", "zsh")


# --------------------------------------------------------------------------------------------------
# The blocks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def pieces(self) -> list[tuple[str, str]]:
        """``(command, its lines as written)`` in order: continuation lines joined into the command; comment-only
        and blank lines are pieces without a command."""
        pieces, command, raw = [], "", []
        for line in self.text.splitlines():
            stripped = line.strip()
            raw.append(line)
            if not command and (not stripped or stripped.startswith("#")):
                pieces.append(("", line))
                raw = []
                continue
            command += stripped
            if command.endswith("\\"):
                command = command[:-1].rstrip() + " "
                continue
            pieces.append((command, "\n".join(raw)))
            command, raw = "", []
        return pieces

    @property
    def commands(self) -> list[str]:
        """The block's commands: continuation lines joined, comment-only and blank lines left out, indentation gone."""
        return [command for command, _ in self.pieces if command]

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_blocks(doc: str) -> list[Block]:
    """Every fenced block of ``doc`` (indented ones, inside a list, included)."""
    lines = (REPO_ROOT / doc).read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = re.match(r"^\s*```(\w*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip().startswith("```"))
        found.append(Block(doc, index + 1, opening.group(1), "\n".join(lines[index + 1 : end])))
        index = end + 1
    return found


def shell_blocks() -> list[Block]:
    return [block for doc in DOCS for block in fenced_blocks(doc) if block.lang in SHELL]


RUN: dict[str, list[str]] = {
    "README.md": [
        "make s3-up && make synthetic-data",
        "vcot-tokenize --input s3://bucket/runs/r1/distilled",
        "vcot-train --recipe qwen2.5-vl-7b-grpo",
        "vcot-evaluate --predictions preds.jsonl",
        "vcot-export --run s3://bucket/runs/r1/train",
    ],
    "docs/export.md": [
        "vcot-export --run s3://vcot/runs/r1/train",
        "aws s3 sync s3://vcot/models/r1 ./r1",
        "vcot-evaluate --server http://localhost:8000/v1 --model-card ./r1",
    ],
    "docs/first-week.md": [
        "vcot-convert --source records --input s3://my-bucket/own/receipts.jsonl",
        "vcot-tokenize --mixture mix.yaml",
        "vcot-train --data s3://my-bucket/runs/exp1/tokenized",
        "vcot-evaluate --model s3://my-bucket/models/Qwen2.5-VL-7B-Instruct",
        "vcot-export --run s3://my-bucket/runs/exp1/train",
        "vcot-evaluate --server http://localhost:8000/v1 --model-card ./exp1",
    ],
    "docs/convert.md": ["vcot-convert --source records --input s3://my-bucket/own/own-data.jsonl"],
    "docs/train.md": [
        "vcot-tokenize --mixture s3://my-bucket/mixtures/m1.yaml",
        "vcot-plan --recipe qwen2.5-vl-7b-grpo",
    ],
}
"""The blocks run, per document in the order they are run, each named by how its first command starts."""

SKIPPED: dict[tuple[str, str], str] = {
    ("README.md", "make local-train"): "make local-train trains for 16-22 minutes on 2 cores, and make test is this "
    "suite: the same chain runs at test size in docs/first-week.md's blocks",
    ("README.md", "vcot-train --recipe qwen2.5-vl-7b-rgfn"): "RGFN continues an SFT run in the three-turn layout (r2), "
    "which no block makes; tests/train/test_rgfn_stage.py runs that chain",
    ("docs/benchmarks.md", "PYTHONPATH=. .venv/bin/python bench/rl_bench.py"): "GRPO, SFT and RGFN runs on three "
    "seeds after make local-train and make local-rgfn (about an hour); tests/test_bench.py runs it at test size",
    ("docs/benchmarks.md", "PYTHONPATH=. .venv/bin/python bench/grpo_signal.py"): "reads make local-train's SFT "
    "adapter, which no block makes; tests/test_bench.py runs it at test size",
    ("docs/bench-convert.md", ".venv/bin/python bench/convert_bench.py"): "a benchmark of 300,000 to 1,000,000 "
    "records (minutes); tests/test_bench.py runs each benchmark at test size",
    ("docs/bench-distill.md", ".venv/bin/python bench/distill_bench.py"): "a benchmark (500 samples at 200 ms); "
    "tests/test_bench.py runs each benchmark at test size",
    ("docs/bench-evaluate.md", "PYTHONPATH=. .venv/bin/python bench/evaluate_bench.py --samples 64 --max-new-tokens "
     "64 --repeats 3 --threads 1 --train-steps 0"): "a benchmark (repeated runs); tests/test_bench.py runs it at "
    "test size",
    ("docs/bench-evaluate.md", "PYTHONPATH=. .venv/bin/python bench/evaluate_bench.py --samples 64 --max-new-tokens "
     "64 --train-steps 300"): "a benchmark that trains 300 steps first (minutes); tests/test_bench.py runs it at "
    "test size",
    ("docs/bench-train.md", "/usr/bin/time -f \"WALL %e s CPU %U+%S s\" make local-train LOCAL_RUN="): "make local-train three times (10 minutes each): the runs the page "
    "reports",
    ("docs/bench-train.md", "/usr/bin/time -f \"WALL %e s CPU %U+%S s\" make local-train LOCAL_COORDS="): "make "
    "local-train twice (about 20 minutes each on a busy machine): the runs the page reports",
    ("docs/bench-train.md", "vcot-train --data s3://vcot/local/qwen2.5-vl-norm1000/tokenized"): "an SFT run of "
    "make local-train's size with another seed (5-18 minutes); tests/train/test_train_stage.py trains with a seed at "
    "test size",
    ("docs/bench-train.md", "make bench-train"): "a benchmark (repeated runs); tests/test_bench.py runs it at test "
    "size",
    ("docs/train.md", "PYTHONPATH=. .venv/bin/python bench/grounding_probe.py"): "a 6-minute training probe "
    "(the page says so); tests/test_bench.py runs the probe at test size",
    ("docs/convert.md", "vcot-convert --source viscot    --input s3://vcot/raw/viscot/viscot_363k.json"): "the public "
    "datasets (VisCOT, ScienceQA, A-OKVQA, LLaVA-CoT: many GB) are not here; each converter runs on samples in "
    "tests/convert",
    ("docs/demo.md", "make local-train"): "make local-train trains for minutes and make demo serves until stopped; "
    "tests/demo drives the demo in a browser",
    ("docs/demo.md", "pip install -e '.[train,demo,distill]'"): "installs into the environment, then serves until stopped; "
    "tests/demo drives the demo in a browser",
    ("docs/demo.md", "kubectl apply -k k8s/overlays/gpu"): "needs a Kubernetes cluster (no API server here); "
    "tests/k8s renders the overlays",
    ("docs/demo.md", "kubectl -n vcot run demo-check"): "needs a Kubernetes cluster",
    ("docs/evaluate.md", "vcot-convert --source viscot --input s3://vcot/raw/viscot/viscot_benchmark.json"): "the "
    "VisCoT benchmark files are not here; tests/evaluate/test_eval_benchmark.py converts and scores a sample",
    ("docs/evaluate.md", "vcot-evaluate --server http://vllm:8000/v1 --model-card s3://vcot/exports/r1"): "the "
    "published benchmark files and an exported 7B served by vLLM are not here; tests/evaluate/test_eval_protocol.py "
    "and test_leaderboard.py run the same flags on samples in the benchmarks' layout",
    ("docs/evaluate.md", "vcot-leaderboard --evals s3://vcot/evals/"): "reads the evaluations of the block above; "
    "tests/evaluate/test_leaderboard.py builds one and looks at it in a browser",
    ("docs/convert.md", "vcot-convert --source vlmevalkit --input s3://vcot/raw/TreeBench.tsv"): "the published "
    "TSV files are not here; tests/convert/test_convert_vlmevalkit.py converts samples written in their layout",
    ("docs/convert.md", "vcot-convert --source ground-r1 --input s3://vcot/raw/ground-r1/"): "the published file "
    "and its images are not here; tests/convert/test_convert_ground_r1.py converts real lines of it (26, two per "
    "subset) with images written at their sizes",
    ("docs/evaluate.md", "vcot-convert --source ground-r1 --input s3://vcot/raw/ground-r1/"): "the published file, "
    "its images and a served model are not here; tests/evaluate/test_eval_ground_r1.py scores real lines of it and "
    "tests/export/test_served.py asks a real vLLM",
    ("docs/evaluate.md", "lmms-eval --model vcot"): "downloads the textvqa task's data from the hub; "
    "tests/evaluate/test_eval_lmms.py runs the plugin on a local task",
    ("docs/first-week.md", "aws s3 sync s3://my-bucket/runs/exp1/train/tensorboard ./tb"): "tensorboard serves until "
    "stopped; tests/train/test_tracking.py checks the events reach storage as the run trains",
    ("docs/first-week.md", "make k8s-run RUN_ID=exp2"): "kubectl apply needs a cluster; tests/cluster/test_runs.py "
    "renders the run",
    ("docs/k8s.md", "docker build --target cpu"): "builds container images (make image-smoke builds and runs one "
    "with podman)",
    ("docs/k8s.md", "kubectl create namespace vcot"): "needs a Kubernetes cluster",
    ("docs/k8s.md", "kubectl apply -k k8s/overlays/gpu          #"): "needs a Kubernetes cluster; tests/k8s renders "
    "the overlays",
    ("docs/k8s.md", "kubectl apply -k k8s/overlays/gpu -l"): "needs a Kubernetes cluster with Kubeflow Trainer; "
    "tests/k8s/test_k8s_trainer.py renders the overlay with it and checks what the label leaves out",
    ("docs/k8s.md", "make k8s-run RUN_ID=exp2"): "kubectl apply needs a cluster; tests/cluster/test_runs.py renders "
    "the run",
    ("docs/k8s.md", "make k8s-run RUN_ID=lr2"): "kubectl apply needs a cluster; tests/cluster/test_runs.py renders "
    "the runs",
    ("docs/k8s.md", "kubectl -n vcot get jobs"): "needs a Kubernetes cluster",
    ("docs/export.md", "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --enable-lora"): "a hub base model: "
    "tests/export/test_served.py serves adapters with these flags (VllmServer.command) on the tiny base, real vLLM",
    ("docs/k8s.md", "make image-cpu image-cpu-train"): "builds images and loads them into a kind cluster",
}
"""The blocks not run, by document and how their first command starts, with the reason."""

SKIPPED_COMMANDS: dict[str, str] = {
    r"vcot-evaluate --benchmark viscot .*--model \.\.\.": "'--model ... --adapter ...' stand for the model and adapter "
    "of the line above: not a command as written",
    r"vllm serve \./r1 +# after syncing": "serves the folder synced down first, as its comment says: docs/export.md's "
    "blocks run the sync and the serve",
}
"""Commands inside run blocks that are not run (a regular expression matching the command), with the reason."""


def find(doc: str, start: str) -> Block:
    [block] = [b for b in shell_blocks() if b.doc == doc and b.commands and b.commands[0].startswith(start)]
    return block


def commands_matching(pattern: str) -> list[str]:
    """The commands of the run blocks that ``pattern`` (a key of :data:`SKIPPED_COMMANDS`) matches."""
    blocks = [find(doc, start) for doc, starts in RUN.items() for start in starts]
    return [command for block in blocks for command in block.commands if re.search(pattern, command)]


def test_every_shell_block_is_run_or_skipped() -> None:
    """A new ```bash block must be run here or listed as skipped with its reason; an entry must name a block."""
    entries = [(doc, start) for doc, starts in RUN.items() for start in starts] + list(SKIPPED)
    unlisted, matched = [], {entry: 0 for entry in entries}
    for block in shell_blocks():
        first = block.commands[0] if block.commands else ""
        owners = [entry for entry in entries if entry[0] == block.doc and first.startswith(entry[1])]
        for owner in owners:
            matched[owner] += 1
        if len(owners) != 1:
            unlisted.append(f"{block.where}: {first[:80]!r} matches {len(owners)} entries")
    assert unlisted == [], "add each to RUN or SKIPPED (with the reason it cannot run here):\n" + "\n".join(unlisted)
    assert [entry for entry, count in matched.items() if count != 1] == [], "entries that match no block (or several)"
    for pattern in SKIPPED_COMMANDS:
        assert len(commands_matching(pattern)) == 1, pattern


COMMAND_LINE = re.compile(
    r"^\s*(\.venv/bin/|/usr/bin/time |make |vcot-[a-z]+ |kubectl |python3? |PYTHONPATH=|docker |aws |torchrun |pip |"
    r"export |source |eval )"
)
PLACEHOLDER = re.compile(r"\.\.\.|\bURI\b|<[a-zA-Z ]+>|\[--|\|")


def test_commands_to_copy_are_fenced_as_bash() -> None:
    """A block without a language that holds a command and no placeholder would escape the test above: fence it
    ```bash (and run or skip it), or write the synopsis with its placeholders."""
    unfenced = [
        block.where for doc in DOCS for block in fenced_blocks(doc)
        if block.lang == "" and COMMAND_LINE.match(block.text) and not PLACEHOLDER.search(block.text)
    ]  # fmt: skip
    assert unfenced == []


def stage_config(command: str) -> type:
    """The config dataclass of ``vcot-<stage>`` (what its flags and ``VCOT_*`` variables fill)."""
    module = importlib.import_module(f"jobs.{command.removeprefix('vcot-')}")
    classes = [value for value in vars(module).values() if isinstance(value, type) and is_dataclass(value)]
    [config] = {cls for cls in classes if cls.__name__.endswith("Config")}
    return config


def test_skipped_commands_have_valid_flags() -> None:
    """What is not run is still read by its stage's own parser (a typo in a flag fails here), and a recipe it names
    exists; commands with placeholders (``...``) cannot be."""
    from vcot.config import parse_config
    from vcot.train.recipe import load_recipe

    checked = []
    skipped = [find(doc, start) for doc, start in SKIPPED]
    commands = [c for block in skipped for c in block.commands]
    commands += [command for pattern in SKIPPED_COMMANDS for command in commands_matching(pattern)]
    for command in commands:
        if not re.match(r"vcot-[a-z]+ ", command):
            continue
        argv = shlex.split(command, comments=True)
        if "..." in argv:
            continue
        config = parse_config(stage_config(argv[0]), argv[1:], environ={})
        if argv[0] == "vcot-train":
            load_recipe(config.recipe, config.set)
        checked.append(argv[0])
    assert checked.count("vcot-convert") >= 5 and "vcot-train" in checked and "vcot-demo" in checked, checked


# --------------------------------------------------------------------------------------------------
# What stands in for what
# --------------------------------------------------------------------------------------------------

BUCKETS = re.compile(r"s3://(?:bucket|my-bucket|vcot)(?=/)")
"""The docs' buckets: one prefix per document on the local S3 server."""
DOC_ROOTS = {"docs/export.md": "README.md"}
"""Documents that continue another's run (their buckets are its prefix)."""
TEST_SIZE = {
    "max_steps": 2, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 1,
    "global_batch_size": 2, "eval_steps": 2, "save_steps": 2, "logging_steps": 1, "generation_eval_samples": 2,
    "generation_eval_max_new_tokens": 16, "dataloader_num_workers": 0, "num_generations": 2,
    "max_completion_length": 16,
}  # fmt: skip
"""The shipped GPU recipes' knobs changed for the tiny model (the generation evaluation's: SFT's only); the rest
(4-bit, LoRA, 8-bit AdamW...) as shipped."""
ENVIRONMENT = {"VCOT_MAX_NEW_TOKENS": "24", "VCOT_THREADS": "1", "VCOT_LOG_FORMAT": "json"}
"""Evaluate's answers at test length and one torch thread per process (a busy 2-core machine), as variables."""
SAMPLES = ("samples: 20000", "samples: 40")
"""A mixture's sample count at test size."""
SERVER_URL = "http://localhost:8000/v1"
"""Where the docs ask vLLM (pointed at the stand-in's port)."""


@dataclass
class Walk:
    """One document's run: its S3 prefix, its working folder (a fresh clone's layout), recipes, environment."""

    doc: str
    root: str
    workdir: Path
    recipes: Path
    env: dict[str, str]
    port: int

    def substitute(self, text: str) -> str:
        text = BUCKETS.sub(self.root, text).replace(SERVER_URL, f"http://localhost:{self.port}/v1")
        shipped = re.compile(r"--recipe (qwen2\.5-vl-7b-[a-z]+)\b")
        return shipped.sub(lambda match: f"--recipe {self.recipes}/{match.group(1)}.yaml", text)

    def script(self) -> str:
        """The document's run blocks as one shell script (a reader's one shell), each announced on stderr."""
        parts = ["set -euo pipefail"]
        for start in RUN[self.doc]:
            block = find(self.doc, start)
            kept = [
                f"echo {shlex.quote(f'=== not run: {command[:60]} (SKIPPED_COMMANDS)')} >&2"
                if command and any(re.search(pattern, command) for pattern in SKIPPED_COMMANDS) else raw
                for command, raw in block.pieces
            ]  # fmt: skip
            parts += [f"echo \"=== block {block.where} (at $SECONDS s)\" >&2", self.substitute("\n".join(kept))]
        return "\n".join(parts) + "\n"


def tiny_recipes(folder: Path) -> Path:
    """The shipped GPU recipes at test size: their own YAML with :data:`TEST_SIZE`'s knobs changed."""
    import yaml

    from vcot.config import load_yaml
    from vcot.train.recipe import RECIPES_DIR

    folder.mkdir(parents=True, exist_ok=True)
    for shipped in RECIPES_DIR.glob("qwen2.5-vl-7b-*.yaml"):
        values = load_yaml(shipped.read_text(encoding="utf-8"), f"recipe {shipped}")
        values.update({k: v for k, v in TEST_SIZE.items() if values["method"] == "sft" or "generation_eval" not in k})
        (folder / shipped.name).write_text(yaml.safe_dump(values), encoding="utf-8")
    return folder


def doc_block(doc: str, lang: str, first_line: str) -> str:
    """The text of ``doc``'s first ``lang`` block whose first line starts with ``first_line``."""
    return next(b.text for b in fenced_blocks(doc) if b.lang == lang and b.text.lstrip().startswith(first_line))


def own_data(root: str, count: int) -> None:
    """docs/convert.md's ten example lines and ``count`` shapes in our record schema (a val split to evaluate on),
    as ``own/receipts.jsonl`` with the images under ``own/images`` (first-week's step 1)."""
    from tests.convert.own_data import IMAGES, STREET_SIZE, docs_example, png
    from tests.train.conftest import make_record
    from vcot.io import storage

    images = f"{root}/own/images"
    for path, size in IMAGES.items():
        storage.write_bytes(f"{images}/{path}", png(size))
    storage.write_bytes(f"{root}/images/street.png", png(STREET_SIZE))
    lines = [BUCKETS.sub(root, line) for line in docs_example()]
    rng = random.Random(0)
    for index in range(count):
        record = make_record(index, f"{images}/shapes", rng)
        record["image"] = record["image"].removeprefix(f"{images}/")  # relative to --images, as the docs' are
        lines.append(json.dumps({k: v for k, v in record.items() if k not in ("split", "source", "provenance")}))
    storage.write_text(f"{root}/own/receipts.jsonl", "\n".join(lines) + "\n")


def preconditions(walk: Walk, tiny_model: Path) -> None:
    """What a reader has before the document's first block (the module docstring)."""
    from tests.convert.own_data import write_own_data
    from tests.train.conftest import write_record_output
    from vcot.io import manifest, storage
    from vcot.train.pointer import run_pointer

    root = walk.root
    if walk.doc == "README.md":
        storage.upload_dir(tiny_model, f"{root}/models/base")
        write_record_output(f"{root}/runs/r1/distilled", 48, seed=0)
        records = write_record_output(f"{root}/records", 24, seed=1)
        storage.write_json(f"{root}/runs/latest.json", run_pointer(f"{root}/runs/r1/train", f"{root}/models/base"))
        val = [r for r in manifest.committed_records(records, ("val/",))]
        teacher = [{"id": r["id"], "prediction": r["rationale"]} for r in val]  # a teacher that answers right
        (walk.workdir / "preds.jsonl").write_text("".join(json.dumps(line) + "\n" for line in teacher))
    elif walk.doc == "docs/first-week.md":
        storage.upload_dir(tiny_model, f"{root}/models/Qwen2.5-VL-7B-Instruct")
        write_record_output(f"{root}/runs/r1/distilled", 32, seed=2)
        own_data(root, 40)
        mix = doc_block(walk.doc, "yaml", "# mix.yaml")
        assert SAMPLES[0] in mix
        (walk.workdir / "mix.yaml").write_text(walk.substitute(mix).replace(*SAMPLES) + "\n")
    elif walk.doc == "docs/convert.md":
        write_own_data(f"{root}/own", street=f"{root}/images/street.png")
    elif walk.doc == "docs/train.md":
        storage.upload_dir(tiny_model, f"{root}/models/Qwen2.5-VL-7B-Instruct")
        for index, run in enumerate(("runs/r1/distilled", "runs/own/records", "runs/c1/records", "runs/c2/records")):
            write_record_output(f"{root}/{run}", 16, seed=10 + index)
        mixture = doc_block(walk.doc, "yaml", "seed: 0")
        assert SAMPLES[0] in mixture
        storage.write_text(f"{root}/mixtures/m1.yaml", walk.substitute(mixture).replace(*SAMPLES) + "\n")


def clone_layout(workdir: Path) -> None:
    """A folder laid out as a fresh clone with its .venv (links to this checkout's files and its environment).

    The .venv is a folder of links with its own, fresh install stamp: make never reinstalls from a test (a reinstall
    through a link to the real environment rewrote its scripts' first lines to this temporary folder).
    """
    workdir.mkdir(parents=True)
    for entry in REPO_ROOT.iterdir():
        if not entry.name.startswith("."):
            (workdir / entry.name).symlink_to(entry)
    venv = workdir / ".venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if entry.name != ".installed-stamp":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed-stamp").touch()


def test_a_clone_never_reinstalls_the_environment(tmp_path: Path) -> None:
    """make in a walk's clone finds its environment installed, and its install stamp is not the real environment's
    (a stale real stamp made make reinstall through the link and break the checkout's scripts)."""
    clone_layout(tmp_path / "clone")
    stamp = tmp_path / "clone" / ".venv" / ".installed-stamp"
    assert stamp.resolve() != (Path(sys.prefix) / ".installed-stamp").resolve()
    done = subprocess.run(["make", "-q", ".venv/.installed-stamp"], cwd=tmp_path / "clone", capture_output=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


def standins(folder: Path) -> Path:
    """``aws`` and ``vllm`` on PATH, calling tests/doc_standins.py."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in ("aws", "vllm"):
        path = folder / tool
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tests.doc_standins {tool} "$@"\n')
        path.chmod(0o755)
    return folder


def stop_standin_servers(folder: Path) -> None:
    """Stop the servers the vllm stand-in started (its pid files; no other process)."""
    for pid_file in folder.glob("vllm-*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        pid_file.unlink()


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def walks(
    local_s3_server: Any, real_s3: str, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[Callable[[str], Walk]]:
    """``walks(doc)``: a document's walk, its preconditions in place (``real_s3``: a fresh prefix, and this process's
    environment pointing at the server for them); the stand-in servers stopped afterwards."""
    server = local_s3_server
    tools, servers, recipes = standins(tmp_path / "bin"), tmp_path / "servers", tiny_recipes(tmp_path / "recipes")
    servers.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VCOT_", "VIRTUAL_ENV"))}
    env.update(server.env())
    env.update(ENVIRONMENT)
    env.update({
        "PATH": f"{tools}:{Path(sys.prefix) / 'bin'}:{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO_ROOT),  # this checkout's vcot, whatever the environment installed
        "VCOT_LOCAL_S3_DIR": str(server.root), "VCOT_LOCAL_S3_PORT": str(server.port),  # make s3-up: this server
        "VCOT_LOCAL_S3_ACCESS_KEY": server.access_key, "VCOT_LOCAL_S3_SECRET_KEY": server.secret_key,
        "VCOT_LOCAL_S3_BUCKET": server.bucket,
        "VCOT_MODEL_CACHE": str(tmp_path / "model-cache"),
        "VLLM_STANDIN_DIR": str(servers),
    })  # fmt: skip

    def walk(doc: str) -> Walk:
        root = f"{real_s3}/{Path(DOC_ROOTS.get(doc, doc)).stem}"
        workdir = tmp_path / "work" / Path(doc).stem
        clone_layout(workdir)
        port = free_port()
        extra = {"VLLM_STANDIN_PORT": str(port), "SYNTHETIC_URI": BUCKETS.sub(root, "s3://vcot/local/synthetic")}
        made = Walk(doc, root, workdir, recipes, {**env, **extra}, port)
        preconditions(made, tiny_model_dir)
        return made

    try:
        yield walk
    finally:
        stop_standin_servers(servers)


def run_walk(walk: Walk) -> str:
    """Run the document's blocks; on a failure, say which block and show the end of what it wrote."""
    script = walk.script()
    (walk.workdir / "blocks.sh").write_text(script)
    done = subprocess.run(["bash", "blocks.sh"], cwd=walk.workdir, env=walk.env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    if done.returncode != 0:
        started = re.findall(r"=== block (\S+)", done.stderr)
        pytest.fail(f"{started[-1] if started else walk.doc} failed (exit {done.returncode}):\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-6000:]}")  # fmt: skip
    print("\n".join(line for line in done.stderr.splitlines() if line.startswith("=== ")), f"(done at {walk.doc})")
    return done.stderr


@pytest.mark.integration
def test_the_docs_blocks_run_as_written(walks: Callable[[str], Walk]) -> None:
    from vcot.io import manifest, storage

    readme = walks("README.md")
    run_walk(readme)
    for output, stage in (("local/convert", "convert"), ("runs/r1/train", "train"), ("runs/r1/grpo", "train"),
                          ("evals/teacher", "evaluate"), ("runs/r1/eval", "evaluate"), ("models/r1", "export")):
        assert manifest.read_manifest(f"{readme.root}/{output}")["stage"] == stage, output

    export = walks("docs/export.md")
    err = run_walk(export)
    assert "serving" in err and (export.workdir / "r1" / "config.json").exists()
    served = storage.read_json(f"{readme.root}/runs/r1/eval-served/metrics.json")
    val = list(manifest.committed_records(f"{readme.root}/runs/r1/distilled", ("val/",)))
    assert served["details"]["mode"] == "served" and served["overall"]["samples"] == len(val) > 0
    stop_standin_servers(Path(export.env["VLLM_STANDIN_DIR"]))

    week = walks("docs/first-week.md")
    run_walk(week)
    served = storage.read_json(f"{week.root}/runs/exp1/eval-served/metrics.json")
    direct = storage.read_json(f"{week.root}/runs/exp1/eval/metrics.json")
    assert served["overall"]["samples"] == direct["overall"]["samples"] > 0  # step 7 scored every val record
    stop_standin_servers(Path(week.env["VLLM_STANDIN_DIR"]))

    for doc in ("docs/convert.md", "docs/train.md"):
        run_walk(walks(doc))
    assert set(RUN) == {"README.md", "docs/export.md", "docs/first-week.md", "docs/convert.md", "docs/train.md"}
