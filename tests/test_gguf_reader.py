"""tqpatch.plan.gguf_file: the bounded GGUF parser on valid, crafted and random files.

Valid files are written with the gguf package's GGUFWriter; invalid and
crafted ones from raw struct bytes, here.
"""

from __future__ import annotations

import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tqpatch.errors import TqpatchError
from tqpatch.plan import gguf_file, read_model
from tqpatch.plan.gguf_file import field_value, open_gguf, require_gguf

ALL = lambda name: True  # noqa: E731  (want every key)

# ---------------------------------------------------------------------------
# raw GGUF bytes

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def s(b: bytes, o: str = "<") -> bytes:
    return struct.pack(o + "Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes, o: str = "<") -> bytes:
    return s(key.encode(), o) + struct.pack(o + "I", vtype) + payload


def arr(key: str, itype: int, n: int, payload: bytes, o: str = "<") -> bytes:
    return s(key.encode(), o) + struct.pack(o + "IIQ", ARR, itype, n) + payload


def tensor(name: str, dims, ttype: int, offset: int, o: str = "<") -> bytes:
    return (s(name.encode(), o) + struct.pack(o + "I", len(dims))
            + b"".join(struct.pack(o + "Q", d) for d in dims) + struct.pack(o + "IQ", ttype, offset))


def raw(kvs=(), tensors=(), o: str = "<", version: int = 3, data: bytes = b"", n_kv=None,
        n_tensors=None) -> bytes:
    body = b"GGUF" + struct.pack(o + "IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body += b"".join(kvs) + b"".join(tensors)
    if tensors:
        body += b"\0" * (-len(body) % 32)
    return body + data


def write(tmp_path, data: bytes, name: str = "x.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def writer_file(path, endian=gguf.GGUFEndian.LITTLE):
    """A valid file with a value of every type, arrays of each, a vocabulary and tensors."""
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    w.add_block_count(4)
    w.add_context_length(8192)
    w.add_embedding_length(256)
    w.add_head_count(4)
    w.add_head_count_kv([2, 2, 1, 1])
    w.add_name("tiny ünïcode")
    w.add_file_type(15)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 2**32 - 1)
    w.add_int32("t.i32", -(2**31))
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", math.pi)
    w.add_bool("t.bool", True)
    w.add_string("t.empty", "")
    w.add_array("t.floats", [0.5, -1.25, 3.0])
    w.add_array("t.strs", ["a", "", "bc"])
    w.add_token_list([f"t{i}" for i in range(5000)])
    w.add_token_scores([float(-i) for i in range(5000)])
    w.add_token_types([1] * 5000)
    w.add_tensor("token_embd.weight", np.arange(256, dtype=np.float16).reshape(16, 16))
    w.add_tensor("blk.0.x", np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7))
    w.add_tensor("blk.0.q8", np.zeros((2, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _same(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


def assert_matches_stock(path, ours):
    stock = gguf.GGUFReader(str(path))
    keys = [k for k in stock.fields if not k.startswith("GGUF.")]
    assert list(ours.fields) == keys
    for k in keys:
        f = ours.fields[k]
        if f.value is None:  # an array too long to build: its length still agrees
            assert f.count == len(stock.fields[k].data), k
        else:
            assert _same(f.value, field_value(stock.fields[k])), k
    assert [(t.name, t.tensor_type, t.shape, t.n_elements, t.n_bytes, t.data_offset)
            for t in ours.tensors] == \
        [(t.name, t.tensor_type, tuple(int(d) for d in t.shape), int(t.n_elements),
          int(t.n_bytes), int(t.data_offset)) for t in stock.tensors]


# ---------------------------------------------------------------------------
# valid files


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_valid_file_parses_as_the_stock_reader_does(tmp_path, endian):
    p = writer_file(tmp_path / "w.gguf", endian)
    ours, size = open_gguf(p, want=ALL)
    assert size == p.stat().st_size
    assert ours.byte_order == ("<" if endian == gguf.GGUFEndian.LITTLE else ">")
    assert ours.fields["tokenizer.ggml.tokens"].value is None  # 5000 > MAX_ARRAY_VALUES
    assert ours.fields["tokenizer.ggml.tokens"].count == 5000
    assert_matches_stock(p, ours)


def test_default_reads_only_the_model_keys(tmp_path):
    p = writer_file(tmp_path / "w.gguf")
    ours, _ = open_gguf(p)
    assert set(ours.fields) == {
        "general.architecture", "general.name", "general.file_type", "llama.block_count",
        "llama.context_length", "llama.embedding_length", "llama.attention.head_count",
        "llama.attention.head_count_kv", "tokenizer.ggml.tokens"}
    stock = gguf.GGUFReader(str(p))
    for k, f in ours.fields.items():
        if f.value is not None:
            assert _same(f.value, field_value(stock.fields[k])), k
    info = read_model(p)
    assert (info.n_layer, info.n_head_kv, info.n_vocab, info.n_tensors) == (4, [2, 2, 1, 1], 5000, 3)
    assert info.weight_bytes == sum(int(t.n_bytes) for t in stock.tensors)


def test_long_keys_are_skipped_and_the_rest_still_read(tmp_path):
    p = write(tmp_path, raw([kv("x" * 5000, STR, s(b"v")), kv("general.name", STR, s(b"n"))]))
    assert {k: f.value for k, f in open_gguf(p, want=ALL)[0].fields.items()} == {"general.name": "n"}


def test_alignment(tmp_path):
    body = raw([kv("general.alignment", U32, struct.pack("<I", 64))],
               [tensor("t", [16], 0, 0)], data=b"")
    body += b"\0" * (-len(body) % 64) + b"\0" * 64
    ours, _ = open_gguf(write(tmp_path, body), want=ALL)
    assert ours.alignment == 64 and ours.tensors[0].data_offset % 64 == 0


# ---------------------------------------------------------------------------
# require_gguf: the cheap check commands make first


def test_require_gguf(tmp_path):
    require_gguf(writer_file(tmp_path / "ok.gguf"))
    (tmp_path / "text.gguf").write_text("hello world\n")
    for path, message in [(tmp_path / "text.gguf", r"not a GGUF file \(bad magic b'hell'"),
                          (tmp_path / "none.gguf", "no such file"),
                          (tmp_path, "not a file"),
                          (write(tmp_path, b"GGUF\x03\0", "short.gguf"), "truncated GGUF"),
                          (write(tmp_path, raw(version=1), "v1.gguf"), "GGUF version 1 is not supported"),
                          (write(tmp_path, raw(version=4), "v4.gguf"), "GGUF version 4 is not supported")]:
        with pytest.raises(TqpatchError, match=message) as err:
            require_gguf(path)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    p = writer_file(tmp_path / "w.gguf")
    p.chmod(0)
    with pytest.raises(TqpatchError, match="cannot read"):
        require_gguf(p)


# ---------------------------------------------------------------------------
# files that are not sane GGUFs: one line each

BAD = {
    "invalid value type": ([kv("a", 99, b"\0" * 8)], "metadata a has invalid GGUF value type 99"),
    "invalid item type": ([arr("a", 77, 1, b"\0" * 8)], "metadata a has invalid GGUF value type 77"),
    "nested array": ([arr("a", ARR, 1, b"\0" * 16)], "metadata a is an array of arrays"),
    "empty key": ([kv("", U32, b"\0" * 4)], "metadata key 0 is empty"),
    "duplicate key": ([kv("general.name", STR, s(b"a")), kv("general.name", STR, s(b"b"))],
                      "duplicate metadata key 'general.name'"),
    "alignment 0": ([kv("general.alignment", U32, b"\0" * 4)], "general.alignment = 0 is not a power of 2"),
    "alignment 3": ([kv("general.alignment", U32, struct.pack("<I", 3))], "general.alignment = 3"),
    "alignment float": ([kv("general.alignment", F32, struct.pack("<f", 32))], "general.alignment = 32.0"),
    "huge array": ([arr("tokenizer.ggml.tokens", STR, 10**12, b"\0" * 64)],
                   "metadata tokenizer.ggml.tokens declares an array of 1000000000000 entries"),
    "huge string": ([kv("general.name", STR, struct.pack("<Q", 2**63) + b"x")],
                    "truncated GGUF: value of general.name runs past the end"),
    "string past the end in an array": ([arr("x.y", STR, 2, s(b"a") + struct.pack("<Q", 99) + b"zz")],
                                        "truncated GGUF: array x.y runs past the end"),
    "long wanted string": ([kv("general.name", STR, s(b"n" * (gguf_file.MAX_STRING_VALUE + 1)))],
                           "general.name holds a string longer than 65536 bytes"),
    "key count beyond the keys": ([kv("general.name", STR, s(b"n"))],
                                  "truncated GGUF: metadata key 1 runs past the end"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_metadata(tmp_path, case):
    kvs, message = BAD[case]
    n_kv = 3 if case == "key count beyond the keys" else None
    p = write(tmp_path, raw(kvs, n_kv=n_kv))
    with pytest.raises(TqpatchError, match=message) as err:
        open_gguf(p, want=ALL)
    assert "\n" not in str(err.value) and str(p) in str(err.value)


BAD_TENSORS = {
    "name too long": (tensor("n" * 64, [32], 0, 0), "tensor 0's name is 64 bytes or longer"),
    "too many dims": (tensor("t", [1] * 5, 0, 0), "tensor t has 5 dimensions"),
    "dims past int64": (tensor("t", [2**40, 2**40], 0, 0), "tensor t has shape .* beyond int64"),
    "unknown type": (tensor("t", [32], 999, 0), "tensor t has unknown ggml type 999"),
    "row not whole blocks": (tensor("t", [33], 8, 0), "tensor t of type Q8_0 has 33 elements per row"),
    "data past the end": (tensor("t", [1024], 0, 0), r"truncated GGUF: tensor t ends at byte \d+"),
    "offset past the end": (tensor("t", [1], 0, 2**63), "truncated GGUF: tensor t ends at byte"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensor_infos(tmp_path, case):
    info, message = BAD_TENSORS[case]
    p = write(tmp_path, raw([kv("general.name", STR, s(b"n"))], [info], data=b"\0" * 128))
    with pytest.raises(TqpatchError, match=message) as err:
        open_gguf(p)
    assert "\n" not in str(err.value)


def test_duplicate_tensor_names(tmp_path):
    p = write(tmp_path, raw([], [tensor("t", [8], 0, 0), tensor("t", [8], 0, 32)], data=b"\0" * 64))
    with pytest.raises(TqpatchError, match="duplicate tensor name 't'"):
        open_gguf(p)


def test_caps_on_work(tmp_path, monkeypatch):
    # each cap, lowered so that a small file reaches it
    monkeypatch.setattr(gguf_file, "MAX_KEYS", 10)
    p = write(tmp_path, raw([kv(f"k{i}", U8, b"\0") for i in range(11)]), "keys.gguf")
    with pytest.raises(TqpatchError, match="metadata key count 11 exceeds 10"):
        open_gguf(p)
    monkeypatch.undo()
    monkeypatch.setattr(gguf_file, "MAX_STRINGS", 100)
    p = write(tmp_path, raw([arr("a", STR, 60, s(b"") * 60), arr("b", STR, 60, s(b"") * 60)]), "s.gguf")
    with pytest.raises(TqpatchError, match="metadata b brings the file's string arrays over 100"):
        open_gguf(p)
    monkeypatch.setattr(gguf_file, "MAX_BUILT", 50)
    p = write(tmp_path, raw([kv(f"a{i}.block_count", U32, b"\0" * 4) for i in range(60)]), "b.gguf")
    with pytest.raises(TqpatchError, match="brings the values tqpatch builds over 50"):
        open_gguf(p)
    # keys it does not want cost nothing
    open_gguf(p, want=lambda name: False)


# ---------------------------------------------------------------------------
# the crafted files of issue 25: memory and time, measured in a child process

def _issue_files():
    one = kv("general.name", STR, s(b"n"))
    return {
        # a 1 MB file: a 1M-element array, then an invalid value type (748 MB once)
        "1M elements": (raw([arr("a", U8, 10**6, b"\0" * 10**6), kv("b", 99, b"")]),
                        "invalid GGUF value type 99"),
        # 20M elements: 1 min 46 s and a MemoryError once
        "20M elements": (raw([arr("a", U8, 20 * 10**6, b"\0" * 20 * 10**6), kv("b", 99, b"")]),
                         "invalid GGUF value type 99"),
        # 2.27 GB once
        "1M empty arrays": (raw([arr("x", U32, 0, b"")] * 10**6 + [one]), "missing general.architecture"),
        # 1.7 GB once
        "1M empty strings big-endian": (raw([arr("x", STR, 10**6, b"\0" * 8 * 10**6, ">"),
                                             kv("general.name", STR, s(b"n", ">"), ">")], o=">"),
                                        "missing general.architecture"),
        # 1.6 GB and over 10 minutes once
        "500k small keys": (raw([kv("k", U32, b"\0" * 4)] * 500_000 + [one]),
                            "missing general.architecture"),
    }


CHILD = textwrap.dedent("""
    import sys, time
    from tqpatch.errors import TqpatchError
    from tqpatch.plan import read_model
    t = time.process_time()  # CPU seconds: a busy machine does not fail the bound
    try:
        read_model(sys.argv[1])
        out = "parsed"
    except TqpatchError as e:
        out = str(e)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking pytest
    try:
        kib = int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
    except OSError:  # no /proc (macOS: ru_maxrss in bytes)
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(time.process_time() - t, kib // 1024)
    print(out)
""")


@pytest.mark.parametrize("case", sorted(_issue_files()))
def test_crafted_files_of_issue_25_stay_small_and_fast(tmp_path, case):
    data, message = _issue_files()[case]
    p = write(tmp_path, data)
    res = subprocess.run([sys.executable, "-c", CHILD, str(p)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    stats, out = res.stdout.splitlines()
    seconds, rss_mib = float(stats.split()[0]), int(stats.split()[1])
    assert message in out and out.count("\n") == 0
    assert rss_mib < 300, rss_mib
    assert seconds < 10, seconds  # CPU seconds; ~2 here (the failures of issue 25: minutes)


def test_plan_stops_on_sigterm_during_a_long_read(tmp_path):
    # 1M keys, each an array of 7 empty strings: the slowest file within the caps
    # (~4 s to read here); SIGTERM in the middle ends it at once
    rec = arr("k", STR, 7, b"\0" * 8 * 7)
    p = write(tmp_path, raw([rec] * gguf_file.MAX_KEYS))
    proc = subprocess.Popen([sys.executable, "-m", "tqpatch.cli", "plan", str(p), "--ctx", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t < 2
    assert "Traceback" not in out + err
    if proc.returncode == 128 + signal.SIGTERM:
        assert "stopped by SIGTERM" in err
    else:  # a fast machine read it all first: the refusal is still one line
        assert proc.returncode == 1 and "missing general.architecture" in out + err


# ---------------------------------------------------------------------------
# property: random and mutated headers / KV sections give a clean error or a
# correct parse, with bounded memory


def _parse_bounded(path):
    """(file or None, error or None), asserting the parse's peak memory."""
    tracemalloc.start()
    try:
        try:
            return open_gguf(path, want=ALL)[0], None
        except TqpatchError as exc:
            return None, exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 << 20, peak


def _check(path):
    ours, err = _parse_bounded(path)
    if err is not None:
        msg = str(err)
        assert "\n" not in msg and msg.startswith(str(path)), msg
        return
    try:
        stock = gguf.GGUFReader(str(path))
        ok = True
    except Exception:  # noqa: BLE001 - the stock reader fails in many ways
        ok = False
    if ok:
        assert_matches_stock(path, ours)


_BASES: dict = {}


def _base(kind: str, tmp_path_factory) -> bytes:
    if kind not in _BASES:
        d = tmp_path_factory.mktemp("base")
        endian = gguf.GGUFEndian.BIG if kind == "be" else gguf.GGUFEndian.LITTLE
        _BASES[kind] = writer_file(d / f"{kind}.gguf", endian).read_bytes()
    return _BASES[kind]


_U64S = st.one_of(st.integers(0, 16), st.sampled_from([2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                                                      2**64 - 1, 10**6, 10**12]),
                  st.integers(0, 2**64 - 1))

_MUTATION = st.tuples(st.floats(0, 1), st.sampled_from(["Q", "I", "B", "cut"]), _U64S)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["le", "be"]), mutations=st.lists(_MUTATION, min_size=1, max_size=4))
def test_mutated_files(tmp_path_factory, tmp_path, kind, mutations):
    data = bytearray(_base(kind, tmp_path_factory))
    o = ">" if kind == "be" else "<"
    for where, fmt, value in mutations:
        at = int(where * (len(data) - 1))
        if fmt == "cut":
            del data[at:]
            continue
        width = struct.calcsize(fmt)
        if at + width <= len(data):
            struct.pack_into(o + fmt, data, at, value % (1 << (8 * width)))
    p = tmp_path / "m.gguf"
    p.write_bytes(bytes(data))
    _check(p)


_KEY = st.one_of(st.sampled_from(["general.architecture", "general.name", "general.alignment",
                                  "llama.block_count", "tokenizer.ggml.tokens", "", "a"]),
                 st.text(max_size=12))


@st.composite
def _kv_records(draw):
    o = draw(st.sampled_from(["<", ">"]))
    out = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(_KEY).encode()
        vtype = draw(st.integers(0, 14))
        rec = s(key, o) + struct.pack(o + "I", vtype)
        if vtype == ARR:
            itype = draw(st.integers(0, 14))
            n = draw(_U64S)
            rec += struct.pack(o + "IQ", itype, n)
        rec += draw(st.binary(max_size=64))
        out.append(rec)
    n_kv = draw(st.one_of(st.just(len(out)), _U64S))
    n_tensors = draw(st.one_of(st.just(0), _U64S))
    version = draw(st.sampled_from([2, 3, 3, 1, 0, 4, 2**32 - 1]))
    return o, out, n_kv, n_tensors, version


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=_kv_records(), tail=st.binary(max_size=128))
def test_random_headers_and_kv_sections(tmp_path, rec, tail):
    o, kvs, n_kv, n_tensors, version = rec
    data = b"GGUF" + struct.pack(o + "IQQ", version, n_tensors % 2**64, n_kv % 2**64)
    p = tmp_path / "r.gguf"
    p.write_bytes(data + b"".join(kvs) + tail)
    _check(p)


@pytest.mark.parametrize("args", [["eval", "-m", "{m}", "--no-coherence"],
                                  ["codebook", "--fit", "{m}", "--out", "{d}"]])
def test_commands_name_a_wrong_model_before_anything_else(tmp_path, monkeypatch, args):
    # they said "cpu not built" first (issue 25 item 9)
    from click.testing import CliRunner

    from tqpatch.cli import main

    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    m = tmp_path / "text.gguf"
    m.write_text("just text\n")
    res = CliRunner().invoke(main, [a.format(m=m, d=tmp_path / "out") for a in args])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == f"Error: {m}: not a GGUF file (bad magic b'just', expected b'GGUF')"
