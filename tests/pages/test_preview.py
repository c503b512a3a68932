"""vcot-preview: a seeded sample of records as one HTML page, rendered in headless Chromium with the boxes where
the records say (objects in green, the rationale's boxes dashed orange on top of them)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.convert.own_data import write_own_data
from tests.train.conftest import write_record_output
from vcot.convert import ConvertConfig, convert
from vcot.io import manifest, storage
from vcot.pages.preview import OBJECT_COLOR, RATIONALE_COLOR, PreviewConfig, preview

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_CARD_ID = re.compile(r'<div class="record" data-id="([^"]+)"')


def _shown(page: str) -> list[str]:
    return _CARD_ID.findall(page)


def test_a_seeded_sample_in_data_order_with_unusable_records_flagged(tmp_path: Path) -> None:
    data = write_record_output(str(tmp_path / "records"), 40, seed=0, unusable=40)  # no record has a rationale
    order = [r["id"] for r in manifest.committed_records(data, ("train/",))]
    pages = {}
    for seed in (0, 0, 1):
        output = str(tmp_path / f"preview-{seed}-{len(pages)}.html")
        preview(PreviewConfig(data=data, output=output, max=5, seed=seed))
        pages[output] = Path(output).read_text()
    first, again, other = (_shown(page) for page in pages.values())
    assert len(first) == 5 and first == again and first != other
    assert first == sorted(first, key=order.index)  # shown in data order
    page = next(iter(pages.values()))
    assert page.count("training skips it: no_rationale") == 5
    assert f"<td>shapes</td><td>{len(order)}</td>" in page and f"5 of {len(order)} records" in page


def test_the_command_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "jobs.preview", "--data", str(tmp_path), "--output", str(tmp_path / "p.txt")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "--output must name an .html file" in result.stderr
    command[-1] = str(tmp_path / "p.html")
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "vcot-preview: error:" in result.stderr and not (tmp_path / "p.html").exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_page_inside_a_committed_output_is_refused(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page would sit in a folder whose manifest does not list it, and convert --overwrite would delete it."""
    from jobs.preview import main as preview_main
    from vcot.errors import ConfigError

    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    data = write_record_output(f"{root}/runs/r1/records", 6)
    before = storage.list_uris(data)
    for inside in (f"{data}/preview.html", f"{data}/train/deeper/preview.html"):
        with pytest.raises(ConfigError, match=f"inside the committed convert output {re.escape(data)}"):
            preview(PreviewConfig(data=data, output=inside))
        assert preview_main(["--data", data, "--output", inside]) == 2
        assert "vcot-preview: error: --output" in capsys.readouterr().err
    assert storage.list_uris(data) == before and manifest.read_manifest(data)["stage"] == "convert"
    beside = f"{root}/runs/r1/preview.html"  # next to the output, not in it: fine
    assert preview(PreviewConfig(data=data, output=beside)) == beside and storage.exists(beside)


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _near(pixel: tuple[int, ...], color: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], color, strict=True))


@pytest.mark.integration
def test_the_page_draws_every_box_where_the_record_says_in_chromium(
    real_s3: str, chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    data = write_own_data(f"{real_s3}/own", street=f"{real_s3}/elsewhere/street.png")
    records_uri = f"{real_s3}/records"
    convert(ConvertConfig(source="records", input=data, output=records_uri, bbox_2d_frame="norm1000", val_fraction=0.0))
    command = [sys.executable, "-m", "jobs.preview", "--data", records_uri, "--output", f"{real_s3}/preview.html"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    page_file = tmp_path / "preview.html"
    page_file.write_bytes(storage.read_bytes(f"{real_s3}/preview.html"))  # one self-contained file
    records = {r["id"]: r for r in manifest.committed_records(records_uri, ("train/",))}

    outside: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
            page.goto(page_file.as_uri())
            cards = page.locator(".record")
            assert cards.count() == len(records) == 10
            checked = Counter()
            for index in range(cards.count()):
                card = cards.nth(index)
                record = records[card.get_attribute("data-id")]
                image = card.locator(".figure img")
                assert image.evaluate("img => img.complete && img.naturalWidth > 0")
                frame = image.bounding_box()
                rects = card.locator("rect.object")
                assert rects.count() == len(record["objects"])
                assert card.locator("rect.named").count() == record["rationale"].count("<box>")
                assert card.locator(".label").all_inner_texts() == [o["ref"] for o in record["objects"]]
                for number, obj in enumerate(record["objects"]):
                    drawn = rects.nth(number).bounding_box()
                    x1, y1, x2, y2 = obj["box"]
                    expected = (frame["x"] + x1 / 1000 * frame["width"], frame["y"] + y1 / 1000 * frame["height"],
                                (x2 - x1) / 1000 * frame["width"], (y2 - y1) / 1000 * frame["height"])
                    # the box Chromium lays out includes the 2 px stroke centred on the edges: 1 px each side
                    got = (drawn["x"] + 1, drawn["y"] + 1, drawn["width"] - 2, drawn["height"] - 2)
                    close = all(abs(a - b) <= 0.5 for a, b in zip(got, expected, strict=True))
                    assert close, (record["id"], got, expected)
                    checked["boxes"] += 1
                # the pixels on screen: along the first box's left edge, green and orange dashes alternate
                shot = Image.open(io.BytesIO(card.locator(".figure").screenshot())).convert("RGB")
                x1, y1, _, y2 = record["objects"][0]["box"]
                column = [x1 / 1000 * frame["width"] + dx for dx in (-0.5, 0.0, 0.5)]
                rows = range(round(y1 / 1000 * frame["height"]) + 3, round(y2 / 1000 * frame["height"]) - 3)
                for colour, name in ((OBJECT_COLOR, "object"), (RATIONALE_COLOR, "named")):
                    assert any(_near(shot.getpixel((min(round(x), shot.width - 1), y)), _rgb(colour))
                               for x in column for y in rows), (record["id"], name)
            page.screenshot(path=str(tmp_path / "preview-screenshot.png"), full_page=True)
        finally:
            context.close()
    assert checked["boxes"] == sum(len(r["objects"]) for r in records.values())
    assert outside == []  # nothing fetched: the page works offline
