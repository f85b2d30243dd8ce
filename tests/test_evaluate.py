import pytest

from fastmma.data.samples import VLSample
from fastmma.evaluate import accuracy_by, exact_match_accuracy, normalize_answer


class ScriptedModel:
    """Answers each prompt from a fixed table, as `generate` would."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, prompts, images, max_new_tokens):
        return [self.answers[prompt] for prompt in prompts]


def question(prompt: str, answer: str, question_type: str) -> VLSample:
    return VLSample(None, [(prompt, answer)], {"question_type": question_type})


def test_normalize_answer_keeps_the_first_line_lower_case_without_the_full_stop():
    assert normalize_answer("  Red.\nThe shape is red.") == "red"
    assert normalize_answer("") == ""


def test_accuracy_overall_and_by_question_type():
    samples = [question("a", "red", "colour"), question("b", "two", "count"), question("c", "blue", "colour"),
               question("d", "one", "count"), question("e", "left", "position")]
    model = ScriptedModel({"a": "Red.", "b": "three", "c": "blue", "d": "one", "e": "right"})
    accuracy, answers = exact_match_accuracy(model, samples, batch_size=2)
    assert accuracy == pytest.approx(3 / 5)
    assert accuracy_by(samples, answers) == {"colour": 1.0, "count": 0.5, "position": 0.0}


def test_accuracy_by_names_what_is_wrong():
    samples = [question("a", "red", "colour")]
    with pytest.raises(ValueError, match="1 samples but 2 answers"):
        accuracy_by(samples, ["red", "blue"])
    with pytest.raises(ValueError, match="no 'split'"):
        accuracy_by(samples, ["red"], key="split")
