"""The export stage: a committed train run in, a servable model folder + a ``_SUCCESS`` manifest out.

Output layout (the hub's, so ``vllm serve OUTPUT`` and ``huggingface-cli upload REPO OUTPUT`` take it as is)::

    OUTPUT/config.json, generation_config.json, model*.safetensors   the base with the adapter merged in, 16-bit
    OUTPUT/processor_config.json, preprocessor_config.json, video_preprocessor_config.json, tokenizer*,
    OUTPUT/chat_template.jinja
    OUTPUT/vcot-model.json     the adapter's card (base model, model format) and where the weights came from
    OUTPUT/README.md           the model card (vcot.export.card)
    OUTPUT/_SUCCESS            files, config, lineage (the run, and the evaluate output whose metrics the card shows)

The merge happens in a local scratch folder (``TMPDIR``): it needs room for the 16-bit model (~16 GB for 7B).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vcot.config import option, redacted
from vcot.errors import VcotError
from vcot.export.card import model_card
from vcot.io import layout, manifest, storage
from vcot.log import get_logger

STAGE = "export"
log = get_logger(__name__)


@dataclass
class ExportConfig:
    """Merge a train run's adapter into its base model: a 16-bit model folder to serve with vLLM or upload."""

    run: str = option(help="A committed train run (its adapter/ holds vcot-model.json): s3://bucket/prefix or a path.")
    output: str = option(help="Where to write the model folder: an s3:// prefix or a local folder.")
    model: str = option(
        "", help="The base model: a folder, s3:// prefix or hub id (default: base_model in the adapter's vcot-model.json)."
    )
    evaluation: str = option(
        "",
        help="A committed evaluate output of this run's adapter whose metrics go in the model card "
        "(default: <run's parent>/eval when it evaluated this adapter).",
    )
    dtype: Literal["bfloat16", "float16"] = option("bfloat16", help="Weights' dtype: bfloat16 or float16.")
    overwrite: bool = option(False, help="Rewrite an output that is already committed.")

    def __post_init__(self) -> None:
        if self.output.rstrip("/") == self.run.rstrip("/"):
            raise ValueError("--output must differ from --run")

    @property
    def adapter(self) -> str:
        return storage.join(self.run, "adapter")


def find_evaluation(config: ExportConfig) -> str | None:
    """The evaluate output whose metrics the card shows: ``--evaluation``, else the run's sibling ``eval/`` when
    it scored this version of this run's adapter (a run's eval/ may have scored another method's adapter, or the
    run before an ``--overwrite`` retrained it)."""
    uri = config.evaluation or storage.join(storage.parent(config.run), layout.EVAL)
    if manifest.committed_stage(uri) != "evaluate":
        if config.evaluation:
            raise VcotError(f"--evaluation {uri} is not a committed evaluate output: pass one, or leave it empty")
        return None
    if config.evaluation:
        return uri
    evaluated = manifest.read_manifest(uri)
    if str(evaluated.get("config", {}).get("adapter") or "").rstrip("/") != config.adapter.rstrip("/"):
        return None
    run = storage.place(config.run)
    recorded = [i for i in evaluated.get("inputs") or [] if storage.place(str(i.get("uri"))) == run]
    if not recorded or not manifest.is_current(recorded[0]):
        log.warning("evaluation_not_shown", evaluation=uri, run=config.run,
                    why="it scored another version of this run (retrained since), or does not say which",
                    hint="evaluate the run again (--overwrite), or name an evaluation with --evaluation")  # fmt: skip
        return None
    return uri


def export(config: ExportConfig) -> dict[str, Any] | None:
    """Run the stage; returns the manifest written, or ``None`` when the output was already committed."""
    from vcot.io.shards import file_entry
    from vcot.models.loading import MODEL_CARD, check_base_model, full_finetune_model, read_model_card, save_merged

    run_manifest = manifest.read_manifest(config.run, expect_stage="train")
    full_model = full_finetune_model(config.adapter)
    if full_model is not None:
        raise VcotError(
            f"{config.run} is a full fine-tune: its model/ is already a standalone model with its processor and "
            f"card; serve or upload {full_model} as it is"
        )
    if not storage.exists(storage.join(config.adapter, MODEL_CARD)):
        raise VcotError(f"{config.adapter} has no {MODEL_CARD}: export a run that vcot-train committed")
    card = read_model_card(config.adapter)
    model_uri = config.model or str(card["base_model"])
    evaluation = find_evaluation(config)
    inputs = [config.run, *([evaluation] if evaluation else [])]
    check_base_model(card, model_uri)  # before prepare_output: --overwrite must not delete an export for a wrong --model
    if not manifest.prepare_output(
        config.output, stage=STAGE, inputs=[*inputs, model_uri], overwrite=config.overwrite
    ):
        log.info("already_committed", output=config.output, hint="pass --overwrite to redo it")
        return None

    with tempfile.TemporaryDirectory(prefix="vcot-export-") as tmp:
        folder = Path(tmp) / "model"
        processor = save_merged(model_uri, config.adapter, folder, dtype=config.dtype)
        exported = {**card, "base_model": model_uri, "merged_from": config.adapter, "dtype": config.dtype}
        (folder / MODEL_CARD).write_text(storage.dumps_json(exported), encoding="utf-8")
        readme = model_card(
            card=exported,
            run=config.run,
            run_manifest=run_manifest,
            train_metrics=_read_json_or_empty(storage.join(config.run, "metrics.json")),
            evaluation=_read_json_or_empty(storage.join(evaluation, "metrics.json")) if evaluation else None,
            evaluation_uri=evaluation,
            processor=processor,
            dtype=config.dtype,
        )
        (folder / "README.md").write_text(readme, encoding="utf-8")
        files = [file_entry(p, p.relative_to(folder).as_posix()) for p in sorted(folder.rglob("*")) if p.is_file()]
        storage.upload_dir(folder, config.output, move=True)  # the scratch copy goes with the folder
    committed = manifest.commit(
        config.output,
        stage=STAGE,
        files=files,
        config={**redacted(config), "model": model_uri, "model_format": card.get("model_format")},
        inputs=inputs,
        stats={"bytes": sum(f.bytes for f in files), "dtype": config.dtype},
    )
    log.info("committed", output=config.output, files=len(files), bytes=committed["stats"]["bytes"])
    return committed


def _read_json_or_empty(uri: str) -> dict[str, Any]:
    return storage.read_json(uri) if storage.exists(uri) else {}
