"""A second (third, ...) run of an overlay next to the first: the same manifests under their own names.

A Job's pod template is immutable, so a run cannot be re-applied over a finished one. Instead,
``make k8s-run RUN_ID=exp2`` writes ``k8s/runs/exp2/kustomization.yaml``: the overlay with the name
suffix ``-exp2`` and the label ``vcot.dev/run=exp2`` (the chain controller follows that label, and the
pods write under ``RUN_ROOT/exp2/``). What every run shares stays with the overlay's own apply and is
left out here: the Namespace, the re-evaluation CronJob and long-running services (a dev MinIO).

``python -m vcot.k8s_runs RUN_ID [OVERLAY]`` prints the folder it wrote.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from vcot.errors import VcotError

RUNS_DIR = Path("k8s/runs")
# A label value and a name suffix; short, so that Job and pod names stay under 63 characters.
_RUN_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$")
SHARED_KINDS = {"Namespace": "v1", "CronJob": "batch/v1", "Deployment": "apps/v1", "Service": "v1"}
PER_RUN = "vcot.dev/per-run"
"""A label on an object of a shared kind that each run needs its own of (multi-node's headless Service)."""


def check_run_id(run_id: str) -> str:
    """A run id usable as a name suffix and a label value.

    >>> check_run_id("exp-2")
    'exp-2'
    >>> check_run_id("Exp_2")
    Traceback (most recent call last):
    ...
    vcot.errors.VcotError: run id 'Exp_2' is not valid: use 1-20 lowercase letters, digits and '-', e.g. exp2
    """
    if not _RUN_ID.match(run_id):
        raise VcotError(f"run id {run_id!r} is not valid: use 1-20 lowercase letters, digits and '-', e.g. exp2")
    return run_id


def run_kustomization(run_id: str, overlay_from_run_dir: str) -> str:
    """The kustomization.yaml text of one run (``overlay_from_run_dir``: the overlay, relative to it)."""
    deletes = "".join(
        f"  - target: {{kind: {kind}, labelSelector: '{PER_RUN}!=true'}}\n"
        f"    patch: |-\n"
        f"      $patch: delete\n"
        f"      apiVersion: {api_version}\n"
        f"      kind: {kind}\n"
        f"      metadata: {{name: any}}\n"
        for kind, api_version in SHARED_KINDS.items()
    )
    return (
        f"# Run {run_id} of {overlay_from_run_dir}, written by `make k8s-run RUN_ID={run_id}` (vcot/k8s_runs.py).\n"
        "# Delete the run (its Jobs, pods and config, not its data) with: kubectl delete -k <this folder>\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{overlay_from_run_dir}]\n"
        f"nameSuffix: -{run_id}\n"
        "labels:\n"
        f"  - pairs: {{vcot.dev/run: {run_id}}}\n"
        "    includeTemplates: true\n"
        "# Shared by every run: created by the overlay's own apply, left out here.\n"
        f"patches:\n{deletes}"
    )


def write_run(run_id: str, overlay: str | Path, runs_dir: Path = RUNS_DIR) -> Path:
    """Write ``runs_dir/<run_id>/kustomization.yaml`` for ``overlay``; returns the folder."""
    check_run_id(run_id)
    overlay = Path(overlay)
    if not (overlay / "kustomization.yaml").is_file():
        raise VcotError(f"{overlay} has no kustomization.yaml: give an overlay folder, e.g. k8s/overlays/gpu")
    folder = runs_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(overlay.resolve(), folder.resolve())
    (folder / "kustomization.yaml").write_text(run_kustomization(run_id, relative))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.k8s_runs", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", help="1-20 lowercase letters, digits and '-'")
    parser.add_argument("overlay", nargs="?", default="k8s/overlays/gpu", help="overlay folder (default k8s/overlays/gpu)")
    args = parser.parse_args(argv)
    try:
        print(write_run(args.run_id, args.overlay))
    except VcotError as exc:
        print(f"k8s-run: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
