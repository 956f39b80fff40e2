"""`memaudit report` on an audit.json it did not write: one line and exit 2, never a traceback."""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from memaudit.auditing import run_audit
from memaudit.cli import app
from memaudit.auditing.config import AuditConfig
from memaudit.errors import InputError
from memaudit.outputs import validate_audit
from memaudit.reports import render_report

runner = CliRunner()


@pytest.fixture(scope="module")
def valid_audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "run"
    run_audit(AuditConfig(model="optimal", train="digits:50", out=out, n=6, steps=4, spaces=["pixel-4"]))
    return json.loads((out / "audit.json").read_text())


def _report(tmp_path, document, *options):
    (tmp_path / "audit.json").write_text(document if isinstance(document, str) and document.startswith("{not")
                                         else json.dumps(document))
    return runner.invoke(app, ["report", str(tmp_path), *options])


def _one_line(result, fragment):
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def _edited(audit, edit):
    audit = copy.deepcopy(audit)
    edit(audit)
    return audit


def _set(path, value):
    """An edit putting ``value`` at ``path`` (a dotted path; the key deleted when value is _GONE)."""
    def edit(audit):
        *parents, last = path.split(".")
        target = audit
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _GONE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
        return audit
    return edit


_GONE = object()


@pytest.mark.parametrize("edit, fragment", [
    (lambda a: None, "not an audit (a JSON null"),
    (lambda a: [], "not an audit (a JSON array"),
    (_set("spaces", _GONE), "'spaces' is a required property"),
    (_set("spaces.pixel.criteria.nn-ratio.threshold", "0.3"), "spaces.pixel.criteria.nn-ratio.threshold is a string, expected number"),
    (_set("memorization_ratio", "high"), "memorization_ratio is a string, expected number"),
    (_set("findings", "oops"), "findings is a string, expected array or null"),
    (_set("schema_version", 99), "schema_version 99 is not one this memaudit"),
    (_set("schema_version", "1"), 'schema_version "1" is not one this memaudit'),
    (_set("schema_version", _GONE), "schema_version null is not one"),
    (_set("spaces.pixel", _GONE), "'pixel' is a required property"),
    (_set("findings.0.neighbors.0.distance", None), "findings[0].neighbors[0].distance is a null, expected number"),
])
def test_malformed_audit_json_is_one_line(tmp_path, valid_audit, edit, fragment):
    _one_line(_report(tmp_path, edit(copy.deepcopy(valid_audit))), fragment)


def test_not_json_is_one_line(tmp_path):
    _one_line(_report(tmp_path, "{not json"), "not a readable audit")


def _png_header_only(width, height) -> bytes:
    """A PNG whose header claims width x height 1-bit pixels, with the (highly compressible) rows."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * ((width // 8 + 1) * height), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.parametrize("image, fragment", [
    (base64.b64encode(b"GIF89a" + b"\0" * 40).decode(), "findings[0].image: not a readable PNG"),
    (base64.b64encode(_png_header_only(5_000, 5_000)).decode(), "findings[0].image: a 5000x5000 PNG is no thumbnail"),
    (base64.b64encode(_png_header_only(20_000, 20_000)).decode(), "not a readable PNG (DecompressionBombError)"),
])
def test_blur_of_a_bad_thumbnail_is_one_line(tmp_path, valid_audit, image, fragment):
    audit = _edited(valid_audit, lambda a: a["findings"][0].update(image="data:image/png;base64," + image))
    _one_line(_report(tmp_path, audit, "--redact", "blur"), fragment)
    assert _report(tmp_path, audit, "--redact", "omit").exit_code == 0  # nothing to decode there


# --- fuzzing: any JSON value anywhere renders or is refused in one line ---------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            if key in ("rows", "image"):  # long or opaque: reach them, do not descend
                yield (*prefix, key)
                continue
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:2]):
            yield from _paths(child, (*prefix, index))


def _replace(document, path, value):
    if not path:
        return value
    target = document
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = None if value is _DELETE else value
    return document


_DELETE = object()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_audit_json_renders_or_is_refused(valid_audit, data):
    audit = copy.deepcopy(valid_audit)
    paths = list(_paths(audit))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        value = data.draw(st.one_of(st.just(_DELETE), json_values))
        try:
            audit = _replace(audit, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed the path
    for redact in ("none", "blur"):
        try:
            validate_audit(audit, "audit.json")
            html = render_report(audit, redact)
        except InputError as error:
            assert "\n" not in str(error)
            continue
        assert html.startswith("<!DOCTYPE html>") or html.lstrip().startswith("<")
