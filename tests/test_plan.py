"""tqpatch.plan: GGUF metadata, KV byte arithmetic, recommendation, errors, CLI."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

import gguf

from tqpatch import backends
from tqpatch import formats
from tqpatch.cli import main
from tqpatch.errors import TqpatchError
from tqpatch.plan import (
    GIB,
    MIB,
    budget_for_kv,
    kv_bytes,
    kv_caches,
    max_ctx,
    parse_kv_sizes,
    plan_rows,
    read_model,
    recommend,
    support,
)

@pytest.fixture(autouse=True)
def _own_cache(request, tmp_path, monkeypatch):
    """plan looks up serve's probes in the tqpatch cache: every fast test gets its own,
    empty (the slow ones read the real cache's build and model, and never run plan)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------
# tiny GGUFs


def write_gguf(path, arch="llama", *, n_layer=4, n_embd=256, n_head=4, n_head_kv=None,
               key_length=None, value_length=None, sliding_window=None, swa_pattern=None,
               ctx_train=8192, file_type=15, tokenizer=True, tensor_elems=64,
               hparams=True, drop=(), extra=()):
    """A small GGUF; extra: (writer method, key, value) written last, e.g. to store a
    value the add_<key> helpers would not."""
    w = gguf.GGUFWriter(str(path), arch)
    if hparams:
        w.add_block_count(n_layer)
        w.add_context_length(ctx_train)
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(4 * n_embd)
        w.add_head_count(n_head)
        if n_head_kv is not None:
            w.add_head_count_kv(n_head_kv)
        if key_length is not None:
            w.add_key_length(key_length)
        if value_length is not None:
            w.add_value_length(value_length)
        if sliding_window is not None:
            w.add_sliding_window(sliding_window)
        if swa_pattern is not None:
            key = f"{arch}.attention.sliding_window_pattern"
            if isinstance(swa_pattern, list):
                w.add_array(key, swa_pattern)
            else:
                w.add_uint32(key, swa_pattern)
        w.add_layer_norm_rms_eps(1e-6)
    if file_type is not None:
        w.add_file_type(file_type)
    if tokenizer:
        w.add_tokenizer_model("llama")
        w.add_token_list(["<unk>", "<s>", "</s>", "a"])
        w.add_token_scores([0.0, 0.0, 0.0, -1.0])
        w.add_token_types([2, 3, 3, 1])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    for key in drop:
        del w.kv_data[0][key]
    for method, key, value in extra:
        w.kv_data[0].pop(key, None)
        getattr(w, method)(key, value)
    if tensor_elems:
        w.add_tensor("token_embd.weight", np.zeros((tensor_elems // 16, 16), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def llama_mha(tmp_path):  # no GQA: 4 heads of 64, 4 KV heads
    return read_model(write_gguf(tmp_path / "mha.gguf", n_head_kv=4))


@pytest.fixture
def llama_gqa(tmp_path):  # Llama-3-8B attention: 32 layers, 32 q / 8 kv heads of 128
    return read_model(write_gguf(tmp_path / "gqa.gguf", n_layer=32, n_embd=4096,
                                 n_head=32, n_head_kv=8, ctx_train=131072))


@pytest.fixture
def gemma3(tmp_path):  # Gemma 3 270M attention: 18 layers, 4 q / 1 kv of 256, window 512
    return read_model(write_gguf(tmp_path / "g3.gguf", "gemma3", n_layer=18, n_embd=640,
                                 n_head=4, n_head_kv=1, key_length=256, value_length=256,
                                 sliding_window=512, ctx_train=32768))


# ---------------------------------------------------------------------------
# metadata


def test_read_model_llama(llama_gqa):
    info = llama_gqa
    assert info.arch == "llama" and info.n_layer == 32
    assert info.n_head == [32] * 32 and info.n_head_kv == [8] * 32
    assert info.head_k == info.head_v == 128  # n_embd / n_head
    assert not info.uses_swa and info.notes == []
    assert info.ctx_train == 131072
    assert info.file_type_name == "Q4_K_M"
    assert info.weight_bytes == 64 * 2
    assert info.n_vocab == 4


def test_read_model_gemma3_pattern(gemma3):
    # llama.cpp's gemma3: set_swa_pattern(6): layer il is SWA iff il % 6 < 5
    assert gemma3.uses_swa and gemma3.n_swa == 512 and gemma3.swa_type == "standard"
    assert [il for il, s in enumerate(gemma3.is_swa) if not s] == [5, 11, 17]
    assert gemma3.n_swa_layers == 15


def test_gemma3_without_window_is_global(tmp_path):
    info = read_model(write_gguf(tmp_path / "g.gguf", "gemma3", n_layer=6, n_embd=256,
                                 n_head=2, n_head_kv=1, key_length=128, value_length=128))
    assert not info.uses_swa


def test_gemma2_default_window_and_pattern(tmp_path):
    info = read_model(write_gguf(tmp_path / "g2.gguf", "gemma2", n_layer=4, n_embd=256,
                                 n_head=2, n_head_kv=1, key_length=128, value_length=128))
    assert info.n_swa == 4096  # gemma2's default
    assert info.is_swa == [True, False, True, False]  # pattern 2: il % 2 < 1


def test_swa_pattern_metadata_overrides(tmp_path):
    info = read_model(write_gguf(tmp_path / "a.gguf", "gemma3", n_layer=6, n_embd=256,
                                 n_head=2, n_head_kv=1, key_length=128, sliding_window=256,
                                 swa_pattern=[True, False, True, True, False, False]))
    assert info.is_swa == [True, False, True, True, False, False]
    info = read_model(write_gguf(tmp_path / "s.gguf", "gemma3", n_layer=6, n_embd=256,
                                 n_head=2, n_head_kv=1, key_length=128, sliding_window=256,
                                 swa_pattern=3))
    assert info.is_swa == [True, True, False, True, True, False]


def test_unknown_arch_is_global_and_says_so(tmp_path):
    info = read_model(write_gguf(tmp_path / "u.gguf", "frobnicator", n_head_kv=2,
                                 sliding_window=128))
    assert not info.uses_swa and not info.arch_known
    assert any("unknown architecture 'frobnicator'" in n and "global" in n for n in info.notes)


def test_file_type_guessed_from_tensors(tmp_path):
    info = read_model(write_gguf(tmp_path / "g.gguf", file_type=None))
    assert info.file_type_name == "F16 (guessed)"


# ---------------------------------------------------------------------------
# KV byte arithmetic (hand-computed)


def test_kv_bytes_mha(llama_mha):
    # -c 1000 pads to 1024 cells; K row f16 = 4 heads * 64 * 2 B = 512 B; 4 layers, K+V
    assert kv_bytes(llama_mha, 1000, "f16", "f16") == 512 * 1024 * 4 * 2
    # q8_0 row = 256 / 32 * 34 = 272 B
    assert kv_bytes(llama_mha, 1024, "q8_0", "q8_0") == 272 * 1024 * 4 * 2
    # turbo4 row = 256 / 64 * 34 = 136 B (block of 64: 2 B scale + 32 B of 4-bit indices)
    assert kv_bytes(llama_mha, 1024, "q8_0", "turbo4") == (272 + 136) * 1024 * 4


def test_kv_bytes_gqa(llama_gqa):
    # Llama-3-8B at 8192 tokens with f16 K/V: exactly 1 GiB
    assert kv_bytes(llama_gqa, 8192, "f16", "f16") == GIB
    # K q8_0 row: 1024/32*34 = 1088 B; V turbo3 row: 1024/128*50 = 400 B
    assert kv_bytes(llama_gqa, 8192, "q8_0", "turbo3") == (1088 + 400) * 8192 * 32
    # turbo2 row: 1024/128*34 = 272 B
    assert kv_bytes(llama_gqa, 8192, "turbo2", "turbo2") == 2 * 272 * 8192 * 32
    # -c 0 means the trained context
    assert kv_bytes(llama_gqa, 0, "f16", "f16") == 16 * GIB


def test_kv_bytes_parallel(llama_gqa):
    per_cell = 32 * 2 * 2048
    # unified (default): one stream of PAD(N, 256) cells shared by the slots
    assert kv_bytes(llama_gqa, 1000, "f16", "f16", parallel=4) == per_cell * 1024
    # one stream per slot: PAD(PAD(N,256) / P, 256) cells each
    assert kv_bytes(llama_gqa, 1000, "f16", "f16", parallel=4, unified=False) == per_cell * 256 * 4
    assert kv_bytes(llama_gqa, 1000, "f16", "f16", parallel=3, unified=False) == per_cell * 512 * 3
    # each slot gets at least 256 cells: -c 256 -np 2 allocates 2 x 256
    assert kv_bytes(llama_gqa, 256, "f16", "f16", parallel=2, unified=False) == per_cell * 256 * 2
    with pytest.raises(TqpatchError, match="parallel"):
        kv_bytes(llama_gqa, 4096, "f16", "f16", parallel=257)


def test_kv_bytes_gemma3_swa(gemma3):
    row = 256 * 2  # 1 kv head * 256 * f16
    caches = kv_caches(gemma3, 4096, "f16", "f16")
    assert [(c.kind, c.cells, c.layers) for c in caches] == [("global", 4096, 3), ("swa", 1024, 15)]
    # SWA cells: PAD(min(4096, 512 * 1 + 512), 256) = 1024
    assert kv_bytes(gemma3, 4096, "f16", "f16") == 2 * row * (3 * 4096 + 15 * 1024)
    assert caches[0].k_bytes == 6 * MIB and caches[1].k_bytes == 7.5 * MIB
    # unified, 2 slots: window counts per slot: PAD(min(4096, 512*2 + 512), 256) = 1536
    assert kv_bytes(gemma3, 4096, "f16", "f16", parallel=2) == 2 * row * (3 * 4096 + 15 * 1536)
    # per-slot streams: 2 x 2048 global cells, 2 x PAD(min(2048, 512 + 512), 256) SWA cells
    assert kv_bytes(gemma3, 4096, "f16", "f16", parallel=2, unified=False) == \
        2 * row * 2 * (3 * 2048 + 15 * 1024)
    # small context: n_ubatch = min(300, 512) = 300; SWA cells PAD(min(512, 812), 256) = 512
    assert kv_bytes(gemma3, 300, "f16", "f16") == 2 * row * 18 * 512
    # --swa-full: SWA layers get the full context
    assert kv_bytes(gemma3, 4096, "f16", "f16", swa_full=True) == 2 * row * 18 * 4096
    # a long context: only the 3 global layers grow
    assert kv_bytes(gemma3, 32768, "q8_0", "q8_0") == 2 * 272 * (3 * 32768 + 15 * 1024)


def test_kv_bytes_per_layer_kv_heads(tmp_path):
    info = read_model(write_gguf(tmp_path / "pl.gguf", n_layer=4, n_embd=512, n_head=8,
                                 n_head_kv=[8, 4, 0, 2]))
    assert info.n_head_kv == [8, 4, 0, 2] and info.head_k == 64
    assert kv_bytes(info, 256, "f16", "f16") == (8 + 4 + 0 + 2) * 64 * 2 * 256 * 2
    # without flash attention llama.cpp pads every V row to the largest layer's
    assert kv_bytes(info, 256, "f16", "f16", flash_attn=False) == \
        (8 + 4 + 0 + 2) * 64 * 2 * 256 + 4 * 8 * 64 * 2 * 256


def test_key_length_differs_from_value_length(tmp_path):
    info = read_model(write_gguf(tmp_path / "kv.gguf", n_layer=2, n_embd=512, n_head=4,
                                 n_head_kv=2, key_length=192, value_length=128))
    assert kv_bytes(info, 256, "f16", "f16") == 2 * 256 * 2 * 2 * (192 + 128)
    assert support(info, "turbo3", "turbo3") is None      # 192 and 128: turbo3's 64-value blocks
    assert "K head size 200" in support(
        read_model(write_gguf(tmp_path / "kv2.gguf", n_layer=2, n_embd=512, n_head=4, n_head_kv=2,
                              key_length=200, value_length=128)), "turbo3", "turbo3")
    assert support(info, "q8_0", "turbo3") is None


# ---------------------------------------------------------------------------
# unsupported head sizes


@pytest.mark.parametrize("head,bad", [
    (32, set()),       # turbo2_b32 / turbo3_b32
    (64, set()),
    (96, set()),       # turbo2_b96 / turbo3_b96, turbo4
    (192, set()),
    (256, set()),
    (80, {"q8_0", "q4_0", "turbo4", "turbo3", "turbo2"}),
])
def test_unsupported_head_sizes(tmp_path, head, bad):
    info = read_model(write_gguf(tmp_path / "h.gguf", n_layer=2, n_embd=head * 4, n_head=4,
                                 n_head_kv=2))
    assert info.head_k == head
    rows = {r.label: r for r in plan_rows(info, 1024)}
    for label, r in rows.items():
        k, v = label.split("/")
        expect_bad = k in bad or v in bad
        assert r.supported is not expect_bad, label
        if expect_bad:
            assert "not a multiple" in r.reason and r.kv_bytes is None
            with pytest.raises(TqpatchError, match="cannot serve"):
                kv_bytes(info, 1024, k, v)


def test_no_turbo_head_recommends_upstream(tmp_path):
    # every multiple of 32 has a turbo variant; 80 has none (and no q8_0 either)
    info = read_model(write_gguf(tmp_path / "h80.gguf", n_layer=2, n_embd=320, n_head=4,
                                 n_head_kv=2))
    rec = recommend(info, 4096)
    assert (rec.type_k, rec.type_v) == ("f16", "f16")
    assert any("turbo types cannot serve" in r for r in rec.reasons)
    assert "-ctk f16 -ctv f16" in rec.flags


def test_head_96_gets_the_turbo_variants(tmp_path):
    info = read_model(write_gguf(tmp_path / "h96.gguf", n_layer=2, n_embd=384, n_head=4,
                                 n_head_kv=2))
    rec = recommend(info, 4096)
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo4")
    # turbo3 on a head of 96 is turbo3_b96: 37 bytes per 96 values
    assert kv_bytes(info, 256, "turbo3", "turbo3") == 2 * 2 * 256 * 2 * 37


# ---------------------------------------------------------------------------
# recommendation


def coherence_table(family, **results):
    """A coherence table with one measurement: results as K_V='n_coherent/n_prompts'."""
    rows = {}
    for key, verdict in results.items():
        n, of = map(int, verdict.split("/"))
        rows[key.replace("_V_", "/")] = {"n_coherent": n, "n_prompts": of}
    return {"families": {family: [{"backend": "cpu", "source": "test", "results": rows}]}}


def test_recommend_q4_k_m(tmp_path):
    path = write_gguf(tmp_path / "q4.gguf", n_layer=8, n_embd=4096, n_head=32, n_head_kv=8,
                      file_type=15)
    rec = recommend(read_model(path), 8192)
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo4")
    assert rec.flags == f"llama-server -m {path} -c 8192 -ctk q8_0 -ctv turbo4 -fa on"
    text = " ".join(rec.reasons)
    assert "K precision dominates" in text and "Q4_K_M" in text
    assert any("-ctv turbo3" in a and "smaller" in a for a in rec.alternatives)
    assert not any("-ctk turbo" in a for a in rec.alternatives)  # never symmetric on Q4_K_M


def test_default_is_what_help_says():
    from tqpatch.plan.recommend import DEFAULT

    assert DEFAULT == ("q8_0", "turbo4")
    assert f"-ctk {DEFAULT[0]} -ctv {DEFAULT[1]}" in CliRunner().invoke(main, ["--help"]).output


def test_readme_headline_is_serve():
    """The README's one-line pitch is `tqpatch serve`, whose choice plan shows once it
    has probed (issue 24); plan's own default without a probe is what --help says."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    headline = readme.split("```")[1]  # the first code block: the one-line pitch
    assert "tqpatch serve " in headline, headline


def test_recommend_q8_0_symmetric_only_where_measured_coherent(tmp_path):
    info = read_model(write_gguf(tmp_path / "q8.gguf", n_layer=8, n_embd=4096, n_head=32,
                                 n_head_kv=8, file_type=7))
    # a family without measurements: only q8_0 K
    rec = recommend(info, 8192, table={"families": {}})
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo4")
    assert not any("-ctk turbo" in a for a in rec.alternatives)
    assert any("no coherence measurement for this family" in r for r in rec.reasons)
    # measured coherent: offered; measured incoherent: never
    table = coherence_table("llama", turbo4_V_turbo4="3/3", turbo3_V_turbo3="1/3")
    rec = recommend(info, 8192, table=table)
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo4")
    assert any("-ctk turbo4 -ctv turbo4" in a for a in rec.alternatives)
    assert not any("-ctk turbo3" in a for a in rec.alternatives)
    assert any("not turbo3/turbo3: greedy continuations go incoherent on llama (coherent "
               "prompts: cpu 1/3" in r for r in rec.reasons)


def test_recommend_drops_incoherent_q8_0_k_too(tmp_path):
    info = read_model(write_gguf(tmp_path / "q4.gguf", n_layer=8, n_embd=4096, n_head=32,
                                 n_head_kv=8, file_type=15))
    table = coherence_table("llama", q8_0_V_turbo4="3/3", q8_0_V_turbo3="3/3",
                            q8_0_V_turbo2="1/3")
    need3 = kv_bytes(info, 32768, "q8_0", "turbo3")
    # memory for q8_0/turbo2 only: still never the incoherent one
    rec = recommend(info, 32768, vram_gib=(info.weight_bytes + need3 - 1) / GIB, overhead_mib=0,
                    table=table)
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo3")
    assert not any("turbo2" in a for a in rec.alternatives)
    assert any("even q8_0/turbo3 needs" in r for r in rec.reasons)


def test_recommend_qwen_stays_asymmetric(tmp_path):
    path = write_gguf(tmp_path / "qw.gguf", "qwen2", n_layer=4, n_embd=1024, n_head=8,
                      n_head_kv=2, file_type=7)
    rec = recommend(read_model(path), 8192)
    assert rec.type_k == "q8_0"
    assert not any("-ctk turbo" in a for a in rec.alternatives)
    assert any("its coherence is not measured for qwen2" in r for r in rec.reasons)


def test_gemma3_never_gets_what_the_measured_table_shows_incoherent(tmp_path):
    """The shipped table: whatever the weights and memory, plan stays off the configurations
    the coherence check found incoherent on Gemma 3 (any backend)."""
    from tqpatch import coherence

    bad = {(k, v) for k, v in formats.KV_CONFIGS
           if coherence.verdict("gemma3", k, v) == "incoherent"}
    assert ("turbo2", "turbo2") in bad and ("turbo3", "turbo3") in bad
    for file_type in (1, 7, 15):  # F16, Q8_0, Q4_K_M weights
        info = read_model(write_gguf(tmp_path / f"g{file_type}.gguf", "gemma3", n_layer=18,
                                     n_embd=640, n_head=4, n_head_kv=1, key_length=256,
                                     value_length=256, sliding_window=512, ctx_train=32768,
                                     file_type=file_type))
        for vram_extra in (None, 1, 0.001):
            vram = None if vram_extra is None else (info.weight_bytes / GIB + vram_extra)
            rec = recommend(info, 32768, vram_gib=vram, overhead_mib=0)
            offered = [(rec.type_k, rec.type_v)] + [
                tuple(a.split("-ctk ")[1].split(" -fa")[0].split(" -ctv ")) for a in rec.alternatives]
            assert not bad & set(offered), (file_type, vram, offered)


def test_recommend_memory_tight(llama_gqa):
    info = llama_gqa
    ctx = 32768
    need4 = kv_bytes(info, ctx, "q8_0", "turbo4")
    need3 = kv_bytes(info, ctx, "q8_0", "turbo3")
    overhead = 0
    # budget between q8_0/turbo3 and q8_0/turbo4: V drops to turbo3
    vram = (info.weight_bytes + (need3 + need4) // 2) / GIB
    rec = recommend(info, ctx, vram_gib=vram, overhead_mib=overhead)
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo3")
    assert any("memory is tight" in r for r in rec.reasons)
    # Q4_K_M and nothing fits: the smallest asymmetric one, with the context that fits
    rec = recommend(info, ctx, vram_gib=(info.weight_bytes + 1) / GIB, overhead_mib=0)
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo2")
    assert any("not even 256 tokens fit" in r for r in rec.reasons)
    best = max_ctx(info, "q8_0", "turbo2", need3 // 2)
    rec = recommend(info, ctx, vram_gib=(info.weight_bytes + need3 // 2) / GIB, overhead_mib=0)
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo2")
    assert 0 < best < ctx and any(f"largest context that fits is -c {best}" in r for r in rec.reasons)
    # the weights alone exceed the budget: KV types cannot help, say so
    rec = recommend(info, ctx, vram_gib=0.5, overhead_mib=1024)
    assert (rec.type_k, rec.type_v) == ("q8_0", "turbo4")
    assert any("already exceed" in r for r in rec.reasons)


def test_recommend_memory_tight_q8_weights_goes_symmetric(tmp_path):
    info = read_model(write_gguf(tmp_path / "q8.gguf", n_layer=32, n_embd=4096, n_head=32,
                                 n_head_kv=8, file_type=7, ctx_train=131072))
    ctx = 32768
    need = kv_bytes(info, ctx, "turbo4", "turbo4")
    table = coherence_table("llama", turbo4_V_turbo4="3/3")
    rec = recommend(info, ctx, vram_gib=(info.weight_bytes + need) / GIB, overhead_mib=0,
                    table=table)
    assert (rec.type_k, rec.type_v) == ("turbo4", "turbo4")


def test_max_ctx(llama_gqa):
    # f16: 131072 B per token; 1 GiB holds exactly 8192 tokens
    assert max_ctx(llama_gqa, "f16", "f16", GIB) == 8192
    assert max_ctx(llama_gqa, "f16", "f16", GIB - 1) == 8192 - 256
    assert max_ctx(llama_gqa, "f16", "f16", 10**15) == llama_gqa.ctx_train
    assert max_ctx(llama_gqa, "f16", "f16", 0) == 0
    rows = {r.label: r for r in plan_rows(llama_gqa, 8192, vram_gib=2 + llama_gqa.weight_bytes / GIB,
                                          overhead_mib=1024)}
    assert rows["f16/f16"].max_ctx == 8192
    assert budget_for_kv(llama_gqa, 2.0, 1024) == GIB - llama_gqa.weight_bytes


def test_compression_column(llama_gqa):
    rows = {r.label: r for r in plan_rows(llama_gqa, 8192)}
    assert rows["f16/f16"].compression == 1.0
    assert rows["q8_0/q8_0"].compression == pytest.approx(16 / 8.5)
    assert rows["turbo3/turbo3"].compression == pytest.approx(16 / 3.125)
    assert rows["q8_0/turbo4"].bpv_v == 4.25


# ---------------------------------------------------------------------------
# bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(TqpatchError, match="no such file"):
        read_model(tmp_path / "nope.gguf")


def test_random_bytes(tmp_path):
    p = tmp_path / "rand.gguf"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(TqpatchError, match="not a GGUF file"):
        read_model(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    with pytest.raises(TqpatchError, match="not a GGUF file"):
        read_model(p)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated(tmp_path, keep):
    src = write_gguf(tmp_path / "full.gguf", tensor_elems=4096)
    data = src.read_bytes()
    p = tmp_path / "trunc.gguf"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TqpatchError, match="truncated"):
        read_model(p)


def test_tokenizer_only_gguf(tmp_path):
    p = write_gguf(tmp_path / "vocab.gguf", hparams=False, file_type=None, tensor_elems=0)
    with pytest.raises(TqpatchError, match=r"not an LLM GGUF: missing llama\.block_count"):
        read_model(p)
    p = write_gguf(tmp_path / "noarch.gguf", hparams=False, file_type=None, tensor_elems=0,
                   drop=["general.architecture"])
    with pytest.raises(TqpatchError, match="not an LLM GGUF: missing general.architecture"):
        read_model(p)


def test_no_attention_metadata(tmp_path):
    p = write_gguf(tmp_path / "na.gguf", drop=["llama.attention.head_count"])
    with pytest.raises(TqpatchError, match=r"missing llama\.attention\.head_count"):
        read_model(p)
    p = write_gguf(tmp_path / "h0.gguf", n_head=0)
    with pytest.raises(TqpatchError, match="not an LLM GGUF"):
        read_model(p)


# ---------------------------------------------------------------------------
# untrusted metadata: every count bounded by what the file can hold


def overwrite(path, at: int, fmt: str, value) -> None:
    """Write value (struct format fmt) at byte offset at of the file."""
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, at, value)
    path.write_bytes(bytes(data))


def array_length_offset(path, key: str) -> int:
    """Byte offset of the declared length of metadata array `key`."""
    name = key.encode()
    return path.read_bytes().index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4 + 4


@pytest.mark.parametrize("kw,message", [
    # 1e9 layers once grew plan to 6.7 GB in 15 s
    (dict(n_layer=10**9), r"llama\.block_count = 1000000000 exceeds 512 \(llama\.cpp's LLAMA_MAX_LAYERS\)"),
    (dict(n_layer=513), r"llama\.block_count = 513 exceeds 512"),
    (dict(ctx_train=2**32 - 1), r"llama\.context_length = 4294967295 exceeds 2147483647"),
    (dict(extra=[("add_uint32", "llama.embedding_length", 2**32 - 1)]), r"llama\.embedding_length = 4294967295 exceeds 1048576"),
    (dict(n_head=2**32 - 1), r"llama\.attention\.head_count = 4294967295 exceeds 256"),
    (dict(n_head=4, n_head_kv=[1] * 600), r"llama\.attention\.head_count_kv = an array of 600 "
                                           r"has more than 512 entries"),
    (dict(n_head=4, n_head_kv=[1, 1, 9, 1]), r"llama\.attention\.head_count_kv = 9 exceeds 4"),
    (dict(key_length=2**31), r"llama\.attention\.key_length = 2147483648 exceeds 1048576"),
    (dict(extra=[("add_int32", "llama.attention.head_count", -4)]),
     r"llama\.attention\.head_count = -4 is below 0"),
    (dict(extra=[("add_uint64", "llama.block_count", 2**63)]),
     r"llama\.block_count = 9223372036854775808 exceeds 512"),
    (dict(extra=[("add_float32", "llama.block_count", 4.5)]),
     r"llama\.block_count = 4\.5 is not a whole number"),
    (dict(extra=[("add_string", "llama.context_length", "4096")]),
     r"llama\.context_length = 4096 is not a whole number"),
    (dict(arch="gemma3", sliding_window=2**32 - 1), r"gemma3\.attention\.sliding_window = "
                                                      r"4294967295 exceeds 2147483647"),
])
def test_counts_beyond_bounds_are_refused(tmp_path, kw, message):
    p = write_gguf(tmp_path / "crafted.gguf", **kw)
    with pytest.raises(TqpatchError, match=message) as err:
        read_model(p)
    assert "\n" not in str(err.value) and "corrupt or crafted" in str(err.value)


@pytest.mark.parametrize("field,offset", [("tensor count", 8), ("metadata key count", 16)])
def test_header_counts_bounded_by_file_size(tmp_path, field, offset):
    p = write_gguf(tmp_path / "h.gguf")
    overwrite(p, offset, "<Q", 10**12)
    with pytest.raises(TqpatchError, match=f"GGUF header {field} 1000000000000 cannot fit in a "
                                           f"{p.stat().st_size}-byte file"):
        read_model(p)


@pytest.mark.parametrize("key", ["tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                 "llama.attention.head_count_kv"])
def test_array_lengths_bounded_by_file_size(tmp_path, key):
    p = write_gguf(tmp_path / "a.gguf", n_head_kv=[2, 2, 2, 2])
    overwrite(p, array_length_offset(p, key), "<Q", 10**12)
    with pytest.raises(TqpatchError, match=f"metadata {re.escape(key)} declares an array of "
                                           "1000000000000 entries, more than the"):
        read_model(p)


def test_crafted_counts_refused_on_the_command_line(tmp_path):
    p = write_gguf(tmp_path / "bc.gguf", n_layer=10**9)
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", "0"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.count("\n") == 1 and "block_count = 1000000000" in res.output


def test_embedding_arch(tmp_path):
    p = write_gguf(tmp_path / "bert.gguf", "bert")
    with pytest.raises(TqpatchError, match="no KV cache"):
        read_model(p)


# ---------------------------------------------------------------------------
# llama.cpp log parsing

REAL_LINE = ("llama_kv_cache: size =   18.00 MiB (  4096 cells,  18 layers,  1/1 seqs), "
             "K (f16):    9.00 MiB, V (f16):    9.00 MiB")


def test_parse_kv_sizes_line():
    assert parse_kv_sizes(REAL_LINE) == [{
        "size_mib": 18.0, "cells": 4096, "layers": 18, "n_seq_max": 1, "n_stream": 1,
        "type_k": "f16", "k_mib": 9.0, "type_v": "f16", "v_mib": 9.0,
    }]


def test_parse_kv_sizes_iswa_log():
    log = "\n".join([
        "llama_context: n_ctx         = 4096",
        "llama_kv_cache_iswa: creating non-SWA KV cache, size = 4096 cells",
        "llama_kv_cache:        CPU KV buffer size =     9.00 MiB",
        "llama_kv_cache: size =    9.00 MiB (  4096 cells,   3 layers,  4/1 seqs), "
        "K (q8_0):    3.19 MiB, V (turbo3):    1.17 MiB",
        "llama_kv_cache_iswa: creating     SWA KV cache, size = 1536 cells",
        "llama_kv_cache: size =   11.25 MiB (  1536 cells,  15 layers,  4/4 seqs), "
        "K (f16):    5.62 MiB, V (f16):    5.62 MiB",
    ])
    got = parse_kv_sizes(log)
    assert [(g["cells"], g["layers"], g["n_seq_max"], g["n_stream"]) for g in got] == \
        [(4096, 3, 4, 1), (1536, 15, 4, 4)]
    assert got[0]["type_k"] == "q8_0" and got[0]["type_v"] == "turbo3" and got[0]["v_mib"] == 1.17
    assert parse_kv_sizes("llama_kv_cache: CPU KV buffer size = 9.00 MiB") == []


# ---------------------------------------------------------------------------
# CLI


def test_cli_plan_text(tmp_path):
    p = write_gguf(tmp_path / "g3.gguf", "gemma3", n_layer=18, n_embd=640, n_head=4, n_head_kv=1,
                   key_length=256, value_length=256, sliding_window=512, ctx_train=32768)
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", "4096", "--vram", "1"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "15 sliding-window of 512 tokens, 3 global" in out
    assert "global layers 4096 cells, swa layers 1024 cells" in out
    for label in ("f16/f16", "q8_0/q8_0", "q4_0/q4_0", "q8_0/turbo4", "q8_0/turbo3",
                  "q8_0/turbo2", "turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2"):
        assert label in out
    assert "27.00" in out  # f16 MiB: 2 * 512 B * (3*4096 + 15*1024)
    assert "max ctx" in out and "compute allowance" in out
    assert f"llama-server -m {p} -c 4096 -ctk q8_0 -ctv turbo4 -fa on" in out


def test_cli_plan_json_and_unsupported(tmp_path):
    p = write_gguf(tmp_path / "h64.gguf", n_layer=2, n_embd=512, n_head=8, n_head_kv=2)
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", "2048", "--json", "-np", "2"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    rows = {c["label"]: c for c in d["configs"]}
    assert rows["q8_0/turbo3"]["supported"] is True          # turbo3 blocks of 64
    assert rows["f16/f16"]["kv_bytes"] == 2 * 2 * 128 * 2 * 2048
    p80 = write_gguf(tmp_path / "h80.gguf", n_layer=2, n_embd=320, n_head=4, n_head_kv=2)
    res = CliRunner().invoke(main, ["plan", str(p80), "--ctx", "2048", "--json"])
    rows = {c["label"]: c for c in json.loads(res.output)["configs"]}
    assert rows["q8_0/turbo3"]["supported"] is False
    assert "turbo3's block of 64/96/32" in rows["q8_0/turbo3"]["reason"]
    assert d["recommendation"]["flags"].endswith("-np 2 -kvu")


@pytest.mark.parametrize("make,msg", [
    (lambda d: d / "missing.gguf", "no such file"),
    (lambda d: (d / "r.bin").write_bytes(b"\x00" * 100) and d / "r.bin", "not a GGUF"),
])
def test_cli_plan_errors(tmp_path, make, msg):
    path = make(tmp_path)
    res = CliRunner().invoke(main, ["plan", str(path), "--ctx", "4096"])
    assert res.exit_code == 1
    assert msg in res.output and "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)


def test_cli_plan_warns_beyond_trained_context(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", ctx_train=8192)
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", "16384"])
    assert res.exit_code == 0, res.output
    assert ("warning: -c 16384 is beyond the model's trained context of 8192 "
            "(llama.context_length)") in res.output
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", "16384", "--json"])
    assert "beyond the model's trained context" in json.loads(res.output)["warnings"][0]
    for ctx in ("8192", "0"):  # at the trained context (0 means it): no warning
        res = CliRunner().invoke(main, ["plan", str(p), "--ctx", ctx])
        assert res.exit_code == 0 and "warning" not in res.output


def test_cli_plan_sizes_every_llama_cpp_cache_type(tmp_path):
    from tqpatch.formats import UPSTREAM_TYPES, type_info

    p = write_gguf(tmp_path / "m.gguf", n_layer=2, n_embd=512, n_head=4, n_head_kv=2)
    configs = ",".join(f"{t}/{t}" for t in UPSTREAM_TYPES) + ",q8_0/turbo3:bv1"
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", "4096", "--json", "--configs", configs])
    assert res.exit_code == 0, res.output
    rows = {r["label"]: r for r in json.loads(res.output)["configs"]}
    for t in UPSTREAM_TYPES:  # 2 layers x 2 KV heads x 128 x 4096 cells, K and V
        ti = type_info(t)
        assert rows[f"{t}/{t}"]["kv_bytes"] == 2 * 2 * 2 * 4096 * 128 // ti.block_size * ti.block_bytes
    # a configuration with its own boundary layers: layer 0 and 1 of 2 at q8_0
    assert rows["q8_0/turbo3:bv1"]["bpv_v"] == 8.5
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", "4096", "--configs", "q8_0/turbo9"])
    assert res.exit_code == 1 and "unknown cache type 'turbo9'" in res.output


def test_cli_plan_shows_measured_coherence(tmp_path):
    p = write_gguf(tmp_path / "g3.gguf", "gemma3", n_layer=18, n_embd=640, n_head=4, n_head_kv=1,
                   key_length=256, value_length=256, sliding_window=512, ctx_train=32768)
    out = CliRunner().invoke(main, ["plan", str(p), "--ctx", "4096"]).output
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.startswith("  ") and "/" in line and " cal " not in line}
    import json
    from importlib.resources import files

    table = json.loads((files("tqpatch") / "data" / "coherence.json").read_text())["families"]["gemma3"]
    cuda = next(e for e in table if e["backend"] == "cuda")["results"]["turbo2/turbo2"]
    assert "NO (" in rows["turbo2/turbo2"]
    assert f"cuda {cuda['n_coherent']}/{cuda['n_prompts']}" in rows["turbo2/turbo2"]
    assert " yes" in rows["q8_0/turbo4"]
    llama = write_gguf(tmp_path / "l.gguf", n_embd=512)  # head size 128: every type serves it
    out = CliRunner().invoke(main, ["plan", str(llama), "--ctx", "4096"]).output
    rows = [line for line in out.splitlines() if line.startswith("  ") and "x  " in line]
    plain = [line for line in rows if " cal " not in line]
    assert len(plain) == len(formats.KV_CONFIGS)  # llama: not measured
    assert all(line.rstrip().endswith("x  -") for line in plain), rows
    # the table measured no calibrated cache: the calibrated rows say where to measure them
    cal = [line for line in rows if " cal " in line]
    assert len(cal) == len(formats.PROBE_CONFIGS)
    assert all(re.search(r"x  -\s+probe with tqpatch serve$", line) for line in cal), cal


# ---------------------------------------------------------------------------
# calibrated configurations and serve's probe


def gemma_like(tmp_path, name="g3.gguf", **kw):
    args = dict(n_layer=18, n_embd=640, n_head=4, n_head_kv=1, key_length=256, value_length=256,
                sliding_window=512, ctx_train=32768)
    return write_gguf(tmp_path / name, "gemma3", **{**args, **kw})


# (K, V, calibrated) -> (KLD, coherent): Gemma 3 270M's shape (docs/quality.md)
PROBED = {
    ("q8_0", "q8_0", False): (0.006, True), ("q4_0", "q4_0", False): (0.142, True),
    ("q8_0", "turbo4", False): (0.012, True), ("turbo4", "turbo4", False): (0.09, True),
    ("turbo3", "turbo3", False): (0.695, False),
    ("q8_0", "turbo4", True): (0.007, True), ("q8_0", "turbo3", True): (0.03, True),
    ("q8_0", "turbo2", True): (0.08, True), ("turbo4", "turbo4", True): (0.028, True),
    ("turbo4", "turbo3", True): (0.09, True), ("turbo3", "turbo3", True): (0.124, True),
    ("turbo3", "turbo2", True): (0.2, True), ("turbo2", "turbo2", True): (0.4, False),
}


def write_probe(model, probed=PROBED, backend="cuda", calibrated=True, calib=True, build="b1"):
    """A probe as `tqpatch serve` caches it (tqpatch.serve.session.ensure_probe)."""
    from tqpatch.serve import store
    from tqpatch.quality import ProbeRow

    record = {"inputs": {"digest": build, "render": {"codebooks": "test"}}}
    path = store.probe_path(store.model_sha256(model), record, backends.get(backend),
                            calibrated=calibrated)
    rows = [ProbeRow(k, v, cal, kld=kld, ppl=20.0, coherent=coh,
                     coherence="3/3" if coh else "1/3").to_dict()
            for (k, v, cal), (kld, coh) in probed.items()]
    store.save_json(path, {"fingerprint": {"version": 1, "text": "t", "chunks": 3, "ctx": 512},
                           "model": model.name, "backend": backend, "rows": rows})
    if calib:
        (path.parent / "calib.gguf").write_bytes(b"GGUF")
    return path


def plan_cli(*args):
    res = CliRunner().invoke(main, ["plan", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res.output


def table_rows(out):
    """label -> table line, the calibrated rows as 'K/V cal'."""
    return {" ".join(line.split()[:2]) if " cal " in line else line.split()[0]: line
            for line in out.splitlines() if line.startswith("  ") and re.search(r"\dx  ", line)}


def test_plan_lists_calibrated_configurations_without_a_probe(tmp_path):
    p = gemma_like(tmp_path)
    out = plan_cli(p, "--ctx", "4096")
    rows = table_rows(out)
    assert "with the model's calibration (`tqpatch calibrate`, then llama-server --turbo-calib" in out
    for k, v in formats.PROBE_CONFIGS:
        line = rows[f"{k}/{v} cal"]
        assert line.endswith("probe with tqpatch serve"), line
        plain = rows.get(f"{k}/{v}")  # a calibration does not change the memory
        if plain:
            assert line.split()[2:6] == plain.split()[1:5]
    assert "KLD" not in out.split("recommendation")[0]  # nothing measured: no probe columns
    # today's policy, and one line saying how to measure the rest
    assert "recommendation: -ctk q8_0 -ctv turbo4\n" in out
    assert (f"calibrated turbo K/V may be smaller at the same quality: `tqpatch serve {p}` "
            "measures it on this machine") in out
    d = json.loads(plan_cli(p, "--ctx", "4096", "--json"))
    cal = [c for c in d["configs"] if c["calibrated"]]
    assert [(c["type_k"], c["type_v"]) for c in cal] == list(formats.PROBE_CONFIGS)
    assert all(c["label"].endswith(" cal") == c["calibrated"] and c["measured"] is None
               for c in d["configs"])
    assert d["probe"] is None and d["quality"] == "balanced"
    rec = d["recommendation"]
    assert (rec["type_k"], rec["type_v"], rec["source"], rec["calibrated"]) == \
        ("q8_0", "turbo4", "policy", False)
    assert {"flags", "reasons", "alternatives"} <= set(rec)
    # --configs: exactly what was asked
    d = json.loads(plan_cli(p, "--ctx", "4096", "--json", "--configs", "q8_0/turbo3"))
    assert [c["label"] for c in d["configs"]] == ["q8_0/turbo3"]


def test_plan_shows_the_probe_figures(tmp_path):
    p = gemma_like(tmp_path)
    probe = write_probe(p)
    out = plan_cli(p, "--ctx", "4096")
    rows = table_rows(out)
    assert re.search(r"\s0\.0280\s+yes 3/3$", rows["turbo4/turbo4 cal"])
    assert re.search(r"\s0\.1240\s+yes 3/3$", rows["turbo3/turbo3 cal"])
    assert re.search(r"\s0\.4000\s+NO 1/3$", rows["turbo2/turbo2 cal"])
    # plain rows: measured where the probe ran them, the family table beside
    assert re.search(r"NO \(.*\)\s+0\.6950\s+NO 1/3$", rows["turbo3/turbo3"])
    assert re.search(r"\s0\.0060\s+yes 3/3$", rows["q8_0/q8_0"])
    assert re.search(r"\sref\s+-$", rows["f16/f16"])
    assert re.search(r"\s-\s+-$", rows["q8_0/turbo3"])  # not probed uncalibrated
    assert "probe with tqpatch serve" not in out
    assert f"measured on this model by `tqpatch serve`'s probe on cuda ({probe})" in out
    assert "3 x 512 tokens" in out
    d = json.loads(plan_cli(p, "--ctx", "4096", "--json"))
    by = {c["label"]: c for c in d["configs"]}
    assert by["turbo4/turbo4 cal"]["measured"]["kld"] == 0.028
    assert by["q8_0/turbo3"]["measured"] is None
    assert d["probe"]["backend"] == "cuda" and d["probe"]["path"] == str(probe)
    assert d["probe"]["calib"] == str(probe.parent / "calib.gguf") and d["probe"]["calib_exists"]
    # the probe ran without boundary layers: no figures for rows with them
    d = json.loads(plan_cli(p, "--ctx", "4096", "--json", "--boundary-v", "1"))
    assert all(c["measured"] is None for c in d["configs"] if c["boundary_v"])


@pytest.mark.parametrize("level", ["lossless", "balanced", "small"])
def test_plan_recommends_what_serve_chooses(tmp_path, level):
    from tqpatch import quality
    from tqpatch.quality import ProbeRow

    p = gemma_like(tmp_path)
    probe = write_probe(p)
    want = quality.choose([ProbeRow(k, v, cal, kld=kld, coherent=coh)
                          for (k, v, cal), (kld, coh) in PROBED.items()], level)
    # Gemma 3's shape: a calibrated turbo K/V wherever it meets the level
    assert (want.pair, want.calibrated) == {
        "lossless": (("q8_0", "turbo4"), True), "balanced": (("turbo4", "turbo4"), True),
        "small": (("turbo3", "turbo3"), True)}[level]
    d = json.loads(plan_cli(p, "--ctx", "4096", "--json", "--quality", level))
    rec = d["recommendation"]
    assert (rec["type_k"], rec["type_v"]) == want.pair and rec["calibrated"] is want.calibrated
    assert rec["source"] == "probe" and rec["level"] == level == d["quality"]
    calib = probe.parent / "calib.gguf"
    assert rec["calib"] == str(calib)
    assert rec["flags"] == (f"llama-server -m {p} -c 4096 -ctk {want.pair[0]} -ctv {want.pair[1]} "
                            f"-fa on --turbo-calib {calib}")
    assert any(want.reason in r for r in rec["reasons"])
    # the other levels' picks are the alternatives
    others = [lv for lv in quality.LEVELS if lv != level]
    assert [a.split("# --quality ")[1].split(":")[0] for a in rec["alternatives"]] == others
    out = plan_cli(p, "--ctx", "4096", "--quality", level)
    assert (f"recommendation: -ctk {want.pair[0]} -ctv {want.pair[1]} --turbo-calib {calib} "
            f"(--quality {level}, measured)") in out
    assert "missing now" not in out and "may be smaller at the same quality" not in out


def test_plan_recommends_uncalibrated_where_it_measures_best(tmp_path):
    """Without the calibration in the pick, no --turbo-calib; a probe run --no-calib counts."""
    p = gemma_like(tmp_path)
    plain = {key: val for key, val in PROBED.items() if not key[2]}
    write_probe(p, plain, calibrated=False, calib=False)
    d = json.loads(plan_cli(p, "--ctx", "4096", "--json", "--quality", "small"))
    rec = d["recommendation"]
    assert (rec["type_k"], rec["type_v"], rec["calibrated"]) == ("turbo4", "turbo4", False)
    assert "--turbo-calib" not in rec["flags"] and rec["calib"] is None
    assert d["probe"]["calib"] is None
    cal = [c for c in d["configs"] if c["calibrated"]]
    assert cal and all(c["measured"] is None for c in cal)


def test_plan_names_a_missing_calibration(tmp_path):
    p = gemma_like(tmp_path)
    probe = write_probe(p, calib=False)
    out = plan_cli(p, "--ctx", "4096")
    calib = probe.parent / "calib.gguf"
    assert f"--turbo-calib {calib} (missing now: `tqpatch serve {p}` makes it again" in out


def test_plan_probe_memory_permitting(tmp_path):
    """The most compressed configuration that meets the level and fits: with head sizes
    K 64 / V 512, turbo4/turbo4 has fewer bits per value than q8_0/turbo2 but more bytes."""
    p = write_gguf(tmp_path / "kv.gguf", n_layer=4, n_embd=256, n_head=4, n_head_kv=4,
                   key_length=64, value_length=512, ctx_train=8192)
    info = read_model(p)
    probed = {**PROBED, ("turbo4", "turbo3", True): (0.2, True),  # balanced: turbo4/turbo4 cal
              ("q8_0", "turbo2", True): (0.05, True)}
    write_probe(p, probed)
    big, small = kv_bytes(info, 8192, "turbo4", "turbo4"), kv_bytes(info, 8192, "q8_0", "turbo2")
    assert small < big
    vram = (info.weight_bytes + (small + big) // 2) / GIB
    d = json.loads(plan_cli(p, "--ctx", "8192", "--json", "--vram", vram, "--overhead", "0"))
    rec = d["recommendation"]
    assert (rec["type_k"], rec["type_v"], rec["calibrated"]) == ("q8_0", "turbo2", True)
    assert any("turbo4/turbo4 needs" in r and "memory is tight, so q8_0/turbo2" in r
               for r in rec["reasons"])
    # nothing that meets the level fits: choose's pick, with the context that does
    vram = (info.weight_bytes + small // 4) / GIB
    d = json.loads(plan_cli(p, "--ctx", "8192", "--json", "--vram", vram, "--overhead", "0"))
    rec = d["recommendation"]
    assert (rec["type_k"], rec["type_v"]) == ("q8_0", "turbo2")
    assert any("even q8_0/turbo2 needs" in r and "largest context that fits is -c" in r
               for r in rec["reasons"])


def test_plan_ignores_other_models_and_unusable_probes(tmp_path, monkeypatch):
    from tqpatch.serve import store

    p = gemma_like(tmp_path)
    # no probe at all in the cache: the model is not even hashed
    monkeypatch.setattr(store, "model_sha256", lambda *a, **k: pytest.fail("hashed"))
    assert "recommendation: -ctk q8_0 -ctv turbo4\n" in plan_cli(p, "--ctx", "4096")
    monkeypatch.undo()
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    other = gemma_like(tmp_path, "other.gguf", n_layer=12)
    write_probe(other)
    d = json.loads(plan_cli(p, "--ctx", "4096", "--json"))
    assert d["probe"] is None and d["recommendation"]["source"] == "policy"
    # a probe without the level's anchor: the policy, saying why
    no_anchor = {key: val for key, val in PROBED.items() if key[:2] != ("q4_0", "q4_0")}
    path = write_probe(p, no_anchor)
    d = json.loads(plan_cli(p, "--ctx", "4096", "--json"))
    rec = d["recommendation"]
    assert rec["source"] == "policy" and (rec["type_k"], rec["type_v"]) == ("q8_0", "turbo4")
    assert any("cannot rank configurations" in r and "q4_0/q4_0" in r for r in rec["reasons"])
    assert d["probe"]["path"] == str(path)  # its figures are still shown
    # unreadable rows: as if there were no probe (serve would probe again)
    data = json.loads(path.read_text())
    for bad in ([1, 2], [{"k": "turbo9", "v": "turbo3", "calibrated": True, "kld": 0.1}],
                [{"k": "q8_0", "v": "turbo3", "calibrated": True, "kld": "low"}],
                [{"k": "q8_0", "v": "turbo3", "calibrated": True, "kld": 0.1, "coherent": "yes"}]):
        path.write_text(json.dumps({**data, "rows": bad}))
        d = json.loads(plan_cli(p, "--ctx", "4096", "--json"))
        assert d["probe"] is None and d["recommendation"]["source"] == "policy"


def test_plan_quality_option(tmp_path):
    p = gemma_like(tmp_path)
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", "4096", "--quality", "huge"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "Invalid value for '--quality'" in res.output
    assert "'lossless', 'balanced', 'small'" in res.output
    help_text = " ".join(CliRunner().invoke(main, ["plan", "--help"]).output.split())
    for words in ("--quality [lossless|balanced|small]", "[default: balanced]",
                  "Where `tqpatch serve` has probed this model"):
        assert words in help_text


@pytest.mark.parametrize("option,value,message", [
    ("--vram", "nan", "'nan' is not a finite number"),
    ("--vram", "inf", "inf is not in the range 0<x<=1048576.0"),
    ("--vram", "-inf", "not in the range 0<x<="),
    ("--vram", "0", "not in the range 0<x<="),
    ("--vram", "-2", "not in the range 0<x<="),
    ("--overhead", "nan", "'nan' is not a finite number"),
    ("--overhead", "inf", "inf is not in the range 0<=x<=1073741824.0"),
    ("--overhead", "-1", "not in the range 0<=x<="),
])
def test_cli_plan_refuses_meaningless_memory(tmp_path, option, value, message):
    p = write_gguf(tmp_path / "m.gguf")
    args = ["plan", str(p), "--ctx", "4096", f"{option}={value}"]
    if option != "--vram":
        args.append("--vram=8")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"Invalid value for '{option}'" in res.output and message in res.output


@pytest.mark.parametrize("vram,overhead", [(float("nan"), 0), (float("inf"), 0), (0, 0),
                                           (8, float("nan")), (8, -1)])
def test_library_refuses_meaningless_memory(llama_gqa, vram, overhead):
    with pytest.raises(TqpatchError, match="must be a finite number"):
        plan_rows(llama_gqa, 4096, vram_gib=vram, overhead_mib=overhead)
    with pytest.raises(TqpatchError, match="must be a finite number"):
        recommend(llama_gqa, 4096, vram_gib=vram, overhead_mib=overhead)


# ---------------------------------------------------------------------------
# against llama.cpp itself (slow: needs a built llama-cli)


def _llama_cli():
    import cpu_build

    try:
        path = cpu_build.find("llama-cli")
    except TqpatchError as exc:
        pytest.skip(f"llama-cli has not been built: {exc}")
    if not path or not shutil.os.path.exists(str(path)):
        pytest.skip("llama-cli has not been built (tqpatch build --backend cpu)")
    return str(path)


def _gemma_path():
    from tqpatch import paths

    p = paths.models_dir() / "gemma-3-270m-Q4_K_M.gguf"
    if p.exists():
        return p
    from tqpatch import model

    return model.ensure_model(None, None, quiet=True)


def _run_llama_cli(binary, model, ctx, type_k, type_v):
    import cpu_build

    cmd = [binary, *cpu_build.TOOL_ARGS, "-m", str(model), "-c", str(ctx),
           "-ctk", type_k, "-ctv", type_v,
           "-fa", "on", "-ngl", "0", "-fit", "off", "-n", "1", "-p", "Hello", "-st", "-v",
           "--no-warmup", "-t", "2"]
    # a random-weight model prints arbitrary bytes: decode leniently
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=600)
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gemma3-270m", "synthetic"])
@pytest.mark.parametrize("types", [("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"),
                                   ("q8_0", "turbo3"), ("turbo4", "turbo4"), ("turbo2", "turbo3")])
def test_kv_bytes_match_llama_cpp(tmp_path, which, types):
    binary = _llama_cli()
    if which == "synthetic":
        from tqpatch.synth import SynthShape, synth_model

        model = tmp_path / "synth.gguf"
        synth_model(model, SynthShape(layers=3, n_embd=512, n_head=4, n_head_kv=2, head_dim=128,
                                      ff=256, vocab=512, ctx_train=8192), seed=1)
        ctx = 3000
    else:
        model = _gemma_path()
        ctx = 4096
    info = read_model(model)
    expected = kv_caches(info, ctx, *types)
    log = _run_llama_cli(binary, model, ctx, *types)
    got = parse_kv_sizes(log)
    assert len(got) >= len(expected), log[-4000:]
    got = got[-len(expected):]
    for e, g in zip(expected, got):
        assert (g["cells"], g["layers"], g["type_k"], g["type_v"]) == \
            (e.cells, e.layers, types[0], types[1])
        assert g["k_mib"] == pytest.approx(e.k_bytes / MIB, abs=0.006)
        assert g["v_mib"] == pytest.approx(e.v_bytes / MIB, abs=0.006)
        assert g["size_mib"] == pytest.approx(e.total / MIB, abs=0.006)
    assert sum(e.total for e in expected) == kv_bytes(info, ctx, *types)


# ---------------------------------------------------------------------------
# issue 25: bounds on the command line and in the KV math


@pytest.mark.parametrize("args,message", [
    (["--ctx", "1000000000000"], "1000000000000 is not in the range 0<=x<=2147483647"),
    (["--ctx", str(2**31)], "2147483648 is not in the range"),
    (["--ctx", "1e23"], "'1e23' is not a valid integer"),
    (["--ctx", "0", "--vram", "1e308"], "1e+308 is not in the range"),
    (["--ctx", "0", "--vram", "1e30"], "1e+30 is not in the range"),
    (["--ctx", "0", "--vram", "8", "--overhead", "1e308"], "1e+308 is not in the range"),
])
def test_plan_refuses_out_of_range_numbers(tmp_path, args, message):
    p = write_gguf(tmp_path / "m.gguf")
    res = CliRunner().invoke(main, ["plan", str(p), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_plan_at_the_largest_context_llama_cpp_takes(tmp_path):
    p = write_gguf(tmp_path / "m.gguf")
    res = CliRunner().invoke(main, ["plan", str(p), "--ctx", str(2**31 - 1), "--vram", str(2**20)])
    assert res.exit_code == 0, res.output
    assert "beyond the model's trained context of 8192" in res.output
    assert "nan" not in res.output and "e+" not in res.output.replace("1.04858e+06 GiB", "")


def test_kv_math_bounds(llama_gqa):
    for ctx in (-1, 2**31, 10**12, 1.5, "8"):
        with pytest.raises(TqpatchError, match="--ctx must be a whole number 0..2147483647"):
            kv_bytes(llama_gqa, ctx, "f16", "f16")
    assert kv_bytes(llama_gqa, np.int64(256), "f16", "f16") == kv_bytes(llama_gqa, 256, "f16", "f16")
    for vram, overhead in ((1e308, 0), (float("inf"), 0), (8, 1e308), (8, float("nan"))):
        with pytest.raises(TqpatchError, match="must be a finite number .* at most"):
            budget_for_kv(llama_gqa, vram, overhead)
