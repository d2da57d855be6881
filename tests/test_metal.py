"""The Metal backend: rendered kernels, glue, and the host emulation of its kernels.

No Mac here: the fast tests check what the templates, the host header and the
emulator's source handling produce; the slow tests compile the rendered Metal
sources of the applied tree as C++ (tqpatch/backends/metal_host) and run them
through verify's contract -- passing as rendered, failing when the rendered
code is mutated. The real-device check is ci/tqpatch-metal.yml (tests/test_integration_metal.py).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import backend_params

from tqpatch import formats, paths, reference, verify, verify_io
from tqpatch.verify import checks as vchecks
from tqpatch import backends
from tqpatch.backends import metal, metal_kernels
from tqpatch.backends.metal_host import emulate
from tqpatch.errors import TqpatchError

GEN = paths.generated_dir() / "ggml/src/ggml-metal"
HOST_NAME = re.compile(r'\[\[host_name\(\s*"([^"]+)"\s*\)\]\]')


def _host_names(text: str) -> set[str]:
    return set(HOST_NAME.findall(text))


def _kv_name(k: str, v: str) -> str:
    """ggml_metal_fa_kv_name (ggml-metal-turbo.h): '<K>' for one type, '<K>_<V>' for two."""
    return k if k == v else f"{k}_{v}"


# ---------------------------------------------------------------- rendered sources

def test_every_flash_attention_case_has_both_kernels():
    names = set()
    for p in GEN.glob("kernels/fa_*turbo_*.metal"):
        names |= _host_names(p.read_text())
    want = set()
    for d, k, v in metal_kernels.fa_instances():
        want.add(f"kernel_flash_attn_ext_{_kv_name(k, v)}_dk{d}_dv{d}")
        want.add(f"kernel_flash_attn_ext_vec_{_kv_name(k, v)}_dk{d}_dv{d}")
    assert names == want
    # every case verify and test-backend-ops check has its kernels, and at each of their
    # head sizes every pair that head produces (turbo4 at 32 and 96 too: Metal instantiates
    # per head size)
    assert set(formats.fa_cases()) <= set(metal_kernels.fa_instances())
    for d in metal_kernels.fa_head_sizes():
        assert {(k, v) for h, k, v in metal_kernels.fa_instances() if h == d} == set(formats.served_pairs(d))
    assert {32, 96} <= set(metal_kernels.fa_head_sizes())
    # the recommended asymmetric pairs are there (the pin's Metal FA needs K and V of one type)
    assert "kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128" in names
    assert "kernel_flash_attn_ext_q8_0_turbo3_dk256_dv256" in names
    assert "kernel_flash_attn_ext_vec_turbo3_b96_turbo2_b96_dk96_dv96" in names
    assert "kernel_flash_attn_ext_turbo4_dk32_dv32" in names


def test_turbo_library_has_the_kernels_the_host_asks_for_by_name():
    names = _host_names((GEN / "kernels/turbo.metal").read_text())
    for t in formats.TURBO_TYPES:
        for n in (f"kernel_set_rows_f32_i64_{t}", f"kernel_set_rows_f32_i32_{t}", f"kernel_get_rows_{t}",
                  f"kernel_cpy_{t}_f32", f"kernel_cpy_{t}_f16", f"kernel_cpy_f32_{t}",
                  f"kernel_flash_attn_ext_kv_{t}_f16"):
            assert n in names


def test_vector_kernels_use_the_baseline_elements_per_thread():
    for p in GEN.glob("kernels/fa_vec_turbo_*.metal"):
        for d, ne in re.findall(r"_dk(\d+)_dv\d+\"\)\]\].*, \d+, \d+, (\d+)>;", p.read_text()):
            assert metal_kernels.FA_VEC_BASELINE_NE[int(d)] == int(ne), p.name
    assert set(metal_kernels.FA_VEC_BASELINE_NE) >= set(metal_kernels.fa_head_sizes())


def test_library_list_and_cmake_sources_agree():
    header = (GEN / "ggml-metal-turbo.h").read_text()
    libs = re.findall(r"X\((\w+), (\w+)\)", header)
    assert libs == metal_kernels.libraries()
    cmake = (GEN / "turbo-kernels.cmake").read_text()
    assert re.findall(r"kernels/(\w+)\.metal", cmake) == [lib for _, lib in libs]
    for _, lib in libs:
        assert (GEN / "kernels" / f"{lib}.metal").is_file()


def test_host_header_lists_types_and_flash_attention_instances_from_formats():
    header = (GEN / "ggml-metal-turbo.h").read_text()
    cases = re.search(r"#define GGML_METAL_TURBO_CASES \\\n(.*?)\n\n", header, re.S).group(1)
    assert re.findall(r"case (GGML_TYPE_\w+):", cases) == [f.enum for f in formats.TURBO_FORMATS.values()]
    # supports_op answers yes exactly for the instantiated (head, K, V) triples
    table = re.search(r"ggml_metal_turbo_fa_instances\[\] = \{(.*?)\n\};", header, re.S).group(1)
    rows = re.findall(r"\{ (\d+), GGML_TYPE_(\w+), GGML_TYPE_(\w+) \}", table)
    assert [(int(d), k.lower(), v.lower()) for d, k, v in rows] == list(metal_kernels.fa_instances())


def test_head_sizes_without_turbo_flash_attention_are_named():
    """Heads a turbo family serves but Metal has no turbo FA kernel for (the CPU runs them)."""
    missing = [h for h in formats.SERVED_HEAD_SIZES if h not in metal_kernels.fa_head_sizes()]
    assert missing  # 192 and 512 at least: if this fails, drop the notes and docs below
    text = " ".join(metal.notes())
    for h in missing:
        assert str(h) in text
    doc = (Path(__file__).resolve().parents[1] / "docs/metal.md").read_text()
    assert all(str(h) in doc for h in missing)


def test_kv_types_cover_the_cache_types():
    kv = metal_kernels.kv_types()
    assert tuple(kv) == formats.CACHE_TYPES
    for name, t in kv.items():
        assert t.block_size == formats.type_info(name).block_size
        if t.block_size > 1:
            assert t.nl * 16 == t.block_size and t.nl4 * 4 == t.block_size


def test_glue_patch_is_in_series_and_touches_only_ggml_metal():
    series = (paths.patches_dir() / "series").read_text()
    assert "0012-ggml-metal-turbo-types.patch" in series
    text = (paths.patches_dir() / "0012-ggml-metal-turbo-types.patch").read_text()
    touched = set(re.findall(r"^\+\+\+ b/(\S+)", text, re.M))
    assert touched == {f"ggml/src/ggml-metal/{f}" for f in (
        "CMakeLists.txt", "ggml-metal-device.cpp", "ggml-metal-device.h", "ggml-metal-device.m",
        "ggml-metal-ops.cpp")}
    assert "ggml-turbo-common.h" in text  # the embedded library inlines it (ggml-common.h includes it)


# ---------------------------------------------------------------- the backend module

def test_build_options_embed_the_library():
    assert metal.cmake_args(None, {}) == ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"]


def test_off_macos_verify_is_host_emulated(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert metal.emulated()
    assert callable(metal.verify_runner(None, None, None))
    assert "host emulation" in metal.unsupported_reason()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not metal.emulated()
    assert metal.verify_runner({"backend": "metal"}, None, None) is None  # the built harness runs on the GPU
    assert metal.unsupported_reason() is None


@pytest.mark.skipif(sys.platform == "darwin", reason="the label says host-emulated off macOS only")
def test_verify_without_a_build_runs_the_backend_runner_and_labels_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path))  # nothing built here
    seen = {}

    def fake_runner(record, tree, run_harness):
        seen["record"] = record

        def run(cases):
            return verify.HarnessRun("MTL0", "host emulation", "fake", [
                verify_io.Result(i, 1, "unsupported", b"") for i in range(len(cases))], [])
        return run

    backend_params.patch(monkeypatch, "metal", make_verify_runner=fake_runner)
    rep = verify.verify(backends.get("metal"), quick=True, types=("turbo3",))
    assert seen["record"] is None
    assert rep.label == metal.HOST_EMULATED == "host-emulated, not run on Apple hardware"
    assert "host-emulated" in verify.render_table(rep)
    # the CPU still needs its build
    with pytest.raises(TqpatchError, match="not built"):
        verify.verify(backends.get("cpu"), quick=True, types=("turbo3",))


# ---------------------------------------------------------------- emulator source handling

def test_rewrite_drops_attributes_and_range_designators_and_registers_dispatched_kernels():
    src = "\n".join([
        "kernel void k(uint3 tgpig[[threadgroup_position_in_grid]], threadgroup half * s [[threadgroup(0)]]) {",
        "    float M[NQ] = { [0 ... NQ-1] = -FLT_MAX/2 };",
        "}",
        'template [[host_name("kernel_get_rows_turbo3")]] kernel t_t kernel_get_rows_turbo<A, B>;',
        'template [[host_name("kernel_flash_attn_ext_vec_f16_turbo3_dk192_dv192")]] kernel t_t f<A>;',
        'template [[host_name("kernel_flash_attn_ext_f16_dk64_dv64"  )]]  kernel t_t h<A, 64>;',
        'template [[host_name("kernel_lightning_indexer_f16")]] kernel t_t g<A>;',
    ])
    out = emulate.rewrite(src)
    assert "[[" not in out
    assert "float M[NQ]; for (int tq_i_ = 0; tq_i_ < NQ; ++tq_i_) M[tq_i_] = -FLT_MAX/2;" in out
    assert 'TQ_EMU_REGISTER("kernel_get_rows_turbo3", kernel_get_rows_turbo<A, B>)' in out
    assert 'TQ_EMU_REGISTER("kernel_flash_attn_ext_f16_dk64_dv64", h<A, 64>)' in out  # upstream's spacing
    assert "dk192" not in out and "lightning" not in out  # never dispatched: not instantiated
    kept = emulate.rewrite(src, register=False)  # the syntax check keeps every instantiation
    assert "TQ_EMU_REGISTER" not in kept and "f<A>" in kept and "g<A>" in kept


def test_function_constants_and_plain_kernels():
    src = """constant bool FC_a [[function_constant(FC_X + 0)]];
//constant float FC_b [[function_constant(FC_X + 1)]];
constant int32_t FC_c [[function_constant(FC_X + 22)]];
template<typename T>
kernel void kernel_flash_attn_ext_vec_templ(int a) {}
kernel void kernel_flash_attn_ext_pad(int a) {}
kernel void kernel_flash_attn_ext_vec_idx(int a) {}
"""
    assert emulate.function_constants(src) == [("bool", "FC_a", "FC_X + 0"), ("int32_t", "FC_c", "FC_X + 22")]
    assert emulate.plain_kernels(src) == ["kernel_flash_attn_ext_pad"]


def test_types_header_matches_formats():
    text = emulate.types_header()
    for name, t in formats.ALL_TYPES.items():
        assert f'{{GGML_TYPE_{name.upper()}, "{name}", {t.block_size}, {t.block_bytes}}}' in text


# ---------------------------------------------------------------- slow: compile and run

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="the Metal host emulation needs g++")


@pytest.fixture(scope="module")
def tree() -> Path:
    from tqpatch import apply

    return Path(apply.ensure_applied(None))


@pytest.fixture(scope="module")
def emulator(tree) -> Path:
    return emulate.build(tree, echo=print)


@pytest.mark.slow
@needs_cxx
def test_emulated_metal_passes_the_verification_contract(emulator):
    rep = verify.verify(backends.get("metal"), quick=True,
                        runner=lambda cases: verify.run_harness(emulator, "MTL0", cases))
    print(verify.render_table(rep))
    assert rep.passed, verify.render_table(rep)
    assert rep.label == metal.HOST_EMULATED
    done = {(c.op, c.types) for c in rep.cases if c.result == "PASS"}
    for t in formats.TURBO_TYPES:
        for op in ("SET_ROWS", "GET_ROWS", "CPY"):
            assert (op, t) in done
    heads = vchecks.fa_heads(quick=True)
    assert {(c.shape.split()[0], c.types) for c in rep.cases if c.op == "FLASH_ATTN_EXT" and c.result == "PASS"} \
        == {(f"d={h}", f"{k}/{v}") for h, k, v in formats.fa_cases() if h in heads}


def _fa_checks(cases, nqs):
    rng = np.random.default_rng(7)
    # decode with a partial last chunk of the cache (the pad pass), and batches
    shapes = {1: (4, 200, 1), 24: (4, 96, 2), 32: (4, 64, 2)}
    return [vchecks._fa_check(rng, k, v, d, nq, *shapes[nq]) for k, v, d in cases for nq in nqs]


def _judge(checks, binary):
    run = verify.run_harness(binary, "MTL0", [c.case for c in checks])
    prec = metal.BACKEND.precision()
    return [verify.judge(c, r, "metal", prec) for c, r in zip(checks, run.results)]


# per forced path: (K, V, head size) -- the recommended q8_0/turbo3 in each, block variants at
# heads of 32 and 96, and turbo4's own instances there -- and batch sizes
FA_PATHS = {
    "vec": ([("q8_0", "turbo3", 128), ("turbo3", "turbo3", 256), ("f16", "turbo4", 64), ("turbo2", "q8_0", 128),
             ("turbo3_b96", "q8_0", 96), ("turbo2_b32", "turbo4", 32), ("turbo4", "turbo4", 32)],
            (1, 24)),
    "mma": ([("q8_0", "turbo3", 128), ("f16", "turbo4", 64), ("turbo4", "turbo2", 256),
             ("q8_0", "turbo3_b32", 32), ("turbo2_b96", "turbo3_b96", 96), ("f16", "turbo4", 96)], (24,)),
    # K and V converted to f16 first, then upstream's f16 kernel
    "mma-kv-f16": ([("q8_0", "turbo3", 128), ("turbo2", "turbo4", 256), ("turbo4", "q8_0", 64),
                    ("turbo3_b96", "turbo2_b96", 96), ("turbo4", "turbo2_b32", 32)], (32,)),
}


@pytest.mark.slow
@needs_cxx
@pytest.mark.parametrize("path", list(FA_PATHS))
def test_every_flash_attention_path_passes(emulator, monkeypatch, path):
    # the host picks the path by batch size; forcing it covers each one with the same kind of cases
    monkeypatch.setenv("TQPATCH_METAL_EMU_FA_PATH", path)
    reports = _judge(_fa_checks(*FA_PATHS[path]), emulator)
    bad = [(r.types, r.shape, r.result, r.note, r.details[:1]) for r in reports if r.result != "PASS"]
    assert not bad


def _mutated_tree(tree: Path, dst: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    for rel in emulate.tree_files(tree):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / rel, dst / rel)
    for rel, subs in edits.items():
        text = (dst / rel).read_text()
        for old, new in subs:
            assert text.count(old) == 1, (rel, old)
            text = text.replace(old, new)
        (dst / rel).write_text(text)
    return dst


@pytest.mark.slow
@needs_cxx
def test_emulation_fails_when_the_rendered_metal_code_is_wrong(tree, tmp_path):
    """Five bugs in the rendered sources, each caught where it bites; the readers and
    quantizers left alone pass (the emulation is not broken as a whole)."""
    t4 = formats.TURBO_FORMATS["turbo4"]
    nib = t4.planes[0]
    assert nib.bits == 4
    swapped = f"(((x->{nib.field}[(j)/2] >> (4*((j)%2))) & 15))"
    cb3 = reference.codebook_arrays("turbo3")[0]
    g96 = formats.TURBO_FORMATS["turbo3_b96"].group
    from tqpatch.render import float32_literal
    edits = {
        f"{emulate.KERNELS}/turbo.h": [
            # turbo4: the two nibbles of a byte swapped when reading
            (swapped, f"(((x->{nib.field}[(j)/2] >> (4*(((j)+1)%2))) & 15))"),
            # turbo2: the 4-value reader the vector flash-attention kernel uses reads value i+1 for i
            ("reg_f[i] = d*turbo2_centroids[turbo2_index(xb, 4*il + i)];",
             "reg_f[i] = d*turbo2_centroids[turbo2_index(xb, 4*il + (i^1))];"),
            # turbo2_b32: the scale read one code low
            ("turbo2_b32_scale(device const block_turbo2_b32 * x) {\n    return ggml_turbo_log8_scale[x->e];",
             "turbo2_b32_scale(device const block_turbo2_b32 * x) {\n    return ggml_turbo_log8_scale[x->e - 1];"),
            # turbo3_b96: the second pass chooses the indices for the next code's scale, not the stored one
            (f"turbo3_b96_decide(src[{g96}*i + l]*inv2)",
             f"turbo3_b96_decide(src[{g96}*i + l]*ggml_turbo_log8_inv[code + 1])"),
        ],
        # turbo3: a wrong centroid in the codebook every kernel reads
        "ggml/src/ggml-turbo-common.h": [(float32_literal(cb3[1]) + ",", float32_literal(cb3[1] * 1.01) + ",")],
    }
    bad_tree = _mutated_tree(tree, tmp_path / "tree", edits)
    binary = emulate.build(bad_tree, libs=["turbo", "fa_aux", "fa_vec_turbo_turbo2", "fa_vec_turbo_turbo2_b32"],
                           work=tmp_path / "emu")
    rng = np.random.default_rng(3)
    checks = {f"{op} {t}": fn(rng, t, vchecks._row_len(t, 256)) for t in formats.TURBO_TYPES
              for op, fn in (("GET_ROWS", vchecks._get_rows_check), ("CPY", vchecks._cpy_check))}
    for t in ("turbo3", "turbo3_b96", "turbo2_b96", "turbo2_b32"):
        blk = formats.TURBO_FORMATS[t].block
        x, labels = vchecks._row_set(rng, ("gaussian",), vchecks._row_len(t, 256), blk, 8)
        checks[f"SET_ROWS {t}"] = vchecks._set_rows_check(rng, t, x, labels, "gaussian")
    # their own draws: a check with large K outlier channels has a wide tolerance
    checks["FA turbo2"] = vchecks._fa_check(np.random.default_rng(3), "turbo2", "turbo2", 128, 1, 4, 96, 1)
    checks["FA turbo2_b32"] = vchecks._fa_check(np.random.default_rng(3), "turbo2_b32", "turbo2_b32", 32, 1, 4, 96, 1)
    reports = dict(zip(checks, _judge(list(checks.values()), binary)))
    result = {k: (r.result, r.mismatches) for k, r in reports.items()}
    for broken in ("GET_ROWS turbo4", "CPY turbo4", "GET_ROWS turbo3", "CPY turbo3", "SET_ROWS turbo3",
                   "FA turbo2", "GET_ROWS turbo2_b32", "CPY turbo2_b32", "FA turbo2_b32", "SET_ROWS turbo3_b96"):
        assert reports[broken].result == "FAIL" and reports[broken].mismatches > 0, (broken, str(result))
    # untouched: turbo2's 16-value reader, turbo3_b96's reader, turbo2_b96 and turbo2_b32's quantizers
    for fine in ("GET_ROWS turbo2", "CPY turbo2", "GET_ROWS turbo3_b96", "CPY turbo3_b96",
                 "SET_ROWS turbo2_b96", "SET_ROWS turbo2_b32"):
        assert reports[fine].result == "PASS", (fine, str(result))


@pytest.mark.slow
def test_vector_baseline_matches_the_pins_tuning(tree):
    """FA_VEC_BASELINE_NE is what ggml-metal-tuning.cpp's fa_vec_baseline_ne() gives (the
    host names the baseline pipeline without a suffix only for that NE)."""
    text = (tree / emulate.METAL / "ggml-metal-tuning.cpp").read_text()
    body = text[text.index("int fa_vec_baseline_ne(int dk, int dv)"):]
    body = body[:body.index("\n}\n")]
    pin = {int(dk): int(ne) for dk, dv, ne in
           re.findall(r"if \(dk == (\d+) && dv == (\d+)\) \{\s*return (\d+);", body) if dk == dv}
    for d, ne in metal_kernels.FA_VEC_BASELINE_NE.items():
        assert pin[d] == ne, d


@pytest.mark.slow
@needs_cxx
def test_embedded_sources_are_what_cmake_makes(tree):
    from tqpatch.backends.metal_host import check

    steps = check.embed_steps(tree)
    text = check.embedded_source(tree, "fa_vec_turbo_q8_0", steps)
    # every quoted include is gone or in an inactive #else branch: the turbo codebooks are inlined
    assert "turbo3_centroids" in text and "kernel_flash_attn_ext_vec_q8_0_turbo3_dk128_dv128" in text
    assert '#include "turbo.h"' not in text and '#include "ggml-turbo-common.h"' not in text
    # without the glue patch's step, the include of ggml-turbo-common.h would stay
    steps.seds[-1] = [op for op in steps.seds[-1] if "ggml-turbo-common" not in op[0]]
    assert '#include "ggml-turbo-common.h"' in check.embedded_source(tree, "turbo", steps)
