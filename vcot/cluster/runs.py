"""A second (third, ...) run of an overlay next to the first: the same manifests under their own names.

A Job's pod template is immutable, so a run cannot be re-applied over a finished one. Instead,
``make k8s-run RUN_ID=exp2`` writes ``k8s/runs/exp2/kustomization.yaml``: the overlay with the name
suffix ``-exp2`` and the label ``vcot.dev/run=exp2`` (the chain controller follows that label, and the
pods write under ``RUN_ROOT/exp2/``). What every run shares stays with the overlay's own apply and is
left out here: the Namespace, the re-evaluation CronJob and long-running services (a dev MinIO).

A run may do only some stages and read the rest from other runs' committed outputs (docs/k8s.md):
``STAGES=train,evaluate FROM=exp1`` trains on exp1's tokenized data and scores the new adapter on exp1's
records, without converting, distilling or tokenizing again. Each Job reads a folder of another run through
an environment variable, ``<FOLDER>_RUN`` (``TOKENIZED_RUN``, ...), which is this run's id unless a run
says otherwise. ``SET='TRAIN_RECIPE=...'`` changes run.env settings for this run alone. A run made here
leaves the newest-model pointer where it is unless it is given ``UPDATE_POINTER=true``: a trial never
replaces the production model.

``python -m vcot.cluster.runs RUN_ID [OVERLAY] [--stages ...] [--from ...] [--set K=V ...] [--update-pointer]``
prints the folder it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from vcot.cluster import TRAINJOB_API
from vcot.errors import VcotError
from vcot.io import layout

RUNS_DIR = Path("k8s/runs")
K8S_DIR = Path(__file__).resolve().parents[2] / "k8s"
BASE_RUN_ENV = K8S_DIR / "base" / "settings" / "run.env"
SETTINGS = Path("settings") / "run.env"
"""Where an overlay keeps its run.env: in its settings component, listed first (k8s/base/settings/kustomization.yaml)."""
# A label value and a name suffix; short, so that Job and pod names stay under 63 characters.
_RUN_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$")
SHARED_KINDS = {"Namespace": "v1", "CronJob": "batch/v1", "Deployment": "apps/v1", "Service": "v1"}
PER_RUN = "vcot.dev/per-run"
"""A label on an object of a shared kind that each run needs its own of (multi-node's headless Service)."""
RUN_LABEL = "vcot.dev/run"
TRAINER = "kubeflow-trainer"
"""The component that turns the training Jobs into Kubeflow Trainer TrainJobs (k8s/components/kubeflow-trainer)."""
TRAINJOB_STAGES = ("train", "grpo", "rgfn")
"""The stages that run as TrainJobs when the overlay includes :data:`TRAINER`."""
TRAINER_REFERENCES = K8S_DIR / "components" / TRAINER / "references.yaml"
"""Where names and labels sit inside the Trainer's kinds: a run's kustomization needs it too (a component's
``configurations`` do not reach the kustomizations built on it), as a copy beside it (kustomize loads no file from
outside a kustomization's folder)."""
INPUT_ANNOTATION = "vcot.dev/input-"
"""``vcot.dev/input-<folder>: <run>`` on a TrainJob: the run a folder is read from (FROM), copied into its env."""

WRITES = {
    "convert": layout.RECORDS,
    "distill": layout.DISTILLED,
    "tokenize": layout.TOKENIZED,
    "train": layout.TRAIN,
    "grpo": layout.GRPO,
    "rgfn": layout.RGFN,
    "evaluate": layout.EVAL,
}
"""Each stage (its Job's ``app.kubernetes.io/component``) and the run folder it writes."""
READS = {
    "distill": (layout.RECORDS,),
    "tokenize": (layout.DISTILLED,),
    "train": (layout.TOKENIZED,),
    "grpo": (layout.DISTILLED, layout.TRAIN),
    "rgfn": (layout.DISTILLED, layout.TRAIN),
    "evaluate": (layout.DISTILLED, layout.TRAIN),  # with components/grpo or rgfn: their folder, not train's
}
"""The run folders each stage's Job reads (``$(RUN_ROOT)/$(<FOLDER>_RUN)/<folder>`` in its args)."""
SCORED = (layout.GRPO, layout.RGFN)
"""The stages whose component (``k8s/components/<stage>``) makes evaluate score their adapter instead of train's."""
COMPONENTS_DIR = K8S_DIR / "components"
_LISTS = ("resources", "components")
INPUT_FOLDERS = (layout.RECORDS, layout.DISTILLED, layout.TOKENIZED, layout.TRAIN, layout.GRPO, layout.RGFN)
BUILD_TIME_SETTINGS = ("CONVERT_SHARDS", "DISTILL_SHARDS", "GPUS_PER_NODE", "TRAIN_NODES")
"""run.env keys the overlay's components copy into the Jobs' specs when it is built: a run cannot change them."""


def input_variable(folder: str) -> str:
    """
    >>> input_variable("tokenized")
    'TOKENIZED_RUN'
    """
    return f"{folder.upper()}_RUN"


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


def parse_stages(text: str) -> tuple[str, ...]:
    """The stages a run does, in chain order; empty: every stage of the overlay.

    >>> parse_stages("evaluate, train")
    ('train', 'evaluate')
    >>> parse_stages("train,eval")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vcot.errors.VcotError: STAGES names 'eval', not a stage: use some of convert, distill, tokenize, train, ...
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in WRITES:
            raise VcotError(f"STAGES names {name!r}, not a stage: use some of {', '.join(WRITES)}")
    return tuple(stage for stage in WRITES if stage in names)


def parse_from(text: str) -> dict[str, str]:
    """``FROM``: a run id every input comes from, and/or ``folder=run`` pairs; ``""`` keys the default run.

    >>> parse_from("exp1,train=exp2")
    {'': 'exp1', 'train': 'exp2'}
    """
    sources: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        folder, _, run = item.rpartition("=")
        if folder and folder not in INPUT_FOLDERS:
            raise VcotError(f"FROM names {folder!r}, not a folder a stage reads: use {', '.join(INPUT_FOLDERS)}")
        sources[folder] = check_run_id(run)
    return sources


def stage_reads(stage: str, components: Collection[str] = ()) -> tuple[str, ...]:
    """The run folders ``stage`` reads in an overlay with ``components``.

    >>> stage_reads("evaluate"), stage_reads("evaluate", {"grpo", "gpu-count"})
    (('distilled', 'train'), ('distilled', 'grpo'))
    """
    scored = [folder for folder in SCORED if folder in components]
    if stage == "evaluate" and scored:  # components/grpo or rgfn: evaluate scores their adapter instead of train's
        return (layout.DISTILLED, scored[0])
    return READS.get(stage, ())


def resolve_inputs(
    run_id: str, stages: Sequence[str], sources: dict[str, str], components: Collection[str] = ()
) -> dict[str, dict[str, str]]:
    """For each stage of this run, the folders it reads but this run does not make, and the run they come from.

    ``components``: the overlay's (:func:`overlay_components`). A run that trains a new SFT adapter but not the
    GRPO (RGFN) one evaluate scores must name that run itself: a bare ``FROM`` would score another run's adapter.

    >>> resolve_inputs("exp3", ("train", "evaluate"), {"": "exp1"})
    {'train': {'tokenized': 'exp1'}, 'evaluate': {'distilled': 'exp1'}}
    >>> resolve_inputs("exp4", ("evaluate",), {"distilled": "exp1", "train": "exp2"})
    {'evaluate': {'distilled': 'exp1', 'train': 'exp2'}}
    >>> resolve_inputs("exp5", ("train", "evaluate"), {"": "exp1"}, {"grpo"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vcot.errors.VcotError: evaluate scores the grpo adapter ... (STAGES=train,grpo,evaluate) or ... (FROM=exp1,grpo=<run id>)
    """
    if sources and not stages:
        raise VcotError("FROM needs STAGES: name the stages this run does (e.g. STAGES=train,evaluate)")
    if run_id in sources.values():
        raise VcotError(f"FROM names this run ({run_id}): name the run whose outputs it reads")
    made = {WRITES[stage] for stage in stages}
    for folder in sources.keys() & made:
        if folder:
            raise VcotError(f"FROM names {folder}, which this run makes itself ({', '.join(stages)}): drop it from FROM")
    inputs: dict[str, dict[str, str]] = {}
    for stage in stages:
        reads = {}
        for folder in stage_reads(stage, components):
            if folder in made:
                continue
            if folder in SCORED and layout.TRAIN in made and folder not in sources:
                with_it = ",".join(name for name in WRITES if name in (*stages, folder))
                given = ",".join(f"{key}={run}" if key else run for key, run in sources.items())
                raise VcotError(
                    f"{stage} scores the {folder} adapter (components/{folder}), which this run does not make although "
                    f"it trains a new SFT adapter: add {folder} to STAGES (STAGES={with_it}) or name the run to score "
                    f"(FROM={given + ',' if given else ''}{folder}=<run id>)"
                )
            run = sources.get(folder) or sources.get("")
            if not run:
                raise VcotError(
                    f"{stage} reads {folder}/, which this run does not make: add FROM=<run id> "
                    f"(or FROM={folder}=<run id>)"
                )
            reads[folder] = run
        if reads:
            inputs[stage] = reads
    return inputs


def overlay_components(overlay: Path) -> set[str]:
    """The names of the ``k8s/components/`` an overlay includes, itself or through the overlays it builds on."""
    found: set[str] = set()
    seen: set[Path] = set()
    folders = [overlay.resolve()]
    while folders:
        folder = folders.pop()
        if folder in seen or not (folder / "kustomization.yaml").is_file():
            continue  # a file resource (a Job's YAML) or a remote one: no kustomization to follow
        seen.add(folder)
        if folder.parent == COMPONENTS_DIR.resolve():
            found.add(folder.name)
        text = (folder / "kustomization.yaml").read_text(encoding="utf-8")
        folders += [(folder / entry).resolve() for entry in _listed(text, _LISTS)]
    return found


def _listed(text: str, keys: Sequence[str]) -> list[str]:
    r"""The entries of the top-level YAML lists ``keys`` (block or ``[a, b]`` style; comments dropped): enough of
    YAML for a kustomization's paths, so that this module needs the standard library only.

    >>> _listed("resources: [../../base]\ncomponents:\n  # - ../c/grpo\n  - ../c/gpu  # on\npatches:\n  - x", _LISTS)
    ['../../base', '../c/gpu']
    """
    entries: list[str] = []
    key = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if not line[0].isspace() and not line.startswith("-"):
            key, _, rest = line.partition(":")
            rest = rest.strip()
            if key in keys and rest.startswith("["):
                entries += [item.strip().strip("'\"") for item in rest.strip("[]").split(",") if item.strip()]
        elif key in keys and line.lstrip().startswith("- "):
            entries.append(line.lstrip()[2:].strip().strip("'\""))
    return entries


def known_settings(overlay: Path) -> set[str]:
    """The run.env keys of the base and of the overlay (a key the Jobs never read would be set for nothing)."""
    keys: set[str] = set()
    for env_file in (BASE_RUN_ENV, overlay / SETTINGS, overlay / "run.env"):
        if env_file.is_file():
            lines = env_file.read_text(encoding="utf-8").splitlines()
            keys |= {line.split("=", 1)[0].strip() for line in lines if "=" in line and not line.lstrip().startswith("#")}
    return keys


def parse_settings(items: Sequence[str], known: set[str]) -> dict[str, str]:
    """``KEY=VALUE`` run.env overrides for this run alone.

    >>> parse_settings(["TRAIN_RECIPE=s3://b/lr2.yaml"], {"TRAIN_RECIPE"})
    {'TRAIN_RECIPE': 's3://b/lr2.yaml'}
    """
    settings: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise VcotError(f"SET item {item!r} is not KEY=VALUE: e.g. SET='TRAIN_RECIPE=s3://vcot/recipes/lr2.yaml'")
        if key in BUILD_TIME_SETTINGS:
            raise VcotError(f"{key} is read when the overlay is built: change it in the overlay's settings/run.env")
        if key == "UPDATE_POINTER":
            raise VcotError("set UPDATE_POINTER=true (make) or --update-pointer, not through SET")
        if known and key not in known:
            raise VcotError(f"SET names {key}, which is not in run.env (k8s/base/settings/run.env lists every setting)")
        settings[key] = value
    return settings


def run_kustomization(
    run_id: str,
    overlay_from_run_dir: str,
    *,
    stages: Sequence[str] = (),
    inputs: dict[str, dict[str, str]] | None = None,
    settings: dict[str, str] | None = None,
    update_pointer: bool = False,
    trainer: bool = False,
) -> str:
    """The kustomization.yaml text of one run (``overlay_from_run_dir``: the overlay, relative to it; ``trainer``:
    it includes :data:`TRAINER`, whose TrainJobs need their own patches and, beside it, :data:`TRAINER_REFERENCES`)."""
    patches = ["  # Shared by every run: created by the overlay's own apply, left out here."]
    for kind, api_version in SHARED_KINDS.items():
        patches.append(_patch(f"kind: {kind}, labelSelector: '{PER_RUN}!=true'", _deleted(kind, api_version)))
    # A per-run Service selects this run's pods only (the labels transformer below leaves selectors alone).
    selector = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "any"},
                "spec": {"selector": {RUN_LABEL: run_id}}}
    patches.append(_patch(f"kind: Service, labelSelector: '{PER_RUN}=true'", selector))
    if stages:  # the stages done elsewhere: their Jobs are left out; the chain starts with the first one left
        patches.append("  # The stages this run does not do (STAGES).")
        selector = f"vcot.dev/step,app.kubernetes.io/component notin ({','.join(stages)})"
        patches.append(_patch(f"kind: Job, labelSelector: '{selector}'", _deleted("Job", "batch/v1")))
        if trainer:
            patches.append(_patch(f"kind: TrainJob, labelSelector: '{selector}'", _deleted("TrainJob", TRAINJOB_API)))
        if trainer and not set(stages) & set(TRAINJOB_STAGES):  # no TrainJob to wait for: follow the Jobs alone
            patches.append("  # No TrainJob in this run: the chain controller follows its Jobs alone.")
            patches.append(f"  - target: {{kind: Job, name: vcot-chain}}\n    patch: '{json.dumps(_NO_TRAINJOBS)}'")
    replacements: list[str] = []
    for stage, reads in (inputs or {}).items():  # the folders it reads from other runs (FROM)
        read = ", ".join(f"{run}/{folder}" for folder, run in reads.items())
        patches.append(f"  # {stage} reads {read} (FROM).")
        if trainer and stage in TRAINJOB_STAGES:
            patches.append(_patch(f"kind: TrainJob, name: vcot-{stage}", _input_annotations(reads)))
            replacements += [_input_replacement(stage, folder) for folder in reads]
            continue
        env = [{"name": input_variable(folder), "value": run} for folder, run in reads.items()]
        pod = {"containers": [{"name": "main", "env": env}]}
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "any"}, "spec": {"template": {"spec": pod}}}
        patches.append(_patch(f"kind: Job, labelSelector: 'vcot.dev/step,app.kubernetes.io/component={stage}'", body))
    literals = {"UPDATE_POINTER": "true" if update_pointer else "false", **(settings or {})}
    return (
        f"# Run {run_id} of {overlay_from_run_dir}, written by `make k8s-run RUN_ID={run_id}` (vcot/cluster/runs.py).\n"
        "# Delete the run (its Jobs, pods and config, not its data) with: kubectl delete -k <this folder>\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{overlay_from_run_dir}]\n"
        f"nameSuffix: -{run_id}\n"
        "labels:\n"
        f"  - pairs: {{vcot.dev/run: {run_id}}}\n"
        "    includeTemplates: true\n"
        "# This run's settings over the overlay's run.env (SET; UPDATE_POINTER: whether it moves latest.json).\n"
        "configMapGenerator:\n"
        "  - name: vcot-run\n"
        "    behavior: merge\n"
        "    literals:\n"
        + "".join(f"      - {json.dumps(f'{key}={value}')}\n" for key, value in literals.items())
        + (f"configurations: [{TRAINER_REFERENCES.name}] # names and labels in the TrainJobs\n" if trainer else "")
        + "patches:\n"
        + "".join(f"{line}\n" for line in patches)
        + ("replacements: # the runs a TrainJob reads from (FROM), from its annotations\n" if replacements else "")
        + "".join(replacements)
    )


_NO_TRAINJOBS = [
    {"op": "test", "path": "/spec/template/spec/containers/0/args/3", "value": "--trainjobs"},
    {"op": "remove", "path": "/spec/template/spec/containers/0/args/3"},
]
"""A JSON patch dropping the chain controller's ``--trainjobs`` (components/kubeflow-trainer adds it fourth)."""


def _input_annotations(reads: dict[str, str]) -> dict[str, Any]:
    """A TrainJob's FROM, as annotations (a strategic merge patch cannot merge a TrainJob's env: kustomize does not
    know its schema and would replace the whole list)."""
    annotations = {f"{INPUT_ANNOTATION}{folder}": run for folder, run in reads.items()}
    return {"apiVersion": TRAINJOB_API, "kind": "TrainJob", "metadata": {"name": "any", "annotations": annotations}}


def _input_replacement(stage: str, folder: str) -> str:
    """A replacement setting one ``<FOLDER>_RUN`` of a TrainJob's env from its :func:`_input_annotations`."""
    source = f"metadata.annotations.[{INPUT_ANNOTATION}{folder}]"
    target = f"spec.trainer.env.[name={input_variable(folder)}].value"
    return (
        f"  - source: {{kind: TrainJob, name: vcot-{stage}, fieldPath: '{source}'}}\n"
        f"    targets: [{{select: {{kind: TrainJob, name: vcot-{stage}}}, fieldPaths: ['{target}']}}]\n"
    )


def _deleted(kind: str, api_version: str) -> dict[str, Any]:
    return {"$patch": "delete", "apiVersion": api_version, "kind": kind, "metadata": {"name": "any"}}


def _patch(target: str, body: dict[str, Any]) -> str:
    """One ``patches:`` entry; the body (a strategic merge patch) as JSON, which is YAML too."""
    return f"  - target: {{{target}}}\n    patch: '{json.dumps(body)}'"


def write_run(
    run_id: str,
    overlay: str | Path,
    runs_dir: Path = RUNS_DIR,
    *,
    stages: str = "",
    sources: str = "",
    settings: Sequence[str] = (),
    update_pointer: bool = False,
) -> Path:
    """Write ``runs_dir/<run_id>/kustomization.yaml`` for ``overlay``; returns the folder.

    ``stages``, ``sources`` and ``settings`` are make's ``STAGES``, ``FROM`` and ``SET`` (:func:`parse_stages`,
    :func:`parse_from`, :func:`parse_settings`), checked before anything is written.
    """
    check_run_id(run_id)
    overlay = Path(overlay)
    if not (overlay / "kustomization.yaml").is_file():
        raise VcotError(f"{overlay} has no kustomization.yaml: give an overlay folder, e.g. k8s/overlays/gpu")
    chosen = parse_stages(stages)
    components = overlay_components(overlay)
    inputs = resolve_inputs(run_id, chosen, parse_from(sources), components)
    overrides = parse_settings(settings, known_settings(overlay))
    folder = runs_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(overlay.resolve(), folder.resolve())
    trainer = TRAINER in components
    text = run_kustomization(
        run_id, relative, stages=chosen, inputs=inputs, settings=overrides, update_pointer=update_pointer,
        trainer=trainer,
    )  # fmt: skip
    if trainer:
        (folder / TRAINER_REFERENCES.name).write_text(TRAINER_REFERENCES.read_text(encoding="utf-8"))
    (folder / "kustomization.yaml").write_text(text)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.cluster.runs", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", help="1-20 lowercase letters, digits and '-'")
    parser.add_argument("overlay", nargs="?", default="k8s/overlays/gpu", help="overlay folder (default k8s/overlays/gpu)")
    parser.add_argument("--stages", default="", help="the stages this run does, e.g. train,evaluate (default: all)")
    parser.add_argument(
        "--from", dest="sources", default="", help="the run its other inputs come from, and/or folder=run pairs"
    )
    parser.add_argument("--set", dest="settings", action="append", default=[], help="KEY=VALUE over run.env (repeat)")
    parser.add_argument("--update-pointer", action="store_true", help="this run moves RUN_ROOT/latest.json")
    args = parser.parse_args(argv)
    try:
        print(
            write_run(
                args.run_id, args.overlay, stages=args.stages, sources=args.sources, settings=args.settings,
                update_pointer=args.update_pointer,
            )  # fmt: skip
        )
    except VcotError as exc:
        print(f"k8s-run: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
