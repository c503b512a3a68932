"""Small VisCOT-format data with known answers: the embedded default for local runs and tests.

``write_synthetic_viscot(output)`` writes, deterministically for a seed:

- ``output/viscot.json``: a llava-format JSON array like VisCOT's (question turn, box-string turn,
  ``<image>`` turn, answer turn);
- ``output/metadata.jsonl``: VisCOT metadata lines (``image``, ``width``, ``height``, ``bboxs``, ...);
- ``output/images/cot/synthetic/<n>.png``: images (``W != H``, 96-256 px, aspect up to 1.6) with coloured
  shapes at random positions and sizes, drawn at known boxes inside a dark frame (:class:`Scene`).

Box strings alternate between VisCOT's two conventions (0-1 floats of the padded square, 3 decimals;
0-1000 integers of the padded square); every third item also carries the absolute ``###`` box, so both
converter paths are exercised. The question names the shape (``What color is the circle?``), so the
converter's reference label is the shape's name.

    python -m vcot.dev.synthetic s3://vcot/local/synthetic --num-records 64 --seed 0
"""

from __future__ import annotations

import argparse
import io
import json
import random
from dataclasses import dataclass
from typing import Any

from vcot.grounding.boxes import pixels_to_norm1000, pixels_to_viscot_padded
from vcot.io import storage

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 180),
}
SHAPES = ("square", "circle", "bar")
PROMPT = "Please provide the bounding box coordinate of the region that can help you answer the question better."
SUBSET = "synthetic"


def _image_size(rng: random.Random) -> tuple[int, int]:
    """A size with ``W != H`` and an aspect ratio up to 1.6 (wide and tall both occur)."""
    while True:
        width, height = rng.randint(96, 256), rng.randint(96, 256)
        if width != height and max(width, height) / min(width, height) <= 1.6:
            return width, height


@dataclass(frozen=True)
class Scene:
    """What each image holds. The defaults are what a from-scratch tiny model learns to point at in CPU minutes
    (``make local-train``, docs/train.md): one shape, at least ``min_size`` of the image width, and a dark frame.

    The frame is the one concession to a model without pretraining: Qwen2.5-VL's vision tower has no absolute
    position at all (rotary attention sees only offsets between patches), so on a plain background nothing in an
    image token says where it is. A frame gives every patch a landmark at a known offset: the image's own edges.
    """

    max_objects: int = 1
    min_size: float = 0.2
    frame: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_objects <= len(SHAPES):
            raise ValueError(f"max_objects={self.max_objects} must be between 1 and {len(SHAPES)}")
        if not 0 < self.min_size <= 0.5:
            raise ValueError(f"min_size={self.min_size} must be in (0, 0.5]: a share of the image width")


def _draw(width: int, height: int, objects: list[dict[str, Any]], frame: bool) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    if frame:
        draw.rectangle((0, 0, width - 1, height - 1), outline=(30, 30, 30), width=max(3, width // 24))
    for obj in objects:
        x1, y1, x2, y2 = obj["pixels"]
        fill = COLORS[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)  # covers pixels x1..x2-1: the box [x1, x2)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _objects(rng: random.Random, width: int, height: int, scene: Scene) -> list[dict[str, Any]]:
    """One to ``scene.max_objects`` shapes, each a different shape name so the question's label is unambiguous."""
    shapes = rng.sample(SHAPES, rng.randint(1, scene.max_objects))
    objects = []
    for shape in shapes:
        w = rng.randint(max(8, int(width * scene.min_size)), width // 2)
        h = w if shape in ("square", "circle") else rng.randint(max(6, height // 12), max(7, height // 5))
        h = min(h, height - 2)
        x1, y1 = rng.randint(0, width - w), rng.randint(0, height - h)
        objects.append({"shape": shape, "color": rng.choice(sorted(COLORS)), "pixels": [x1, y1, x1 + w, y1 + h]})
    return objects


def _box_string(pixels: list[int], width: int, height: int, convention: str) -> str:
    unit = pixels_to_viscot_padded(pixels, width, height, decimals=None)
    if convention == "unit":
        return "[" + ", ".join(f"{v:.3f}" for v in unit) + "]"
    return "[" + ", ".join(str(round(v * 1000)) for v in unit) + "]"


def synthetic_items(
    num_records: int = 64, seed: int = 0, scene: Scene = Scene()
) -> list[tuple[dict[str, Any], dict[str, Any], bytes, dict[str, Any]]]:
    """``(llava item, metadata line, png bytes, truth)`` for each record; ``truth`` has the expected house box."""
    rng = random.Random(seed)
    out = []
    for index in range(num_records):
        width, height = _image_size(rng)
        objects = _objects(rng, width, height, scene)
        target = rng.choice(objects)
        path = f"cot/{SUBSET}/{index:05d}.png"
        convention = "unit" if index % 2 == 0 else "norm1000"
        question = f"What color is the {target['shape']}?"
        image_field: list[str] = [path]
        if index % 3 == 0:
            image_field.append(f"{path}###{json.dumps(target['pixels'])}")
        item = {
            "dataset": SUBSET,
            "split": "train",
            "question_id": index,
            "image": image_field,
            "conversations": [
                {"from": "human", "value": f"<image>\n{question} {PROMPT}"},
                {"from": "gpt", "value": _box_string(target["pixels"], width, height, convention)},
                {"from": "human", "value": "<image>"},
                {"from": "gpt", "value": target["color"]},
            ],
        }
        metadata = {
            "question": question,
            "answer": target["color"],
            "image": path.split("/", 2)[2],
            "width": width,
            "height": height,
            "bboxs": [target["pixels"]],
            "dataset": SUBSET,
            "split": "train",
        }
        truth = {
            "id": f"viscot:{SUBSET}:train:{index}",
            "ref": target["shape"],
            "answer": target["color"],
            "width": width,
            "height": height,
            "pixels": target["pixels"],
            "box": list(pixels_to_norm1000(target["pixels"], width, height)),
            "convention": convention,
            "absolute": index % 3 == 0,
        }
        out.append((item, metadata, _draw(width, height, objects, scene.frame), truth))
    return out


def write_synthetic_viscot(output: str, *, num_records: int = 64, seed: int = 0, scene: Scene = Scene()) -> dict[str, Any]:
    """Write synthetic VisCOT-format data under ``output``; returns the URIs and the expected record per id."""
    items = synthetic_items(num_records, seed, scene)
    images = storage.join(output, "images")
    for item, _, png, _ in items:
        storage.write_bytes(storage.join(images, item["image"][0]), png)
    storage.write_text(storage.join(output, "metadata.jsonl"), "".join(json.dumps(m) + "\n" for _, m, _, _ in items))
    # Written last: a reader that finds viscot.json finds its images and metadata too.
    storage.write_text(storage.join(output, "viscot.json"), json.dumps([i for i, _, _, _ in items], indent=1) + "\n")
    return {
        "records": num_records,
        "json": storage.join(output, "viscot.json"),
        "metadata": storage.join(output, "metadata.jsonl"),
        "images": images,
        "truth": {truth["id"]: truth for _, _, _, truth in items},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcot.dev.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("output", help="Where to write (s3://bucket/prefix or a local folder).")
    parser.add_argument("--num-records", type=int, default=64, help="How many records (default 64).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    parser.add_argument("--max-objects", type=int, default=Scene.max_objects, help="Shapes per image, at most (1-3).")
    parser.add_argument("--min-size", type=float, default=Scene.min_size, help="Smallest shape, share of the width.")
    parser.add_argument("--no-frame", action="store_true", help="No dark frame around the image.")
    args = parser.parse_args(argv)
    scene = Scene(max_objects=args.max_objects, min_size=args.min_size, frame=not args.no_frame)
    result = write_synthetic_viscot(args.output, num_records=args.num_records, seed=args.seed, scene=scene)
    print(f"wrote {result['records']} synthetic VisCOT records to {args.output}")
    print(f"convert with: vcot-convert --source viscot --input {args.output} --output <URI>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
