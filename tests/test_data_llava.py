"""LLaVA-style instruction JSON and the shared image loader: the fixture parses, every bad input is named."""
import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fastmma.data.images import check_image_file, load_image
from fastmma.data.llava import load_llava

FIXTURES = Path(__file__).parent / "fixtures" / "llava"
IMAGES = FIXTURES / "images"
GOOD_TURNS = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A circle."}]


def _write(tmp_path, records, name="data.json") -> Path:
    path = tmp_path / name
    path.write_text(records if isinstance(records, str) else json.dumps(records, indent=1), encoding="utf-8")
    return path


def test_fixture_parses_to_the_expected_samples():
    data = load_llava(FIXTURES / "instructions.json", IMAGES)
    assert data.num_skipped == 0
    assert [s.meta for s in data.samples] == [{"source": "llava", "id": i} for i in
                                              ("shape-0001", "shape-0002", "text-0001", "text-0002")]
    first, multi, text_only, text_null = data.samples
    assert first.image == IMAGES / "red_circle.png"
    assert first.turns == [("What colour is the circle?", "The circle is red.")]
    assert multi.image == IMAGES / "shapes" / "blue_square.png"
    assert multi.turns == [("What shape is in the picture?", "A square."), ("What colour is it?", "It is blue.")]
    assert text_only.image is None and text_only.turns == [("What is 2 plus 3?", "2 plus 3 is 5.")]
    assert text_null.image is None and text_null.modality == 0
    assert load_image(first.image).getpixel((16, 16)) == (220, 40, 40)


@pytest.mark.parametrize("content, error, message", [
    ('[{"id": 1,}]', ValueError, r"data\.json:1:\d+: invalid JSON"),
    ('{"id": 1, "conversations": []}', ValueError, "top level is a JSON dict"),
    ([["not", "an", "object"]], ValueError, "not an object"),
    ([{"id": "a", "conversations": [{"from": "human", "value": "Hi?"}]}], ValueError, "no 'gpt' answer turn"),
    ([{"id": "a", "conversations": GOOD_TURNS + [{"from": "human", "value": "And?"}]}], ValueError,
     r"last 'human' turn \(turn 2\) has no 'gpt' answer"),
    ([{"id": "a", "conversations": [{"from": "gpt", "value": "Hi."}, {"from": "human", "value": "Hi?"}]}],
     ValueError, "out of order: turn 0 is 'gpt'"),
    ([{"id": "a", "conversations": [GOOD_TURNS[0], GOOD_TURNS[0]]}], ValueError, "out of order: turn 1 is 'human'"),
    ([{"id": "a", "conversations": [{"from": "user", "value": "Hi?"}, GOOD_TURNS[1]]}], ValueError,
     "unknown role 'from': 'user'"),
    ([{"id": "a", "conversations": [GOOD_TURNS[0], {"from": "gpt", "value": "  "}]}], ValueError,
     "empty 'gpt' answer"),
    ([{"id": "a", "conversations": [{"from": "human"}, GOOD_TURNS[1]]}], ValueError, "each turn must be"),
    ([{"id": "a"}], ValueError, "'conversations' is missing or empty"),
    ([{"id": "a", "conversations": GOOD_TURNS}], ValueError, "placeholder but the sample has no 'image'"),
    ([{"id": "a", "image": 7, "conversations": GOOD_TURNS}], ValueError, "'image' is 7"),
])
def test_bad_input_raises_a_clear_error(tmp_path, content, error, message):
    with pytest.raises(error, match=message):
        load_llava(_write(tmp_path, content), IMAGES)


def test_sample_errors_name_file_line_index_and_id(tmp_path):
    good = json.dumps({"id": "ok", "conversations": [{"from": "human", "value": "Hi?"}, GOOD_TURNS[1]]})
    bad = json.dumps({"id": "broken-7", "conversations": [{"from": "robot", "value": "?"}]})
    path = _write(tmp_path, f"[\n  {good},\n\n  {bad}\n]\n")            # the bad sample starts on line 4
    with pytest.raises(ValueError, match=r"data\.json:4: sample 1 \(id 'broken-7'\): .*'robot'"):
        load_llava(path, IMAGES)


def test_missing_json_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="LLaVA instruction file not found: .*absent.json"):
        load_llava(tmp_path / "absent.json", IMAGES)


def test_image_without_image_folder_is_named(tmp_path):
    path = _write(tmp_path, [{"id": "a", "image": "red_circle.png", "conversations": GOOD_TURNS}])
    with pytest.raises(ValueError, match="no image_folder"):
        load_llava(path)


def test_missing_image_raises_or_is_skipped_and_counted(tmp_path, caplog):
    records = [{"id": "gone", "image": "gone.png", "conversations": GOOD_TURNS},
               {"id": "here", "image": "red_circle.png", "conversations": GOOD_TURNS}]
    path = _write(tmp_path, records)
    with pytest.raises(FileNotFoundError, match=r"sample 0 \(id 'gone'\): image file not found: .*gone\.png"):
        load_llava(path, IMAGES)
    with caplog.at_level(logging.WARNING, logger="fastmma.data.llava"):
        data = load_llava(path, IMAGES, on_missing_image="skip")
    assert data.skipped_missing_image == ["gone"] and data.num_skipped == 1
    assert [s.meta["id"] for s in data.samples] == ["here"]
    assert "skipped 1 of 2 samples" in caplog.text
    with pytest.raises(ValueError, match="on_missing_image='ignore'"):
        load_llava(path, IMAGES, on_missing_image="ignore")


def test_unreadable_image_is_named_with_its_sample(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "noise.png").write_bytes(b"this is not a png")
    path = _write(tmp_path, [{"id": "noisy", "image": "noise.png", "conversations": GOOD_TURNS}])
    with pytest.raises(ValueError, match=r"id 'noisy'\): cannot decode image .*noise\.png"):
        load_llava(path, folder)


def test_load_image_converts_modes_to_rgb_and_resizes(tmp_path):
    grey = Image.new("L", (10, 6), 128)
    transparent = Image.new("RGBA", (10, 6), (255, 0, 0, 0))
    palette = Image.new("RGB", (10, 6), (0, 0, 255)).convert("P")
    assert load_image(grey).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(palette).getpixel((0, 0)) == (0, 0, 255)
    palette.save(tmp_path / "palette.png")
    from_file = load_image(tmp_path / "palette.png", size=32)
    assert from_file.mode == "RGB" and from_file.size == (32, 32)
    assert load_image(str(tmp_path / "palette.png"), size=(20, 8)).size == (20, 8)


def test_load_image_names_each_bad_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "absent.png")
    shutil.copy(IMAGES / "red_circle.png", tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    check_image_file(tmp_path / "cut.png")                   # the header alone is fine ...
    with pytest.raises(ValueError, match="cannot decode image .*cut.png"):
        load_image(tmp_path / "cut.png")                     # ... the pixels are not
    with pytest.raises(ValueError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="text-only"):
        load_image(None)
    with pytest.raises(TypeError, match="PIL image or a path"):
        load_image(b"bytes")
