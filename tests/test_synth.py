"""tqpatch.synth: the random-weight llama GGUF for speed benchmarks."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from tqpatch.cli import main
from tqpatch.errors import TqpatchError
from tqpatch.plan import kv_bytes, read_model
from tqpatch.synth import SynthShape, synth_model, tokenizer_vocab

SMALL = SynthShape(layers=3, n_embd=256, n_head=8, n_head_kv=2, head_dim=64, ff=128,
                   vocab=300, ctx_train=4096)


def _field(reader, key):
    from tqpatch.plan import field_value as _field_value

    return _field_value(reader.fields[key])


def expected_shapes(s: SynthShape) -> dict[str, list[int]]:
    """ggml shapes (fastest dimension first) llama.cpp's LLM_ARCH_LLAMA loader asks for."""
    q, kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    out = {
        "token_embd.weight": [s.n_embd, s.vocab],
        "output_norm.weight": [s.n_embd],
        "output.weight": [s.n_embd, s.vocab],
    }
    for il in range(s.layers):
        b = f"blk.{il}."
        out.update({
            b + "attn_norm.weight": [s.n_embd],
            b + "attn_q.weight": [s.n_embd, q],
            b + "attn_k.weight": [s.n_embd, kv],
            b + "attn_v.weight": [s.n_embd, kv],
            b + "attn_output.weight": [q, s.n_embd],
            b + "ffn_norm.weight": [s.n_embd],
            b + "ffn_gate.weight": [s.n_embd, s.ff],
            b + "ffn_up.weight": [s.n_embd, s.ff],
            b + "ffn_down.weight": [s.ff, s.n_embd],
        })
    return out


def test_defaults_are_an_8b_attention_shape():
    s = SynthShape()
    assert (s.n_head, s.n_head_kv, s.head_dim, s.n_embd) == (32, 8, 128, 4096)
    assert (s.layers, s.ff, s.vocab, s.ctx_train) == (8, 1024, 512, 65536)


def test_metadata_reads_back(tmp_path):
    res = synth_model(tmp_path / "m.gguf", SMALL, seed=3)
    info = read_model(res["path"])
    assert info.arch == "llama" and info.n_layer == 3
    assert info.n_head == [8] * 3 and info.n_head_kv == [2] * 3
    assert info.head_k == info.head_v == 64
    assert info.n_embd == 256 and info.ctx_train == 4096
    assert not info.uses_swa and info.notes == []
    assert info.file_type_name == "F16"
    assert info.n_vocab == 300
    assert res["file_bytes"] == (tmp_path / "m.gguf").stat().st_size
    # 2 * 2 kv heads * 64 * 2 B per layer per cell
    assert kv_bytes(info, 1024, "f16", "f16") == 3 * 2 * 128 * 2 * 1024


def test_tensor_shapes_and_types(tmp_path):
    synth_model(tmp_path / "m.gguf", SMALL)
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    got = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    assert got == expected_shapes(SMALL)
    for t in r.tensors:
        want = gguf.GGMLQuantizationType.F32 if t.name.endswith("norm.weight") \
            else gguf.GGMLQuantizationType.F16
        assert t.tensor_type == want, t.name
    norm = next(t for t in r.tensors if t.name == "blk.0.attn_norm.weight")
    assert np.all(np.asarray(norm.data) == 1.0)
    wq = np.asarray(next(t for t in r.tensors if t.name == "blk.0.attn_q.weight").data,
                    dtype=np.float32)
    assert np.isfinite(wq).all() and 0.015 < wq.std() < 0.025 and abs(wq.mean()) < 0.002


def test_llama_hparams_and_tokenizer(tmp_path):
    synth_model(tmp_path / "m.gguf", SMALL)
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.rope.dimension_count") == 64
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert _field(r, "tokenizer.ggml.model") == "llama"
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    scores = _field(r, "tokenizer.ggml.scores")
    assert len(tokens) == len(types) == len(scores) == 300 == len(set(tokens))
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert types[:3] == [2, 3, 3] and set(types[3:259]) == {6} and set(types[259:]) == {1}
    assert _field(r, "tokenizer.ggml.bos_token_id") == 1
    assert _field(r, "tokenizer.ggml.eos_token_id") == 2
    assert _field(r, "tokenizer.ggml.unknown_token_id") == 0


def test_vocab_pieces_unique_for_large_vocab():
    tokens, scores, types = tokenizer_vocab(5000)
    assert len(tokens) == 5000 == len(set(tokens)) == len(scores) == len(types)


def test_deterministic_for_a_seed(tmp_path):
    a = synth_model(tmp_path / "a.gguf", SMALL, seed=7)
    b = synth_model(tmp_path / "b.gguf", SMALL, seed=7)
    c = synth_model(tmp_path / "c.gguf", SMALL, seed=8)
    data = [open(x["path"], "rb").read() for x in (a, b, c)]
    assert data[0] == data[1]
    assert data[0] != data[2] and len(data[0]) == len(data[2])


def test_q8_0_weights(tmp_path):
    synth_model(tmp_path / "q.gguf", SMALL, wtype="q8_0")
    info = read_model(tmp_path / "q.gguf")
    assert info.file_type_name == "Q8_0"
    r = gguf.GGUFReader(str(tmp_path / "q.gguf"))
    assert {t.name: [int(x) for x in t.shape] for t in r.tensors} == expected_shapes(SMALL)
    q = gguf.GGMLQuantizationType.Q8_0
    for t in r.tensors:
        assert (t.tensor_type == gguf.GGMLQuantizationType.F32) == t.name.endswith("norm.weight")
        if not t.name.endswith("norm.weight"):
            assert t.tensor_type == q
    # dequantized values keep the N(0, 0.02) scale
    wk = next(t for t in r.tensors if t.name == "blk.1.attn_k.weight")
    deq = gguf.quants.dequantize(wk.data, q)
    assert 0.015 < float(np.std(deq)) < 0.025


def test_full_8b_attention_one_layer(tmp_path):
    s = SynthShape(layers=1, ff=64, vocab=300)
    synth_model(tmp_path / "8b.gguf", s)
    info = read_model(tmp_path / "8b.gguf")
    assert (info.n_head[0], info.n_head_kv[0], info.head_k, info.n_embd) == (32, 8, 128, 4096)
    r = gguf.GGUFReader(str(tmp_path / "8b.gguf"))
    assert {t.name: [int(x) for x in t.shape] for t in r.tensors} == expected_shapes(s)


@pytest.mark.parametrize("kw,msg", [
    (dict(vocab=100), "at least 260"),
    (dict(n_head=6, n_head_kv=4), "multiple of KV heads"),
    (dict(head_dim=63, n_embd=252), "even"),
])
def test_bad_shapes(tmp_path, kw, msg):
    base = dict(layers=1, n_embd=256, n_head=8, n_head_kv=2, head_dim=64, ff=64, vocab=300)
    base.update(kw)
    with pytest.raises(TqpatchError, match=msg):
        synth_model(tmp_path / "x.gguf", SynthShape(**base))


def test_cli_synth_model(tmp_path):
    out = tmp_path / "cli.gguf"
    res = CliRunner().invoke(main, [
        "synth-model", str(out), "--layers", "2", "--embd", "256", "--heads", "4",
        "--kv-heads", "2", "--head-dim", "64", "--ff", "64", "--vocab", "300", "--seed", "5",
        "--ctx-train", "2048",
    ])
    assert res.exit_code == 0, res.output
    assert "MiB" in res.output and "2 layers" in res.output and "4 q heads" in res.output
    info = read_model(out)
    assert info.n_layer == 2 and info.head_k == 64 and info.ctx_train == 2048


def test_cli_synth_model_bad_vocab(tmp_path):
    res = CliRunner().invoke(main, ["synth-model", str(tmp_path / "x.gguf"), "--vocab", "10"])
    assert res.exit_code == 1 and "at least 260" in res.output and "Traceback" not in res.output
