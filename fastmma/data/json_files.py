"""Reading a data source's JSON file with errors that name the file, the line and the fix."""
from __future__ import annotations

import json
from pathlib import Path


def load_json(path: str | Path, what: str, where_to_get_it: str):
    """The parsed content of `path`, a file that holds `what` (e.g. "the ScienceQA problems").

    Raises FileNotFoundError naming `where_to_get_it` when the file is missing, and ValueError
    with file:line:column when it is not valid UTF-8 JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}; {where_to_get_it}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}:{error.colno}: invalid JSON in {what} file ({error.msg}); "
                         f"fix the file there or download it again") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: {what} file is not UTF-8 text ({error.reason} at byte {error.start}); "
                         f"it must be a UTF-8 JSON file") from error
