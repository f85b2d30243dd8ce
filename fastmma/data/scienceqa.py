"""ScienceQA in the folder layout LaVIN trains on -> VLSamples in LaVIN's "CQM-A" prompt format.

Layout of `root` (the layout of the official ScienceQA release):

    problems.json       {pid: {"question": str, "choices": [str, ...] (2 to 5), "answer": int index into
                               choices, "hint": str, "image": "image.png" or null, "split": "train" | "val"
                               | "test", "subject", "grade", "topic", "category", "skill", "task",
                               "lecture", "solution"}}
    pid_splits.json     {split: [pid, ...]}: "train", "val", "test", "trainval", "minival", "minitest", ...
    images/<split>/<pid>/image.png      for the problems whose "image" is not null

The image folder is the problem's own "split" field: that is LaVIN's images/<split>/<pid>/image.png
for train, val and test, and it also finds the images of combined splits (trainval, minival, ...).

Prompt, LaVIN's "CQM-A" (Context, Question, Multiple-choice options -> Answer). User turn:

    Context: <hint, or N/A when it is empty>
    Question: <question>
    Options: (A) <choice 0> (B) <choice 1> ...

Answer turn: "The answer is B." Runs of spaces are squeezed to one, as LaVIN does. Two differences,
both deliberate: LaVIN ends the prompt with "Response:" because it has no chat template (ours marks
the answer turn), and LaVIN can append a generated image caption to the context (we give the model
the image itself, so the context is the hint alone).

Sample: VLSample(image=Path or None, turns=[(prompt, "The answer is B.")],
                 meta={"source": "scienceqa", "pid", "split", "answer": "B", "answer_index": 1,
                       "choices", "subject", "grade", "has_hint"}).
"""
from __future__ import annotations

import re
from pathlib import Path

from .images import check_image_file
from .json_files import load_json
from .samples import VLSample

OPTION_LETTERS = "ABCDE"
GET_SCIENCEQA = "download ScienceQA's problems.json, pid_splits.json and images/ into one folder and pass it as root"
_ANSWER_PATTERN = re.compile(r"The answer is \(?([A-E])\)?")


def load_scienceqa(root: str | Path, split: str = "train") -> list[VLSample]:
    """The problems of `split`, in pid_splits.json's order."""
    root = Path(root)
    problems = _load_dict(root / "problems.json", "ScienceQA problems", keyed_by="pid")
    pid_splits = _load_dict(root / "pid_splits.json", "ScienceQA pid splits", keyed_by="split name")
    return [_sample(root, pid, _problem(problems, pid, split, root), split)
            for pid in _split_pids(pid_splits, split, root)]


def scienceqa_prompt(problem: dict) -> str:
    """The CQM-A user turn of one problems.json entry."""
    context = problem.get("hint", "").strip() or "N/A"
    options = " ".join(f"({letter}) {choice}" for letter, choice in zip(OPTION_LETTERS, problem["choices"]))
    return re.sub(" {2,}", " ", f"Context: {context}\nQuestion: {problem['question']}\nOptions: {options}")


def scienceqa_answer(answer_index: int) -> str:
    """The CQM-A answer turn: "The answer is B." for index 1."""
    return f"The answer is {OPTION_LETTERS[answer_index]}."


def parse_answer_letter(generated: str) -> str | None:
    """The option letter in a generated "The answer is B." (None if there is none), for exact-match scoring."""
    match = _ANSWER_PATTERN.search(generated)
    return match.group(1) if match else None


def _load_dict(path: Path, what: str, keyed_by: str) -> dict:
    content = load_json(path, what, GET_SCIENCEQA)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: the top level is a JSON {type(content).__name__}; the {what} file is a JSON "
                         f"object keyed by {keyed_by}")
    return content


def _split_pids(pid_splits: dict, split: str, root: Path) -> list[str]:
    if split not in pid_splits:
        raise ValueError(f"{root / 'pid_splits.json'} has no split {split!r}; available: "
                         f"{', '.join(sorted(pid_splits))}")
    return [str(pid) for pid in pid_splits[split]]


def _problem(problems: dict, pid: str, split: str, root: Path) -> dict:
    if pid not in problems:
        raise ValueError(f"pid {pid!r} is listed in split {split!r} of {root / 'pid_splits.json'} but absent from "
                         f"{root / 'problems.json'}; the two files must come from the same ScienceQA release")
    problem = problems[pid]
    try:
        _check_problem(problem)
    except ValueError as error:
        raise ValueError(f"{root / 'problems.json'}: problem {pid!r}: {error}") from error
    return problem


def _check_problem(problem) -> None:
    if not isinstance(problem, dict) or not isinstance(problem.get("question"), str):
        raise ValueError("it has no 'question' text; each problem is an object with 'question', 'choices', "
                         "'answer'")
    choices = problem.get("choices")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(OPTION_LETTERS) or \
            not all(isinstance(choice, str) for choice in choices):
        raise ValueError(f"'choices' is {str(choices)[:80]}; it must be a list of 2 to {len(OPTION_LETTERS)} "
                         f"strings")
    answer = problem.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f"answer index {answer!r} is out of range for its {len(choices)} choices; 'answer' is "
                         f"the 0-based index of the correct choice")
    if not isinstance(problem.get("hint", ""), str):
        raise ValueError(f"'hint' is {problem['hint']!r}; it must be text (empty when there is none)")


def _sample(root: Path, pid: str, problem: dict, split: str) -> VLSample:
    meta = {"source": "scienceqa", "pid": pid, "split": split,
            "answer": OPTION_LETTERS[problem["answer"]], "answer_index": problem["answer"],
            "choices": problem["choices"], "subject": problem.get("subject"), "grade": problem.get("grade"),
            "has_hint": bool(problem.get("hint", "").strip())}
    turns = [(scienceqa_prompt(problem), scienceqa_answer(problem["answer"]))]
    return VLSample(_image_path(root, pid, problem), turns, meta)


def _image_path(root: Path, pid: str, problem: dict) -> Path | None:
    image_name = problem.get("image")
    if image_name is None:
        return None
    if not isinstance(problem.get("split"), str) or not isinstance(image_name, str):
        raise ValueError(f"{root / 'problems.json'}: problem {pid!r} has an image but its 'split' "
                         f"({problem.get('split')!r}) or 'image' ({image_name!r}) is not a name; both name "
                         f"the file images/<split>/<pid>/<image>")
    try:
        return check_image_file(root / "images" / problem["split"] / pid / image_name)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"problem {pid!r}: {error}; ScienceQA's images go in "
                                f"{root / 'images'}/<split>/<pid>/image.png") from error
