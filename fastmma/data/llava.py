"""LLaVA-style instruction JSON -> VLSamples, images kept as paths and decoded when used.

Schema: a JSON list of samples

    [{"id": "000000033471",                          # any JSON value; named in errors, kept in meta
      "image": "coco/train2017/000000033471.jpg",    # relative to image_folder; null or absent: text-only
      "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the bus?"},
                        {"from": "gpt", "value": "The bus is red."},
                        {"from": "human", "value": "Is it moving?"},
                        {"from": "gpt", "value": "No, it is parked."}]},
     ...]

Turns alternate "human", "gpt", starting with "human", and every human turn has a gpt answer.
The "<image>" placeholder is removed from human turns (the model places the visual tokens itself);
a sample whose text has one but no "image" is an error. At load time every image file must
exist (or, with on_missing_image="skip", its sample is dropped and counted) and have a header
PIL recognises; pixels are decoded later by fastmma.data.images.load_image.

Sample: VLSample(image=Path or None, turns=[(human, gpt), ...], meta={"source": "llava", "id": id}).
Errors name the file, the line where the sample starts, its index and its id.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .images import check_image_file
from .json_files import load_json
from .samples import VLSample

IMAGE_PLACEHOLDER = "<image>"
HUMAN, GPT = "human", "gpt"
MISSING_IMAGE_POLICIES = ("error", "skip")

logger = logging.getLogger(__name__)


@dataclass
class LlavaData:
    """What load_llava read: the samples, and the ids of the samples skipped for a missing image file."""

    samples: list[VLSample]
    skipped_missing_image: list = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_missing_image)


def load_llava(json_path: str | Path, image_folder: str | Path | None = None,
               on_missing_image: str = "error") -> LlavaData:
    """Every sample of a LLaVA-style JSON file; image paths are resolved against `image_folder`."""
    if on_missing_image not in MISSING_IMAGE_POLICIES:
        raise ValueError(f"on_missing_image={on_missing_image!r}; use one of {', '.join(MISSING_IMAGE_POLICIES)}")
    path = Path(json_path)
    records = load_json(path, "LLaVA instruction", "pass the path of a LLaVA-style JSON list of samples")
    if not isinstance(records, list):
        raise ValueError(f"{path}: the top level is a JSON {type(records).__name__}; a LLaVA instruction file is "
                         f"a JSON list of samples [{{\"id\", \"image\", \"conversations\"}}, ...]")
    data = LlavaData([])
    for index, record in enumerate(records):
        try:
            data.samples.append(_sample(record, image_folder))
        except FileNotFoundError as error:
            if on_missing_image == "error":
                raise FileNotFoundError(f"{_location(path, index, record)}: {error}; or pass "
                                        f"on_missing_image='skip' to drop such samples") from error
            data.skipped_missing_image.append(_record_id(record, index))
        except ValueError as error:
            raise ValueError(f"{_location(path, index, record)}: {error}") from error
    if data.num_skipped:
        logger.warning("%s: skipped %d of %d samples whose image file is missing (first ids: %s)", path,
                       data.num_skipped, len(records), data.skipped_missing_image[:5])
    return data


def _sample(record, image_folder: str | Path | None) -> VLSample:
    if not isinstance(record, dict):
        raise ValueError(f"the sample is a JSON {type(record).__name__}, not an object "
                         f"{{\"id\", \"image\", \"conversations\"}}")
    relative_image = record.get("image")
    turns = _turns(record.get("conversations"), has_image=relative_image is not None)
    image = None if relative_image is None else _image_path(relative_image, image_folder)
    return VLSample(image, turns, {"source": "llava", "id": record.get("id")})


def _image_path(relative_image, image_folder: str | Path | None) -> Path:
    if not isinstance(relative_image, str) or not relative_image.strip():
        raise ValueError(f"'image' is {relative_image!r}; it must be a path relative to image_folder, or null "
                         f"for a text-only sample")
    if image_folder is None:
        raise ValueError("the sample has an 'image' but load_llava got no image_folder; pass the folder the "
                         "'image' paths are relative to")
    return check_image_file(Path(image_folder) / relative_image)


def _turns(conversations, has_image: bool) -> list[tuple[str, str]]:
    """[(human, gpt), ...] from the "conversations" list, after checking roles, order and answers."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' is missing or empty; it must be a list of "
                         "{\"from\": \"human\" | \"gpt\", \"value\": text} turns")
    texts = [_turn_text(turn, position) for position, turn in enumerate(conversations)]
    _check_every_question_answered(len(texts))
    questions, answers = texts[0::2], texts[1::2]
    if not has_image and any(IMAGE_PLACEHOLDER in question for question in questions):
        raise ValueError(f"a human turn has the {IMAGE_PLACEHOLDER} placeholder but the sample has no 'image'; "
                         f"add the image path or remove the placeholder")
    return [(question.replace(IMAGE_PLACEHOLDER, "").strip(), answer.strip())
            for question, answer in zip(questions, answers)]


def _turn_text(turn, position: int) -> str:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
        raise ValueError(f"conversation turn {position} is {str(turn)[:80]}; each turn must be "
                         f"{{\"from\": \"human\" | \"gpt\", \"value\": text}}")
    role = turn.get("from")
    if role not in (HUMAN, GPT):
        raise ValueError(f"conversation turn {position} has unknown role 'from': {role!r}; LLaVA turns are "
                         f"'human' or 'gpt'")
    expected = HUMAN if position % 2 == 0 else GPT
    if role != expected:
        raise ValueError(f"conversation turns are out of order: turn {position} is {role!r} where {expected!r} "
                         f"was expected; turns must alternate human, gpt, human, gpt, ...")
    if role == GPT and not turn["value"].strip():
        raise ValueError(f"conversation turn {position} is an empty 'gpt' answer; every answer needs text")
    return turn["value"]


def _check_every_question_answered(num_turns: int) -> None:
    if num_turns == 1:
        raise ValueError("the conversation has no 'gpt' answer turn; every 'human' turn needs a 'gpt' answer "
                         "after it")
    if num_turns % 2 == 1:
        raise ValueError(f"the last 'human' turn (turn {num_turns - 1}) has no 'gpt' answer; add the answer or "
                         f"drop the turn")


def _record_id(record, index: int):
    return record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"


def _location(path: Path, index: int, record) -> str:
    return f"{path}:{_line_of_element(path, index)}: sample {index} (id {_record_id(record, index)!r})"


_SEPARATORS = re.compile(r"[\s,]*")


def _line_of_element(path: Path, index: int) -> int:
    """The 1-based line where element `index` of the file's top-level JSON list starts (errors only)."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    for _ in range(index + 1):
        start = _SEPARATORS.match(text, position).end()
        _, position = decoder.raw_decode(text, start)
    return text.count("\n", 0, start) + 1
