"""The models a bench runs: --model files, the default Gemma 3 test model, the synthetic 8B-attention one."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from .. import model as tq_model
from .. import paths, plan
from ..errors import TqpatchError
from ..synth import SynthShape, synth_model
from .common import log

# The synthetic model: the attention of a mainstream 8B model (32 query heads,
# 8 KV heads of 128, n_embd 4096, every layer global) with 8 layers, a
# 1024-wide feed-forward, a 512-token vocabulary and q8_0 weights: 58 MB of
# weights per layer against 128 MiB of f16 K+V per layer at depth 32768, so KV
# bandwidth dominates decode at depth (70% of the bytes a token reads with an
# f16 cache); 446 MiB in all, written in ~10 s with NumPy, loaded in < 1 s.
SYNTH_SHAPE = dict(layers=8, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128,
                   ff=1024, vocab=512, ctx_train=65536)
SYNTH_WTYPE = "q8_0"
SYNTH_SEED = 0
SYNTH_FILENAME = "synth-llama-8l-32q-8kv-hd128-q8_0.gguf"


def model_entry(path: Path, role: str | None = None) -> dict:
    """A model as the results list it; role 'gemma', 'synth' or 'other' picks its targets."""
    info = plan.read_model(path)
    if role is None:
        role = "gemma" if info.arch == "gemma3" else "other"
    name = "synthetic-8B-attn" if role == "synth" else path.stem
    return {"name": name, "path": str(path), "role": role, "arch": info.arch,
            "layers": info.n_layer, "heads": sorted(set(info.n_head)),
            "kv_heads": sorted(set(info.n_head_kv)), "head_k": info.head_k,
            "swa": info.uses_swa, "file_bytes": path.stat().st_size}


def ensure_synth(path: Path) -> Path:
    """The synthetic 8B-attention GGUF at path, written (deterministic) unless it is there."""
    s = SynthShape(**SYNTH_SHAPE)
    if path.is_file():
        try:
            info = plan.read_model(path)
            if (info.n_layer, set(info.n_head), set(info.n_head_kv), info.head_k, info.n_embd) == \
                    (s.layers, {s.n_head}, {s.n_head_kv}, s.head_dim, s.n_embd):
                log(f"[synth] reusing {path}")
                return path
        except TqpatchError:
            pass
    log(f"[synth] writing {path} (= tqpatch synth-model {path} --layers {s.layers} --ff {s.ff} "
        f"--vocab {s.vocab} --ctx-train {s.ctx_train} --type {SYNTH_WTYPE} --seed {SYNTH_SEED})")
    t0 = time.time()
    tmp = path.with_name(path.name + ".part")
    written = synth_model(tmp, s, seed=SYNTH_SEED, wtype=SYNTH_WTYPE)
    os.replace(tmp, path)
    for note in written.get("notes", []):
        log(f"[synth] note: {note}")
    log(f"[synth] {written['file_bytes'] / 2**20:.0f} MiB in {time.time() - t0:.0f} s")
    return path


def resolve_models(models: Sequence[str], *, default_model: bool, synth: bool,
                   synth_path: str | None) -> list[dict]:
    """Every model of the run, checked before anything runs (TqpatchError naming a missing one)."""
    paths_ = [Path(p).expanduser() for p in models]
    if not paths_ and default_model:
        paths_ = [tq_model.default_model_path()]
        if not paths_[0].is_file():
            raise TqpatchError(f"the default test model {paths_[0]} is missing: run `tqpatch model` "
                               "(or pass --model M.gguf, or --no-default-model with --synth)")
    out = []
    for p in paths_:
        if not p.is_file():
            raise TqpatchError(f"model {p} does not exist")
        out.append(model_entry(p))
    if synth:
        sp = Path(synth_path).expanduser() if synth_path else paths.models_dir() / SYNTH_FILENAME
        sp.parent.mkdir(parents=True, exist_ok=True)
        out.append(model_entry(ensure_synth(sp), role="synth"))
    if not out:
        raise TqpatchError("no model: pass --model M.gguf and/or --synth")
    return out
