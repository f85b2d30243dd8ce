"""ScienceQA in LaVIN's layout: the fixture parses to CQM-A samples, every bad input is named."""
import json
import shutil
from pathlib import Path

import pytest

from fastmma.data.images import load_image
from fastmma.data.scienceqa import load_scienceqa, parse_answer_letter, scienceqa_answer, scienceqa_prompt

FIXTURE = Path(__file__).parent / "fixtures" / "scienceqa"


@pytest.fixture
def scienceqa_copy(tmp_path) -> Path:
    """A writable copy of the fixture, to break."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "scienceqa"))


def _edit_problems(root: Path, pid: str, **fields) -> None:
    problems = json.loads((root / "problems.json").read_text())
    problems[pid].update(fields)
    (root / "problems.json").write_text(json.dumps(problems))


def test_train_split_parses_to_cqm_a_samples():
    with_image, with_hint = load_scienceqa(FIXTURE, "train")
    assert with_image.image == FIXTURE / "images" / "train" / "1" / "image.png"
    assert with_image.turns == [("Context: N/A\nQuestion: Which shape is shown in the picture?\n"
                                 "Options: (A) square (B) circle (C) triangle", "The answer is B.")]
    assert with_image.meta == {"source": "scienceqa", "pid": "1", "split": "train", "answer": "B", "answer_index": 1,
                               "choices": ["square", "circle", "triangle"], "subject": "natural science",
                               "grade": "grade2", "has_hint": False}
    assert with_hint.image is None
    assert with_hint.turns[0][0].startswith("Context: Animals are living things that move on their own.\n")
    assert with_hint.meta["has_hint"] is True
    assert load_image(with_image.image).size == (32, 32)


def test_each_split_reads_its_pids_and_images_from_the_problem_split_folder():
    assert [s.meta["pid"] for s in load_scienceqa(FIXTURE, "val")] == ["3"]
    test_sample, = load_scienceqa(FIXTURE, "test")
    assert test_sample.image == FIXTURE / "images" / "test" / "4" / "image.png"
    assert test_sample.turns[0][1] == "The answer is A."
    trainval = load_scienceqa(FIXTURE, "trainval")
    assert [s.meta["pid"] for s in trainval] == ["1", "2", "3"] and trainval[0].image is not None
    four_choices, = load_scienceqa(FIXTURE, "minival")
    assert four_choices.turns[0][0].endswith("Options: (A) ice (B) fire (C) sand (D) tea")


def test_prompt_helpers():
    problem = {"question": "Which  is  bigger?", "choices": ["a", "b"], "answer": 0, "hint": "  "}
    assert scienceqa_prompt(problem) == "Context: N/A\nQuestion: Which is bigger?\nOptions: (A) a (B) b"
    assert scienceqa_answer(4) == "The answer is E."
    assert parse_answer_letter("The answer is C.") == "C"
    assert parse_answer_letter("I think the answer is unclear") is None


def test_unknown_split_lists_the_available_ones():
    with pytest.raises(ValueError, match="no split 'dev'; available: minitest, minival, test, train, trainval, val"):
        load_scienceqa(FIXTURE, "dev")


@pytest.mark.parametrize("name", ["problems.json", "pid_splits.json"])
def test_missing_json_file_is_named(scienceqa_copy, name):
    (scienceqa_copy / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"file not found: .*{name}; download ScienceQA"):
        load_scienceqa(scienceqa_copy)


def test_invalid_json_names_file_and_line(scienceqa_copy):
    (scienceqa_copy / "pid_splits.json").write_text('{\n  "train": ["1", "2",]\n}')
    with pytest.raises(ValueError, match=r"pid_splits\.json:2:\d+: invalid JSON"):
        load_scienceqa(scienceqa_copy)


def test_problems_that_are_not_an_object_are_named(scienceqa_copy):
    (scienceqa_copy / "problems.json").write_text("[]")
    with pytest.raises(ValueError, match="top level is a JSON list; .* keyed by pid"):
        load_scienceqa(scienceqa_copy)


def test_pid_absent_from_problems_is_named(scienceqa_copy):
    (scienceqa_copy / "pid_splits.json").write_text(json.dumps({"train": ["1", "99"]}))
    with pytest.raises(ValueError, match="pid '99' is listed in split 'train' .* but absent from .*problems.json"):
        load_scienceqa(scienceqa_copy)


@pytest.mark.parametrize("fields, message", [
    (dict(answer=3), "problem '2': answer index 3 is out of range for its 2 choices"),
    (dict(answer=-1), "answer index -1 is out of range"),
    (dict(answer="B"), "answer index 'B' is out of range"),
    (dict(choices=["only one"]), "'choices' is .*list of 2 to 5 strings"),
    (dict(choices=list("abcdef")), "'choices' is .*list of 2 to 5 strings"),
    (dict(question=None), "no 'question' text"),
    (dict(hint=None), "'hint' is None"),
])
def test_bad_problem_fields_are_named(scienceqa_copy, fields, message):
    _edit_problems(scienceqa_copy, "2", **fields)
    with pytest.raises(ValueError, match=message):
        load_scienceqa(scienceqa_copy)


def test_missing_image_is_named(scienceqa_copy):
    (scienceqa_copy / "images" / "train" / "1" / "image.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"problem '1': image file not found: .*train/1/image\.png"):
        load_scienceqa(scienceqa_copy)


def test_undecodable_image_is_named(scienceqa_copy):
    (scienceqa_copy / "images" / "train" / "1" / "image.png").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match=r"cannot decode image .*train/1/image\.png"):
        load_scienceqa(scienceqa_copy)


def test_image_without_split_field_is_named(scienceqa_copy):
    _edit_problems(scienceqa_copy, "1", split=None)
    with pytest.raises(ValueError, match="problem '1' has an image but its 'split' \\(None\\)"):
        load_scienceqa(scienceqa_copy)
