"""Where a run's stages write: one layout for the Jobs (k8s/), the Makefile's local runs and the docs.

A run lives in its own folder, ``<root>/<run id>/``, with one sub-folder per stage output; the newest-model
pointer and the scheduled re-evaluations sit beside the runs, in ``<root>/``::

    <root>/<run id>/records     convert's records
    <root>/<run id>/distilled   distill's records (the training set)
    <root>/<run id>/tokenized   tokenize's Parquet rows
    <root>/<run id>/train       the SFT run (adapter/, checkpoints/, ...)
    <root>/<run id>/grpo        the GRPO run (components/grpo, make local-grpo)
    <root>/<run id>/rgfn        the RGFN run (components/rgfn)
    <root>/<run id>/eval        evaluate's predictions, metrics and report
    <root>/<run id>/eval-sft    the SFT start's evaluation, beside an RL run's own (make local-rgfn)
    <root>/latest.json          the newest model (a run that says so moves it, the CronJob follows it)
    <root>/evals/               scheduled re-evaluations (evals/served/<name>: of a served model)
    <root>/eval-history.jsonl   their history, each entry compared with the earlier ones on the same data
    <root>/_teacher_cache/      the teacher's answers, shared by every run: no run pays twice for one request

A run may read another run's folders instead of making them (``make k8s-run ... FROM=exp1``, docs/k8s.md).

The names are spelled out in the Kubernetes manifests and the Makefile (neither can import Python);
tests/io/test_layout.py keeps those copies equal to :data:`RUN_FOLDERS`.
"""

from __future__ import annotations

RECORDS, DISTILLED, TOKENIZED, TRAIN, GRPO, EVAL = "records", "distilled", "tokenized", "train", "grpo", "eval"
RGFN, EVAL_SFT = "rgfn", "eval-sft"
RUN_FOLDERS = (RECORDS, DISTILLED, TOKENIZED, TRAIN, GRPO, RGFN, EVAL, EVAL_SFT)
MODEL_CARD = "vcot-model.json"
"""Written next to an adapter and into an export: the base model and the
:class:`~vcot.grounding.model_format.ModelFormat` it was trained with."""
POINTER = "latest.json"
SCHEDULED_EVALS = "evals"
HISTORY = "eval-history.jsonl"
TEACHER_CACHE = "_teacher_cache"  # "_": never a run id (vcot.cluster.runs), so no run can collide with it


def stage_output(root: str, run_id: str, folder: str) -> str:
    """
    >>> stage_output("s3://vcot/runs", "exp2", TOKENIZED)
    's3://vcot/runs/exp2/tokenized'
    """
    if folder not in RUN_FOLDERS:
        raise ValueError(f"{folder!r} is not a run folder: use one of {', '.join(RUN_FOLDERS)}")
    from vcot.io import storage  # here: the names above serve vcot.cluster.runs, which needs no installed package

    return storage.join(root, run_id, folder)
