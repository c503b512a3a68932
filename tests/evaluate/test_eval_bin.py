"""BiN (``vcot-evaluate --bin N``) on the tiny offline Qwen2.5-VL: mechanics, and that the SFT scorer is the adapter
the evaluated one continued, else the network with the adapter switched off (the selection rule itself is tested
exactly in tests/scoring/test_gfn.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobs.evaluate import main
from tests.conftest import QWEN25_VL_GENERATION
from tests.evaluate.evaluate_helpers import commit_records, make_record
from vcot.errors import ConfigError, StorageError
from vcot.evaluate.bin import (
    BinSettings,
    bin_record,
    comparison_lines,
    load_sft_adapter,
    rationale_boxes,
    rationale_of,
    sequence_scores,
    sft_model,
)
from vcot.grounding.model_format import ModelFormat
from vcot.io import manifest, shards, storage
from vcot.io.images import load_rgb
from vcot.models.generation import GenerationSettings, Skipped, prompt_text
from vcot.models.loading import load_model_and_processor, model_family
from vcot.scoring import gfn


def _fmt(processor: object, model_dir: Path) -> ModelFormat:
    return ModelFormat.for_processor(processor, model_family(str(model_dir)), coords="norm1000")


def test_sft_scorer_is_the_model_without_its_adapter(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    record = make_record(str(tmp_path), 0, "gqa", [[100, 100, 400, 500]], "red")
    policy, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter_dir))
    base, _ = load_model_and_processor(str(tiny_model_dir))
    prompt = prompt_text(processor, record, GenerationSettings(fmt=_fmt(processor, tiny_model_dir)))
    image = load_rgb(record["image"])
    pairs = [("The <ref>cup</ref> is left. ", " red"), ("It is ", " blue car")]
    with sft_model(policy, "base"):
        sft_joint, sft_answer = sequence_scores(policy, processor, prompt, pairs, image)
    base_joint, base_answer = sequence_scores(base, processor, prompt, pairs, image)
    policy_joint, _ = sequence_scores(policy, processor, prompt, pairs, image)
    assert torch.allclose(sft_joint, base_joint, atol=1e-5) and torch.allclose(sft_answer, base_answer, atol=1e-5)
    assert not torch.allclose(policy_joint, base_joint, atol=1e-3)  # the adapter (random, non-zero) counts
    assert (sft_answer != sft_joint).all()  # the answer-only mean reads fewer tokens


def test_sft_scorer_of_a_continued_adapter_is_the_adapter_it_continued(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    """An RGFN adapter continues the SFT adapter: BiN's SFT model is that adapter (its card's continued_from),
    never the bare base that switching the adapter off would give."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    continued = tmp_path / "continued"
    shutil.copytree(adapter_dir, continued)
    weights = load_file(continued / "adapter_model.safetensors")
    save_file({k: v + 0.5 for k, v in weights.items()}, continued / "adapter_model.safetensors")
    card = json.loads((continued / "vcot-model.json").read_text())
    rgfn_card = {**card, "continued_from": str(adapter_dir), "method": "gfn"}
    (continued / "vcot-model.json").write_text(json.dumps(rgfn_card))

    record = make_record(str(tmp_path), 0, "gqa", [[100, 100, 400, 500]], "red")
    policy, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(continued))
    sft, _ = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter_dir))
    base, _ = load_model_and_processor(str(tiny_model_dir))
    prompt = prompt_text(processor, record, GenerationSettings(fmt=_fmt(processor, tiny_model_dir)))
    image, pairs = load_rgb(record["image"]), [("The <ref>cup</ref> is left. ", " red")]
    assert load_sft_adapter(policy, str(continued)) == "continued"
    with sft_model(policy, "continued"):
        scored, _ = sequence_scores(policy, processor, prompt, pairs, image)
    expected, _ = sequence_scores(sft, processor, prompt, pairs, image)
    assert torch.allclose(scored, expected, atol=1e-5)
    assert not torch.allclose(scored, sequence_scores(base, processor, prompt, pairs, image)[0], atol=1e-3)
    assert not torch.allclose(scored, sequence_scores(policy, processor, prompt, pairs, image)[0], atol=1e-3)

    # SFT continued from another SFT adapter (vcot-train sft --init-adapter) is itself the SFT model
    (continued / "vcot-model.json").write_text(json.dumps({**rgfn_card, "method": "sft"}))
    assert load_sft_adapter(policy, str(continued)) == "policy"

    # the adapter it continued is gone (a relative path read from another folder): one line that says so
    (continued / "vcot-model.json").write_text(json.dumps({**rgfn_card, "continued_from": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match="continued_from"):
        load_sft_adapter(policy, str(continued))


def test_bin_record_answers_by_the_row_mean(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    record = make_record(str(tmp_path), 1, "gqa", [[100, 100, 400, 500]], "red")
    policy, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter_dir))
    settings = GenerationSettings(fmt=_fmt(processor, tiny_model_dir), max_new_tokens=10)
    torch.manual_seed(0)
    choice = bin_record(policy, processor, record, settings, BinSettings(samples=3))
    scores = torch.tensor(choice.scores)
    assert scores.shape == (3, 3) and torch.isfinite(scores).all() and (scores <= 0).all()
    assert "Answer:" in choice.bin_response and "Answer:" in choice.best_response
    assert gfn.bin_select(scores) == int(scores.mean(1).argmax())


def test_bin_skips_a_missing_image_but_stops_on_unreachable_storage(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record(str(tmp_path), 1, "gqa", [[100, 100, 400, 500]], "red")
    policy, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter_dir))
    settings = GenerationSettings(fmt=_fmt(processor, tiny_model_dir), max_new_tokens=4)
    gone = {**record, "image": str(tmp_path / "gone.png")}
    assert bin_record(policy, processor, gone, settings, BinSettings(samples=2)) == Skipped("image_unreadable")
    unreachable = StorageError("cannot reach bucket 'b' at endpoint http://s3: check AWS_ENDPOINT_URL_S3")
    monkeypatch.setattr("vcot.io.images.load_rgb", lambda uri: (_ for _ in ()).throw(unreachable))
    with pytest.raises(StorageError, match="cannot reach"):  # skipped, BiN's figures would cover none
        bin_record(policy, processor, record, settings, BinSettings(samples=2))


def test_bin_skips_a_record_whose_size_disagrees_with_its_image_for_absolute_boxes(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    """As evaluate's greedy answers: qwen2.5-absolute boxes would be read back with the record's (wrong) size."""
    record = make_record(str(tmp_path), 1, "gqa", [[100, 100, 400, 500]], "red")
    turned = {**record, "width": record["height"], "height": record["width"]}
    policy, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter_dir))
    fmt = ModelFormat.for_processor(processor, model_family(str(tiny_model_dir)), coords="qwen2.5-absolute")
    settings = GenerationSettings(fmt=fmt, max_new_tokens=4)
    assert fmt.vision.grid(record["width"], record["height"]) != fmt.vision.grid(turned["width"], turned["height"])
    assert bin_record(policy, processor, turned, settings, BinSettings(samples=2)) == Skipped("grid_mismatch")
    assert not isinstance(bin_record(policy, processor, record, settings, BinSettings(samples=2)), Skipped)


@pytest.mark.parametrize("layout", ["two_turn", "rationale_turn"])
@pytest.mark.parametrize("boxed", [True, False], ids=["boxes", "no-boxes"])
def test_bin_shows_its_answer_with_the_rationale_the_samples_agree_on(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, boxed: bool
) -> None:
    """Sampling and scoring fixed, so the response is the selection's alone: the answer by the row mean, shown with
    the rationale (of those that gave it) whose box the other samples agree with, not the likeliest one; without
    boxes, the likeliest (not the first). Best-of-N keeps its own sample."""
    import dataclasses

    import vcot.evaluate.bin as bin_module

    model, processor = load_model_and_processor(str(tiny_model_dir))
    fmt = dataclasses.replace(_fmt(processor, tiny_model_dir), layout=layout)
    boxes = ["[0, 0, 20, 20]", "[30, 30, 40, 40]", "[0, 0, 20, 24]"] if boxed else ["", "", ""]
    sampled = [f"see <ref>a</ref><box>{box}</box> {i}" if box else f"see {i}" for i, box in enumerate(boxes)]
    answers = ["red", "red", "blue"]
    joint = [[-0.9, -0.4, -0.1], [-0.9, -0.4, -0.1], [-2.0, -2.0, -0.2]]  # row j: answer j after each rationale
    answer_only = [[-0.5, 0.0, 0.0], [0.0, -0.5, 0.0], [0.0, 0.0, -0.1]]  # the diagonal: best-of-N picks sample 2
    monkeypatch.setattr(bin_module, "_generate", lambda *a, do_sample, **k: sampled if do_sample else answers)
    monkeypatch.setattr(bin_module, "sequence_scores",
                        lambda *a: (torch.tensor(joint).flatten(), torch.tensor(answer_only).flatten()))
    record = make_record(str(tmp_path), 0, "gqa", [[100, 100, 400, 500]], "red")
    choice = bin_record(model, processor, record, GenerationSettings(fmt=fmt), BinSettings(samples=3))
    joiner = " " if layout == "rationale_turn" else " Answer:"
    # "red" (rows 0 and 1 of S tie; row 2 is "blue"); rationale 1 is the likelier of the two that gave it, but
    # rationale 0's box is the one rationale 2's nearly repeats
    shown = sampled[0] if boxed else sampled[1]
    assert choice.bin_response == f"{shown}{joiner}red"
    assert choice.best_response == f"{sampled[2]}{joiner}blue"


def test_a_rationale_whose_record_size_cannot_map_its_boxes_has_none() -> None:
    """Read in the model's frame as the scorer reads it; a size that frame cannot use gives no boxes, not an error
    that would end the whole evaluation."""
    absolute = GenerationSettings(fmt=ModelFormat.for_family(coords="qwen2.5-absolute"))
    rationale = "the <ref>cup</ref><box>[217, 343, 242, 393]</box> "
    assert rationale_boxes(rationale, {"width": 391, "height": 500}, absolute) == [(554, 681, 617, 780)]
    assert rationale_boxes(rationale, {"width": 0, "height": None}, absolute) == []
    assert rationale_boxes(rationale, {}, GenerationSettings(fmt=ModelFormat.for_family())) == [(217, 343, 242, 393)]


def test_rationale_is_cut_at_the_last_answer_marker() -> None:
    assert rationale_of("a Answer: b. Answer: c") == "a Answer: b. "
    assert rationale_of("no marker  ") == "no marker "


def test_evaluate_bin_adds_bin_and_best_of_n_beside_greedy(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    records = [make_record(str(tmp_path), i, "gqa", [[100, 100, 400, 500]], "red") for i in range(2)]
    data = commit_records(str(tmp_path), records)
    out = str(tmp_path / "o")
    args = ["--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--data", data, "--output", out]
    assert main([*args, "--max-new-tokens", "8", "--bin", "2", "--bin-scorer", "policy", "--bin-top-p", "0.9"]) == 0
    metrics = storage.read_json(f"{out}/metrics.json")
    assert metrics["prompt_styles"]["styles"] == ["cot", "bin", "best_of_n"]
    assert {"scorer": "policy", "samples": 2, "top_p": 0.9}.items() <= metrics["details"]["bin"].items()
    for style in ("bin", "best_of_n"):
        rows = list(shards.read_jsonl(manifest.committed_files(out, f"predictions-{style}/")[0]))
        assert len(rows) == 2
    lines = comparison_lines(metrics)
    assert lines[0].split()[-3:] == ["greedy", "BiN", "best-of-N"] and lines[1].startswith("overall")
    report = storage.read_text(f"{out}/report.html")
    assert "Answers side by side" in report and "cot - direct" not in report


def test_comparison_keeps_the_direct_answers_beside_bin() -> None:
    """``--prompt-style direct --bin N`` (or ``both``): the greedy answers to the direct prompt are a column of the
    comparison too, not dropped because BiN's own rationales come from the reasoning prompt."""
    accuracy = {"cot": 1.0, "direct": 0.75, "bin": 0.5, "best_of_n": 0.25}
    row = {"subset": "overall", "samples": dict.fromkeys(accuracy, 4), "answer_accuracy": accuracy}
    expected = {
        ("direct", "bin", "best_of_n"): (["direct", "BiN", "best-of-N"], ["0.750", "0.500", "0.250"]),
        ("cot", "direct", "bin", "best_of_n"): (["greedy", "direct", "BiN", "best-of-N"],
                                                ["1.000", "0.750", "0.500", "0.250"]),
    }
    for styles, (names, values) in expected.items():
        header, overall = comparison_lines({"prompt_styles": {"styles": list(styles), "rows": [row]}})
        assert header.split()[3:] == names and overall.split()[2:] == values


def test_bin_needs_a_model_and_two_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--data", str(tmp_path), "--output", str(tmp_path)]
    for given in (["--predictions", str(tmp_path / "p.jsonl"), "--bin", "3"], ["--model", str(tmp_path), "--bin", "1"]):
        with pytest.raises(SystemExit) as exited:
            main([*common, *given])
        assert exited.value.code == 2 and "--bin N needs N >= 2" in capsys.readouterr().err
    for given in (["--bin-temperature", "0"], ["--bin-top-p", "0"], ["--bin-top-p", "1.5"]):
        with pytest.raises(SystemExit) as exited:
            main([*common, "--model", str(tmp_path), "--bin", "5", *given])
        message = "--bin-temperature must be positive and --bin-top-p in (0, 1]"
        assert exited.value.code == 2 and message in capsys.readouterr().err


def test_a_rationale_turn_model_reasons_in_the_analyzer_turn_then_answers(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    """Greedy and BiN on an adapter whose card says rationale_turn: two generations, the answer turn after the
    Analyzer turn; the prompt cues the Analyzer."""
    import dataclasses
    import json
    import shutil

    from vcot.models.loading import MODEL_CARD

    adapter = tmp_path / "analyzer-adapter"
    shutil.copytree(adapter_dir, adapter)
    _, processor = load_model_and_processor(str(tiny_model_dir))
    fmt = dataclasses.replace(_fmt(processor, tiny_model_dir), layout="rationale_turn")
    size = processor.image_processor.size
    fmt = dataclasses.replace(fmt, vision=dataclasses.replace(fmt.vision, min_pixels=size.shortest_edge,
                                                              max_pixels=size.longest_edge))
    (adapter / MODEL_CARD).write_text(json.dumps({"base_model": str(tiny_model_dir), "model_format": fmt.to_dict()}))
    record = make_record(str(tmp_path), 0, "gqa", [[100, 100, 400, 500]], "red")
    assert prompt_text(processor, record, GenerationSettings(fmt=fmt)).endswith("<|im_start|>Analyzer\n")
    data = commit_records(str(tmp_path), [record])
    out = str(tmp_path / "o")
    args = ["--model", str(tiny_model_dir), "--adapter", str(adapter), "--data", data, "--output", out]
    assert main([*args, "--max-new-tokens", "6", "--bin", "2"]) == 0
    metrics = storage.read_json(f"{out}/metrics.json")
    assert metrics["details"]["model_format"]["layout"] == "rationale_turn"
    for style in ("predictions/", "predictions-bin/"):
        rows = list(shards.read_jsonl(manifest.committed_files(out, style)[0]))
        # the answer cue (the end of the Analyzer turn, the assistant's start) is prompt, never prediction; the
        # untrained model may itself write any token, <|im_start|> included, so the cue is what is looked for
        assert len(rows) == 1 and "<|im_start|>assistant" not in rows[0]["prediction"]


def test_vision_placeholders_are_never_sampled(tiny_model_dir: Path) -> None:
    """A sampled rationale is prompted again with the image: an image-pad token in it would break the forward."""
    from vcot.models.loading import vision_token_ids

    _, processor = load_model_and_processor(str(tiny_model_dir))
    tokenizer = processor.tokenizer
    ids = vision_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") in ids and len(ids) == 4


def test_bin_samples_although_the_base_decodes_greedily_by_default(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    """A base whose generation_config.json sets top_k 1 (Qwen2.5-VL's) must not turn BiN's N samples into N copies
    of the greedy response: every rationale would then be scored alike (equal columns of S)."""
    record = make_record(str(tmp_path), 2, "gqa", [[100, 100, 400, 500]], "red")
    policy, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter_dir))
    policy.generation_config.update(**QWEN25_VL_GENERATION)
    settings = GenerationSettings(fmt=_fmt(processor, tiny_model_dir), max_new_tokens=12)
    torch.manual_seed(0)
    scores = torch.tensor(bin_record(policy, processor, record, settings, BinSettings(samples=4)).scores)
    columns = {tuple(round(v, 5) for v in scores[:, i].tolist()) for i in range(4)}
    assert len(columns) > 1, scores


def test_bin_asks_generate_for_its_own_sampling_and_no_penalty(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--bin-temperature and --bin-top-p reach the samples, with no top-k cut; neither the samples nor the SFT
    model's answers take a repetition penalty from the base's generation_config.json."""
    record = make_record(str(tmp_path), 3, "gqa", [[100, 100, 400, 500]], "red")
    policy, processor = load_model_and_processor(str(tiny_model_dir), adapter_uri=str(adapter_dir))
    asked: list[dict[str, object]] = []
    generate = policy.generate
    keys = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")

    def spy(**kwargs: object) -> object:
        asked.append({key: kwargs.get(key) for key in keys})
        return generate(**kwargs)

    monkeypatch.setattr(policy, "generate", spy)
    settings = GenerationSettings(fmt=_fmt(processor, tiny_model_dir), max_new_tokens=8)
    bin_record(policy, processor, record, settings, BinSettings(samples=2, temperature=0.5, top_p=0.9))
    samples = {"do_sample": True, "temperature": 0.5, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0}
    assert asked == [samples, {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                               "repetition_penalty": 1.0}]
