"""tqpatch.coherence: the rule, the measured table and how it is read, the runner's errors.

The continuations below are real: Gemma 3 270M Q4_K_M, CPU backend, 2 threads,
greedy, 24 tokens (the measurement in tqpatch/data/coherence.json).
"""

from __future__ import annotations

import json
import stat
import sys

import pytest

from tqpatch import coherence, formats
from tqpatch.coherence import PROMPTS, Continuation, judge, verdict
from tqpatch.errors import TqpatchError

F16 = [" 6, 7, 8, 9, 10, 11, 12,",
       " the capital of the country of France. It is the largest city in France. It is the "
       "capital of the country of",
       "\n    if n == 0:\n        return 0\n    elif n == 1:\n        return"]
Q8_0 = [F16[0],
        " the capital of the United Kingdom. It is the largest city in France and the second "
        "largest in Europe. It is the",
        F16[2]]
TURBO4 = [F16[0],
          " the capital of the world. It is the capital of the world. It is the capital of the "
          "world. It is",
          F16[2]]
TURBO3 = [F16[0],
          " the most populous country in the world, and it is the most populous country in the "
          "world, with a population of ",
          "\n    if n == 1:\n        print(n)\n    \n    \n    \n    \n    "]
TURBO2 = [" 4, 5, 4, 4 4, 5, 6 6, 5",
          " a large land of the world is the capital of the capital of the capital of the capital "
          "of the of the of the",
          "\n    n,\n    )\n    \n    \n    \n    \n    \n    \n    \n    \n"]


def conts(texts):
    # one token per word is enough for the shared-prefix count
    return [Continuation(p.name, [hash(w) for w in t.split(" ")], t) for p, t in zip(PROMPTS, texts)]


def test_prompts_include_code_and_the_issue_prompts():
    assert [p.text for p in PROMPTS] == ["1, 2, 3, 4, 5,", "The capital of France is",
                                         "def fibonacci(n):"]


def test_reference_passes_and_rule_separates_real_continuations():
    ref = conts(F16)
    coherence.check_reference(ref)
    assert judge("f16/f16", ref, ref).summary == "3/3"
    # upstream q8_0 leaves f16's wording early but stays on the subject: coherent
    q8 = judge("q8_0/q8_0", ref, conts(Q8_0))
    assert q8.coherent and q8.prompts[1].matched < 8
    # turbo4/turbo4 keeps f16's first words, then loops: incoherent on that prompt
    t4 = judge("turbo4/turbo4", ref, conts(TURBO4))
    assert t4.summary == "2/3" and not t4.prompts[1].coherent and t4.prompts[1].matched >= 4
    assert judge("turbo3/turbo3", ref, conts(TURBO3)).summary == "1/3"
    assert judge("turbo2/turbo2", ref, conts(TURBO2)).summary == "0/3"


def test_reference_that_fails_the_check_is_refused():
    with pytest.raises(coherence.ReferenceIncoherent, match="cannot judge this model"):
        coherence.check_reference(conts(TURBO2))


def test_failed_run_is_incoherent_everywhere():
    c = coherence.Coherence("bf16/bf16", error="llama-server exited with status 1")
    assert not c.coherent and c.summary == "failed" and c.to_dict()["error"]


def table(**families):
    return {"families": {fam: [{"backend": b, "source": "t", "results": {
        cfg: {"n_coherent": n, "n_prompts": 3} for cfg, n in rows.items()}}
        for b, rows in runs.items()] for fam, runs in families.items()}}


def test_verdict_any_backend_incoherent_wins():
    t = table(gemma3={"cpu": {"turbo4/turbo4": 3, "q8_0/turbo4": 3}, "cuda": {"turbo4/turbo4": 2}})
    assert verdict("gemma3", "turbo4", "turbo4", t) == "incoherent"
    assert coherence.incoherent_where("gemma3", "turbo4", "turbo4", t) == ["cuda 2/3"]
    assert verdict("gemma3", "q8_0", "turbo4", t) == "coherent"
    assert verdict("gemma3", "q8_0", "turbo2", t) == "unmeasured"
    assert verdict("llama", "q8_0", "turbo4", t) == "unmeasured"


def test_shipped_table_has_provenance_and_every_configuration():
    t = coherence.load_table()
    runs = t["families"]["gemma3"]
    cpu = [m for m in runs if m["backend"] == "cpu"]
    assert cpu, "no CPU measurement recorded"
    for m in runs:
        assert m["model"] and m["model_sha256"] and m["machine"] and m["source"]
    m = cpu[0]
    assert m["date"] and m["command"] and "coherence_table.py" in m["command"]
    assert set(m["results"]) == {f"{k}/{v}" for k, v in formats.KV_CONFIGS}
    assert m["rule"]["prompts"] == {p.name: {"text": p.text, "expect": p.expect} for p in PROMPTS}
    # the recorded texts still get the recorded verdicts under today's rule
    for label, r in m["results"].items():
        texts = [r["prompts"][p.name]["text"] for p in PROMPTS]
        assert sum(p.answered(x) for p, x in zip(PROMPTS, texts)) == r["n_coherent"], label


def test_record_replaces_the_same_measurement_only(tmp_path):
    path = tmp_path / "t.json"
    entry = {"backend": "cpu", "source": "s", "model_sha256": "a", "results": {}}
    coherence.record(entry, "gemma3", path)
    coherence.record({**entry, "backend": "cuda"}, "gemma3", path)
    coherence.record({**entry, "results": {"f16/f16": {"n_coherent": 3, "n_prompts": 3}}},
                     "gemma3", path)
    runs = json.loads(path.read_text())["families"]["gemma3"]
    assert [m["backend"] for m in runs] == ["cuda", "cpu"] and runs[1]["results"]


def test_server_that_cannot_start_is_one_line(tmp_path):
    with pytest.raises(TqpatchError, match="cannot run"):
        coherence.continuations(tmp_path / "nope", tmp_path / "m.gguf", "f16", "f16", threads=1)
    crash = tmp_path / "llama-server"
    crash.write_text(f"#!{sys.executable}\nimport sys\nprint('error: no such model')\nsys.exit(3)\n")
    crash.chmod(crash.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(TqpatchError, match=r"llama-server exited with status 3: error: no such model"):
        coherence.continuations(crash, tmp_path / "m.gguf", "f16", "f16", threads=1)
