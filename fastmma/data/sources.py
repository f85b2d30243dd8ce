"""Build a sample list from a JSON-able data spec (used by `fastmma train` / `fastmma eval`).

    {"kind": "shapesqa", "num_samples": 2000, "seed": 0, "image_size": 32, "split": "train"}
    {"kind": "text", "num_samples": 500, "seed": 0, "split": "train"}
    {"kind": "llava", "json": "data.json", "image_folder": "images", "on_missing_image": "error"}
    {"kind": "scienceqa", "root": "ScienceQA", "split": "train"}
A list of specs concatenates them.
"""
from __future__ import annotations

import inspect

from ..checks import is_int
from .samples import VLSample

KINDS = ("shapesqa", "text", "llava", "scienceqa")
INTEGER_FIELDS = {"num_samples": 0, "seed": None, "image_size": 1}     # field: its minimum (None: any integer)


def load_samples(spec) -> list[VLSample]:
    if isinstance(spec, list):
        return [sample for part in spec for sample in load_samples(part)]
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ValueError(f"data spec {spec!r} needs \"kind\" set to one of {KINDS}")
    options = {k: v for k, v in spec.items() if k != "kind"}
    loader = _LOADERS[spec["kind"]]
    _check_field_names(spec, options, loader)
    _check_integer_fields(spec, options)
    try:
        return loader(**options)
    except TypeError as err:
        raise ValueError(f"data spec {spec!r} has a field of the wrong type ({err})") from err


def _check_field_names(spec: dict, options: dict, loader) -> None:
    parameters = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(parameters))
    missing = [name for name, parameter in parameters.items()
               if parameter.default is parameter.empty and name not in options]
    problems = [f"{label} field(s) {names}" for label, names in (("unknown", unknown), ("missing", missing)) if names]
    if problems:
        raise ValueError(f"data spec {spec!r} has {' and '.join(problems)}; a {spec['kind']!r} spec has the "
                         f"fields {list(parameters)}")


def _check_integer_fields(spec: dict, options: dict) -> None:
    for name, minimum in INTEGER_FIELDS.items():
        if name in options and not (is_int(options[name]) and (minimum is None or options[name] >= minimum)):
            bound = "an integer" if minimum is None else f"an integer >= {minimum}"
            raise ValueError(f"data spec {spec!r}: \"{name}\" must be {bound}, not {options[name]!r}")


def _shapesqa(num_samples, seed=0, image_size=64, split="train", question_types=None):
    from .shapes import QUESTION_TYPES, shapes_qa

    return shapes_qa(num_samples, seed, image_size=image_size, split=split,
                     question_types=tuple(question_types or QUESTION_TYPES))


def _text(num_samples, seed=0, split="train"):
    from .text_tasks import text_instructions

    return text_instructions(num_samples, seed, split=split)


def _llava(json, image_folder=None, on_missing_image="error"):
    from .llava import load_llava

    return load_llava(json, image_folder, on_missing_image=on_missing_image).samples


def _scienceqa(root, split="train"):
    from .scienceqa import load_scienceqa

    return load_scienceqa(root, split)


_LOADERS = {"shapesqa": _shapesqa, "text": _text, "llava": _llava, "scienceqa": _scienceqa}
