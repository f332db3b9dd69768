"""Reading and writing NVGesture list files.

One clip a line, space-separated ``key:value`` fields::

    path:./Video_data/class_01/subject13_r0 depth:sk_depth:138:218 color:sk_color:138:218 duo_left:duo_left:161:254 label:1

``path`` is the clip folder relative to the dataset root, ``label`` is 1..25, and every
other key is a sensor ``key:file:start:end``: the video ``<path>/<file>.avi`` and its
valid window ``[start, end)`` (0-based frames, end exclusive). The line is parsed as
data, field by field; nothing is evaluated.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .classes import NUM_CLASSES
from .errors import BadClipWarning, ListFormatError

TRAIN_LIST = "nvgesture_train_correct_cvpr2016_v2.lst"
TEST_LIST = "nvgesture_test_correct_cvpr2016_v2.lst"
LIST_FILES = {"train": TRAIN_LIST, "test": TEST_LIST}


def find_list_file(root: str | Path, split: str) -> Path:
    """The split's list file: ``ROOT/<name>``, or ``ROOT/annotations/<name>`` (mmpose's
    layout) when only that exists."""
    name = LIST_FILES[split]
    direct, nested = Path(root) / name, Path(root) / "annotations" / name
    return nested if not direct.is_file() and nested.is_file() else direct


@dataclass(frozen=True)
class SensorWindow:
    """One sensor field of a list line: video ``<file>.avi``, valid frames ``[start, end)``."""

    file: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ClipRecord:
    """One parsed list line.

    Attributes:
        path: the ``path:`` value as written (e.g. ``./Video_data/class_01/subject13_r0``).
        label: 0-based class (the file's label minus one).
        sensors: sensor key (``color``, ``depth``, ``duo_left``, ...) -> window.
        list_file, line_no: where the line came from, for error messages.
    """

    path: str
    label: int
    sensors: dict[str, SensorWindow] = field(default_factory=dict)
    list_file: str = "<string>"
    line_no: int = 0

    @property
    def key(self) -> str:
        """The clip path normalized to ``Video_data/class_XX/subjectN_rK`` (no ``./``)."""
        return normalize_clip_path(self.path)

    def clip_dir(self, root: str | Path) -> Path:
        return Path(root) / self.key


def normalize_clip_path(path: str) -> str:
    """``./Video_data/x`` and ``Video_data/x/`` both become ``Video_data/x``."""
    return PurePosixPath(path).as_posix().removeprefix("./").rstrip("/")


def _int(text: str, what: str, list_file: str, line_no: int, line: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ListFormatError(list_file, line_no, line, f"{what} {text!r} is not an integer") from None


def parse_line(line: str, list_file: str | Path = "<string>", line_no: int = 1) -> ClipRecord | None:
    """Parse one list line; ``None`` for a blank line.

    Raises:
        ListFormatError: naming ``list_file:line_no`` for a field without ``:``, a
            duplicate key, a missing/absolute/escaping ``path``, a missing or
            out-of-range ``label``, or a sensor field that is not ``file:start:end``
            with integers ``0 <= start < end``.
    """
    list_file = str(list_file)
    tokens = line.split()
    if not tokens:
        return None
    fields: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition(":")
        if not sep or not key or not value:
            raise ListFormatError(list_file, line_no, line, f"field {token!r} is not key:value")
        if key in fields:
            raise ListFormatError(list_file, line_no, line, f"duplicate field {key!r}")
        fields[key] = value

    if "path" not in fields:
        raise ListFormatError(list_file, line_no, line, "missing field 'path'")
    path = fields.pop("path")
    parts = PurePosixPath(path).parts
    if path.startswith("/") or ".." in parts:
        raise ListFormatError(list_file, line_no, line, f"path {path!r} must be relative to the dataset root")

    if "label" not in fields:
        raise ListFormatError(list_file, line_no, line, "missing field 'label'")
    label = _int(fields.pop("label"), "label", list_file, line_no, line)
    if not 1 <= label <= NUM_CLASSES:
        raise ListFormatError(list_file, line_no, line, f"label {label} is outside 1..{NUM_CLASSES}")

    sensors: dict[str, SensorWindow] = {}
    for key, value in fields.items():
        parts = value.split(":")
        if len(parts) != 3 or not parts[0] or "/" in parts[0]:
            raise ListFormatError(list_file, line_no, line, f"sensor field {key!r} is not {key}:file:start:end")
        start = _int(parts[1], f"{key} start", list_file, line_no, line)
        end = _int(parts[2], f"{key} end", list_file, line_no, line)
        if not 0 <= start < end:
            raise ListFormatError(list_file, line_no, line, f"{key} window {start}:{end} is empty or negative")
        sensors[key] = SensorWindow(parts[0], start, end)

    return ClipRecord(path=path, label=label - 1, sensors=sensors, list_file=list_file, line_no=line_no)


def read_list(list_file: str | Path, *, skip_bad: bool = False) -> tuple[list[ClipRecord], list[str]]:
    """Parse a whole list file.

    Returns:
        ``(records, skipped)``: the parsed clips in file order, and one message per
        malformed line that was skipped (always empty unless ``skip_bad``).

    Raises:
        FileNotFoundError: the list file does not exist.
        ListFormatError: the first malformed line, unless ``skip_bad`` (then each bad
            line is skipped with a warning).
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"NVGesture list file not found: {list_file}")
    records: list[ClipRecord] = []
    skipped: list[str] = []
    with open(list_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                record = parse_line(line, list_file, line_no)
            except ListFormatError as e:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping malformed line: {e}", BadClipWarning, stacklevel=2)
                skipped.append(str(e))
                continue
            if record is not None:
                records.append(record)
    return records, skipped


def format_line(path: str, label: int, sensors: dict[str, SensorWindow]) -> str:
    """One list line in the NVGesture field order; ``label`` is 0-based.

    The inverse of :func:`parse_line` (without the trailing newline).
    """
    fields = [f"path:{path}"]
    fields += [f"{key}:{w.file}:{w.start}:{w.end}" for key, w in sensors.items()]
    fields.append(f"label:{label + 1}")
    return " ".join(fields)
