"""KV-cache memory planning for a GGUF model (`tqpatch plan`).

Reads a GGUF's metadata as untrusted input (gguf_file, modelinfo), computes,
byte for byte, the KV cache the pinned llama.cpp allocates for `-c N -np P`
with each K/V cache type (kv), recommends a configuration (recommend: from
`tqpatch serve`'s cached probe of the model where there is one) and prints
the plan (report).
"""

from __future__ import annotations

from .gguf_file import field_value, open_gguf
from .kv import (BOUNDARY_TYPE, CTX_PAD, DEFAULT_OVERHEAD_MIB, ENV_BOUNDARY_K, ENV_BOUNDARY_V,
                 GIB, MAX_BOUNDARY, MIB, KVCache, boundary_env, boundary_suffix, budget_for_kv,
                 check_boundary, check_memory, effective_bpv, is_turbo, kv_bytes, kv_caches,
                 layer_type, max_ctx, parse_kv_sizes, row_size, support)
from .modelinfo import ModelInfo, read_model, weight_class
from .recommend import Probe, Recommendation, recommend
from .report import (CALIBRATED, CONFIGS, ConfigRow, describe_model, plan_json, plan_rows,
                     render_text)

__all__ = [  # the names other modules, tests and benchmarks import from here
    "boundary_env", "boundary_suffix", "BOUNDARY_TYPE", "budget_for_kv",
    "CALIBRATED", "check_boundary", "check_memory", "ConfigRow", "CONFIGS", "CTX_PAD", "DEFAULT_OVERHEAD_MIB",
    "describe_model", "effective_bpv", "ENV_BOUNDARY_K", "ENV_BOUNDARY_V", "field_value",
    "GIB", "is_turbo", "kv_bytes", "kv_caches", "KVCache", "layer_type", "MAX_BOUNDARY",
    "max_ctx", "MIB", "ModelInfo", "open_gguf", "parse_kv_sizes", "plan_json", "plan_rows",
    "Probe", "read_model", "recommend", "Recommendation", "render_text", "row_size", "support",
    "weight_class",
]
