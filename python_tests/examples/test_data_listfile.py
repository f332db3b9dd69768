"""NVGesture list files: the real line format, errors naming file and line, round trips."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.data import BadClipWarning, ListFormatError, SensorWindow, format_line, parse_line, read_list

REAL_LINE = (
    "path:./Video_data/class_01/subject13_r0 depth:sk_depth:138:218 color:sk_color:138:218 "
    "duo_left:duo_left:161:254 label:1"
)


def test_real_line():
    r = parse_line(REAL_LINE + "\n", "train.lst", 7)
    assert r.path == "./Video_data/class_01/subject13_r0"
    assert r.key == "Video_data/class_01/subject13_r0"
    assert r.label == 0
    assert r.sensors == {
        "depth": SensorWindow("sk_depth", 138, 218),
        "color": SensorWindow("sk_color", 138, 218),
        "duo_left": SensorWindow("duo_left", 161, 254),
    }
    assert r.sensors["duo_left"].length == 93
    assert (r.list_file, r.line_no) == ("train.lst", 7)
    assert format_line(r.path, r.label, r.sensors) == REAL_LINE


@pytest.mark.parametrize("label", [1, 13, 25])
def test_labels_become_zero_based(label):
    assert parse_line(f"path:./a label:{label}").label == label - 1


def test_blank_line_is_none():
    assert parse_line("  \t\n") is None


@pytest.mark.parametrize(
    "line, reason",
    [
        ("path:./a label:1 depth", "not key:value"),
        ("path:./a label:1 :x", "not key:value"),
        ("path:./a label:1 label:2", "duplicate field 'label'"),
        ("label:1 depth:sk_depth:1:5", "missing field 'path'"),
        ("path:./a depth:sk_depth:1:5", "missing field 'label'"),
        ("path:./a label:one", "label 'one' is not an integer"),
        ("path:./a label:0", "outside 1..25"),
        ("path:./a label:26", "outside 1..25"),
        ("path:./a label:__import__('os').getpid()", "is not an integer"),
        ("path:./a label:1 depth:sk_depth:5", "is not depth:file:start:end"),
        ("path:./a label:1 depth:sk_depth:1:2:3", "is not depth:file:start:end"),
        ("path:./a label:1 depth::1:5", "is not depth:file:start:end"),
        ("path:./a label:1 depth:sk_depth:a:5", "depth start 'a' is not an integer"),
        ("path:./a label:1 depth:sk_depth:5:5", "window 5:5 is empty or negative"),
        ("path:./a label:1 depth:sk_depth:-1:5", "window -1:5 is empty or negative"),
        ("path:/etc label:1", "must be relative"),
        ("path:./Video_data/../../x label:1", "must be relative"),
    ],
)
def test_malformed_line_names_file_and_line(line, reason):
    with pytest.raises(ListFormatError) as e:
        parse_line(line, "lists/train.lst", 42)
    assert str(e.value).startswith("lists/train.lst:42: ")
    assert reason in str(e.value)
    assert (e.value.list_file, e.value.line_no, e.value.line) == ("lists/train.lst", 42, line)


def test_read_list_line_numbers_and_blank_lines(tmp_path):
    f = tmp_path / "x.lst"
    f.write_text(REAL_LINE + "\n\n" + REAL_LINE.replace("class_01", "class_02").replace("label:1", "label:2") + "\n")
    records, skipped = read_list(f)
    assert [(r.line_no, r.label) for r in records] == [(1, 0), (3, 1)]
    assert skipped == []


def test_read_list_stops_at_first_bad_line(tmp_path):
    f = tmp_path / "x.lst"
    f.write_text(f"{REAL_LINE}\npath:./b label:99\n{REAL_LINE}\n")
    with pytest.raises(ListFormatError, match=r"x\.lst:2: label 99"):
        read_list(f)


def test_read_list_skip_bad_warns_and_counts(tmp_path):
    f = tmp_path / "x.lst"
    f.write_text(f"{REAL_LINE}\npath:./b label:99\ngarbage\n{REAL_LINE}\n")
    with pytest.warns(BadClipWarning) as w:
        records, skipped = read_list(f, skip_bad=True)
    assert [r.line_no for r in records] == [1, 4]
    assert len(skipped) == 2 and len(w) == 2
    assert "x.lst:2:" in skipped[0] and "x.lst:3:" in skipped[1]


def test_read_list_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.lst"):
        read_list(tmp_path / "nope.lst")


_windows = st.tuples(st.integers(0, 10_000), st.integers(1, 500)).map(lambda t: (t[0], t[0] + t[1]))


@given(
    label=st.integers(0, 24),
    clip=st.from_regex(r"Video_data/class_[0-9]{2}/subject[0-9]{1,2}_r[0-9]", fullmatch=True),
    windows=st.lists(_windows, min_size=0, max_size=3),
)
def test_format_parse_round_trip(label, clip, windows):
    keys = ["depth", "color", "duo_left"]
    sensors = {k: SensorWindow(f"file_{k}", s, e) for k, (s, e) in zip(keys, windows)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = parse_line(format_line(f"./{clip}", label, sensors))
    assert (r.path, r.label, r.sensors, r.key) == (f"./{clip}", label, sensors, clip)
