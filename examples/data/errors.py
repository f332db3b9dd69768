"""Exceptions raised for bad NVGesture data.

Every error names where the problem is (list file and line, clip, video file), so a
bad clip among a thousand can be found without a debugger. Nothing in this package
turns bad data into an empty tensor.
"""

from __future__ import annotations

import json
from pathlib import Path


class NVGestureDataError(Exception):
    """Base class of every data error raised by :mod:`examples.data`."""


class UnknownModalityError(NVGestureDataError, ValueError):
    """A modality name that the dataset does not know (e.g. ``"thermal"``)."""


class ListFormatError(NVGestureDataError):
    """A malformed line in an NVGesture list file.

    Attributes:
        list_file: the list file.
        line_no: 1-based line number.
        line: the offending line, as read.
    """

    def __init__(self, list_file: str | Path, line_no: int, line: str, reason: str):
        self.list_file = str(list_file)
        self.line_no = line_no
        self.line = line
        self.reason = reason
        super().__init__(f"{self.list_file}:{line_no}: {reason} (line: {line.strip()!r})")


class BadClipError(NVGestureDataError):
    """A clip whose videos (or precomputed flow) cannot be used as listed.

    Missing or unreadable video, a window ``start:end`` outside the video, a video that
    decodes to fewer frames than its header promises, a missing flow file.

    Attributes:
        list_file, line_no: where the clip is listed (``None`` when not from a list).
        clip: the clip's ``path:`` value.
        file: the file at fault (video or flow file), if any.
    """

    def __init__(
        self,
        reason: str,
        *,
        clip: str,
        file: str | Path | None = None,
        list_file: str | Path | None = None,
        line_no: int | None = None,
    ):
        self.reason = reason
        self.clip = clip
        self.file = None if file is None else str(file)
        self.list_file = None if list_file is None else str(list_file)
        self.line_no = line_no
        where = f"{self.list_file}:{line_no}: " if self.list_file is not None else ""
        what = f" [{self.file}]" if self.file is not None else ""
        super().__init__(f"{where}clip {clip}: {reason}{what}")


class VideoError(NVGestureDataError):
    """A video file that is missing, unreadable, too short, or truncated.

    Attributes:
        file: the video file.
    """

    def __init__(self, file: str | Path, reason: str):
        self.file = str(file)
        self.reason = reason
        super().__init__(f"{self.file}: {reason}")


class EmptySplitError(NVGestureDataError, ValueError):
    """A split that has no clip to train or evaluate on (an empty list file, or every clip
    passed over by ``skip_bad``)."""


class BadClipWarning(UserWarning):
    """Issued for each bad line or clip passed over because of ``skip_bad=True``."""


def read_json_object(path: str | Path, expected: str) -> dict:
    """The JSON object in ``path``; a ValueError naming the file otherwise (invalid JSON, or
    not an object: ``expected`` says what the object should map)."""
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object mapping {expected}")
    return raw
