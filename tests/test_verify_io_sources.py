"""The verify wire format has one source: both C++ sides are rendered from tqpatch.verify_io."""

import re

import pytest

from tqpatch import backends, paths, render, verify_io as io
from tqpatch.backends.metal_host import emulate

HARNESS = "tests/tqpatch-verify.cpp"
HARNESS_TEMPLATE = paths.templates_dir() / f"{HARNESS}.j2"
EMULATOR = emulate.HOST_DIR / "emulator.cpp"


def harness_text() -> str:
    return render.render_all(backends.all_backends()).files[HARNESS].decode()


def enumerators(text: str, prefix: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(rf"\b{prefix}_(\w+)\s*=\s*(\d+)", text)}


@pytest.mark.parametrize("text", [lambda: (paths.generated_dir() / HARNESS).read_text(),
                                  emulate.wire_header], ids=["harness", "emulator"])
def test_cpp_sides_hold_verify_ios_constants(text):
    text = text()
    assert enumerators(text, "OP") == io.OPS
    assert enumerators(text, "STATUS") == {n.upper(): c for c, n in io.STATUS_NAMES.items()}
    for magic in (io.CASES_MAGIC, io.RESULTS_MAGIC):
        assert "{" + ", ".join(f"'{c}'" for c in magic.decode()) + "}" in text
    assert re.search(rf"FORMAT_VERSION\s*=\s*{io.VERSION};", text)
    assert re.search(rf"N_DIMS\s*=\s*{io.N_DIMS};", text)


@pytest.fixture
def changed_format(monkeypatch):
    """verify_io with every constant the C++ sides use changed."""
    monkeypatch.setattr(io, "CASES_MAGIC", b"ABCD")
    monkeypatch.setattr(io, "RESULTS_MAGIC", b"WXYZ")
    monkeypatch.setattr(io, "VERSION", 7)
    monkeypatch.setattr(io, "N_DIMS", 6)
    monkeypatch.setattr(io, "MAX_BUFFERS", 9)
    monkeypatch.setattr(io, "MAX_BUFFER_BITS", 30)
    monkeypatch.setattr(io, "OPS", {**io.OPS, "CPY": 13})
    monkeypatch.setattr(io, "STATUS_NAMES", {0: "ok", 1: "unsupported", 2: "crashed", 5: "error"})


def test_changing_verify_io_changes_the_rendered_harness(changed_format):
    text = harness_text()
    assert "CASES_MAGIC[4]   = {'A', 'B', 'C', 'D'};" in text
    assert "RESULTS_MAGIC[4] = {'W', 'X', 'Y', 'Z'};" in text
    assert "FORMAT_VERSION   = 7;" in text and "N_DIMS           = 6;" in text
    assert "n_bufs > 9)" in text and "(uint64_t(1) << 30)" in text
    assert enumerators(text, "OP")["CPY"] == 13
    assert enumerators(text, "STATUS")["CRASHED"] == 2 and enumerators(text, "STATUS")["ERROR"] == 5
    assert 'case OP_CPY:            return "CPY";' in text   # the labels too


def test_changing_verify_io_changes_the_emulators_header(changed_format):
    text = emulate.wire_header()
    assert text.startswith("// tqpatch:") and "generated from tqpatch.verify_io" in text.splitlines()[0]
    assert "{'A', 'B', 'C', 'D'}" in text and "{'W', 'X', 'Y', 'Z'}" in text
    for name, value in (("FORMAT_VERSION", 7), ("N_DIMS", 6), ("MAX_BUFFERS", 9), ("MAX_BUFFER_BITS", 30)):
        assert re.search(rf"\b{name} = {value};", text), name
    assert enumerators(text, "OP")["CPY"] == 13 and enumerators(text, "STATUS")["CRASHED"] == 2
    assert 'case OP_CPY: return "CPY";' in text


@pytest.mark.parametrize("path", [HARNESS_TEMPLATE, EMULATOR], ids=["harness template", "emulator.cpp"])
def test_no_hand_written_wire_constant_in_cpp(path):
    text = re.sub(r"//[^\n]*", "", path.read_text())   # comments may name the format
    assert not re.search(r"'T',\s*'Q',\s*'V'|TQV[CR]", text)
    assert not re.search(r"\b(OP|STATUS)_[A-Z_]+\s*=\s*\d", text)
    assert not re.search(r"\b(FORMAT_VERSION|N_DIMS|MAX_BUFFERS?|MAX_BUFFER_BITS)\s*=\s*\d", text)
    assert not re.search(r"<<\s*34\b|n_bufs\s*>\s*16|\bnb\s*<=\s*16|version-1\b", text)
