#!/usr/bin/env bash
# make image-smoke: run one real stage from the CPU image against the local S3 server, the way a pod
# runs it (non-root, read-only root filesystem, /tmp and /cache as scratch), and check its output.
# Usage: .ci/image-smoke.sh IMAGE   (PY = the host's Python with vcot installed, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:?usage: .ci/image-smoke.sh IMAGE}
PY=${PY:-.venv/bin/python}
read -ra PODMAN <<< "${PODMAN:-podman}"  # the Makefile's PODMAN (its storage driver)

started=0
if ! "$PY" -m vcot.dev.local_s3 status >/dev/null 2>&1; then "$PY" -m vcot.dev.local_s3 up >/dev/null && started=1; fi
trap '[ $started = 1 ] && "$PY" -m vcot.dev.local_s3 down >/dev/null' EXIT
eval "$("$PY" -m vcot.dev.local_s3 env)"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ENDPOINT_URL_S3 AWS_REGION VCOT_S3_ADDRESSING_STYLE
prefix="s3://${VCOT_BUCKET}/image-smoke/$(date +%s)-$$"

pod() { # run a command in the image as a pod would
    "${PODMAN[@]}" run --rm --runtime runc --network host --no-healthcheck --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
        --user 10001:10001 --read-only --tmpfs /tmp --tmpfs /cache \
        -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_ENDPOINT_URL_S3 -e AWS_REGION \
        -e VCOT_S3_ADDRESSING_STYLE -e VCOT_LOG_FORMAT=json -e JOB_COMPLETION_INDEX=0 \
        "$IMAGE" "$@"
}

"$PY" -m vcot.dev.synthetic "$prefix/synthetic" --num-records 16
time pod vcot-convert --source viscot --input "$prefix/synthetic" --output "$prefix/records"
"$PY" - "$prefix/records" <<'PYTHON'
import sys
from vcot.io import manifest
found = manifest.read_manifest(sys.argv[1])
assert found["stage"] == "convert" and found["records"] == 16, found
print(f"image-smoke: vcot-convert in the image committed {found['records']} records to {sys.argv[1]}")
PYTHON
