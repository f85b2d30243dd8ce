"""ShapesQA and the text-only instructions: determinism, balance, disjoint splits, image format."""
import hashlib
from collections import Counter

import pytest

from fastmma.data.shapes import QUESTION_TYPES, answer_choices, chance_accuracy, shapes_qa
from fastmma.data.text_tasks import TASKS, text_instructions


def _image_digests(samples):
    return [hashlib.sha256(sample.image.tobytes()).hexdigest() for sample in samples]


def test_same_seed_gives_byte_identical_samples():
    first, again = shapes_qa(40, seed=3), shapes_qa(40, seed=3)
    assert _image_digests(first) == _image_digests(again)
    assert [s.turns for s in first] == [s.turns for s in again]
    assert [s.meta for s in first] == [s.meta for s in again]


def test_other_seed_gives_other_images():
    assert _image_digests(shapes_qa(40, seed=3)) != _image_digests(shapes_qa(40, seed=4))


@pytest.mark.parametrize("image_size", [32, 64, 224])
def test_images_are_rgb_of_the_requested_size(image_size):
    for sample in shapes_qa(8, seed=0, image_size=image_size):
        assert sample.image.mode == "RGB" and sample.image.size == (image_size, image_size)
        assert sample.has_image and sample.modality == 1


def test_every_answer_of_every_type_occurs_and_answers_match_meta():
    samples = shapes_qa(400, seed=0)
    assert Counter(s.meta["question_type"] for s in samples) == {qt: 100 for qt in QUESTION_TYPES}
    for question_type in QUESTION_TYPES:
        answers = Counter(s.meta["answer"] for s in samples if s.meta["question_type"] == question_type)
        assert set(answers) == set(answer_choices(question_type))
        assert min(answers.values()) >= 10, answers
    for sample in samples:
        (prompt, answer), = sample.turns
        assert answer == sample.meta["answer"] and " " not in answer
        assert all(choice in prompt for choice in answer_choices(sample.meta["question_type"]))


def test_question_types_can_be_restricted():
    samples = shapes_qa(10, seed=0, question_types=("count",))
    assert {s.meta["question_type"] for s in samples} == {"count"}
    assert {s.turns[0][0] for s in samples} == {"How many shapes are there? Answer with one word: one, two or three."}


def test_chance_accuracy_is_the_mean_of_one_over_the_number_of_choices():
    assert chance_accuracy(shapes_qa(4, seed=0)) == pytest.approx((1 / 4 + 1 / 3 + 1 / 4 + 1 / 3) / 4)
    assert chance_accuracy(shapes_qa(3, seed=0, question_types=("shape",))) == pytest.approx(1 / 3)


def test_heldout_images_are_never_train_images():
    train = set(_image_digests(shapes_qa(600, seed=0)) + _image_digests(shapes_qa(600, seed=1)))
    heldout = _image_digests(shapes_qa(300, seed=0, split="heldout"))
    assert len(set(heldout)) > 200
    assert not train & set(heldout)


def test_count_answers_match_the_shapes_drawn():
    for sample in shapes_qa(30, seed=5, question_types=("count",), image_size=64):
        pixels = sample.image.convert("L").point(lambda v: 255 if v < 250 else 0)
        quadrants = [pixels.crop((x, y, x + 32, y + 32)).getbbox() is not None for x in (0, 32) for y in (0, 32)]
        assert ("one", "two", "three")[sum(quadrants) - 1] == sample.meta["answer"]


@pytest.mark.parametrize("arguments, message", [
    (dict(num_samples=2, seed=0, split="test"), "unknown split"),
    (dict(num_samples=2, seed=0, image_size=16), "too small"),
    (dict(num_samples=2, seed=0, question_types=("size",)), "unknown ShapesQA question type"),
    (dict(num_samples=2, seed=0, question_types=()), "question_types is empty"),
])
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        shapes_qa(**arguments)


def test_text_instructions_are_deterministic_text_only_and_cover_every_task():
    samples = text_instructions(60, seed=2)
    assert [s.turns for s in samples] == [s.turns for s in text_instructions(60, seed=2)]
    assert Counter(s.meta["task"] for s in samples) == {task: 10 for task in TASKS}
    assert all(s.image is None and s.modality == 0 and s.turns[0][1] == s.meta["answer"] for s in samples)


def test_text_answers_are_correct():
    for sample in text_instructions(120, seed=0):
        prompt, answer = sample.turns[0]
        words = prompt.rstrip("?.").split()
        if sample.meta["task"] == "addition":
            assert int(answer) == int(words[2]) + int(words[4].rstrip("?"))
        elif sample.meta["task"] == "subtraction":
            assert int(answer) == int(words[2]) - int(words[4].rstrip("?"))
        elif sample.meta["task"] == "spelling":
            assert answer.replace(" ", "") == prompt.split('"')[1]


def test_text_heldout_prompts_are_never_train_prompts():
    train = {s.turns[0][0] for s in text_instructions(3000, seed=0)}
    heldout = text_instructions(300, seed=0, split="heldout")
    assert {s.meta["task"] for s in heldout} == set(TASKS)
    assert not train & {s.turns[0][0] for s in heldout}
