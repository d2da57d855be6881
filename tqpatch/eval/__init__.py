"""Quality of K/V cache configurations on a real model: PPL, KLD, top-1 agreement,
coherence.

One `llama-perplexity` run per K/V configuration, all on the same model, text,
context size and number of chunks:

  base     f16/f16 with --kl-divergence-base FILE: saves the reference logits
           (FILE holds chunks x (ctx-1-ctx/2) x n_vocab x 2 bytes: about 512 KB
           per scored token for Gemma 3's 262k vocabulary, so ~2.7 GB for the
           default 20 x 512; it lives in a temporary folder under the tqpatch
           cache and is deleted afterwards)
  configs  each K/V pair with --kl-divergence-base FILE --kl-divergence:
           PPL(Q), mean / 99th percentile KLD against the base, "Same top p"
           (how often the top-1 token agrees with f16's)

With kld=False (`--no-kld`) every configuration is a plain PPL run and no base
file is written. Every run gets `-lv 4` so that llama.cpp logs the size of the
KV cache it allocated (`llama_kv_cache: size = ... K (q8_0): x MiB, V (turbo3):
y MiB`, one line per cache; Gemma 3 has a sliding-window and a global one and
they are summed).

A configuration whose run fails (nonzero exit, an error line, no PPL, or a
non-finite PPL) is reported FAILED with the last lines of its log; the others
still run.

Boundary-layer variants (patch 0010) are written after the pair:
`q8_0/turbo2:bv2` keeps the first and last 2 layers' V cache at q8_0,
`turbo3/turbo3:bk2:bv2` does so for K and V. Every run of a configuration with
a turbo type sets LLAMA_TURBO_BOUNDARY_K and LLAMA_TURBO_BOUNDARY_V explicitly
(0 where the label names none), so neither the caller's environment nor a
build-time default changes what a label means; the command lines show them.
Bits per value of a variant are the average over the model's layers as the
pinned llama.cpp allocates them (tqpatch.plan's layer model, SWA layers
included), for the run's context.

The default text is `tools/server/README.md` of the pinned llama.cpp tree
(commit 0c1e57098, 107,765 bytes, ~27k Gemma 3 tokens): it ships with every
copy of the pin, so any two machines measure the same tokens. 20 chunks of 512
tokens use the first ~10k of them.

Beside PPL and KLD, each configuration gets tqpatch.coherence's check (greedy
continuations of a few prompts through llama-server against f16/f16's);
coherence=False (`--no-coherence`) skips it.

Modules: config (K/V configurations), result (one configuration's result),
perplexity (one llama-perplexity run: command, log parsing, verdict), runner
(the evaluation), report (table, Markdown, JSON, plot).
"""

from __future__ import annotations


from .config import BASELINE, BASELINE_TYPE, DEFAULT_CONFIGS, Config, known_types, parse_configs
from .perplexity import (LOG_ARGS, TAIL_LINES, build_command, delta_ppl_pct, fill_deltas, judge,
                         parse_perplexity_output, run_logged)
from .result import Result, command_line
from .report import (HEADERS, PLOT_INSTALL_HINT, command_lines, machine_meta, make_meta, plot,
                     render_markdown, render_table, table_rows, to_json)
from .runner import (BASE_FILE_WARN_BYTES, DEFAULT_CHUNKS, DEFAULT_CTX, DEFAULT_TEXT_REL,
                     GEMMA3_VOCAB, Progress, base_file_bytes, check_model, check_text,
                     default_text, evaluate, layer_bpvs, model_vocab_size, perplexity_layout)

__all__ = [  # the names other modules, tests and benchmarks import from here
    "base_file_bytes", "BASE_FILE_WARN_BYTES", "BASELINE", "BASELINE_TYPE", "build_command",
    "check_model", "check_text", "command_line", "command_lines", "Config", "DEFAULT_CHUNKS",
    "DEFAULT_CONFIGS", "DEFAULT_CTX", "default_text", "DEFAULT_TEXT_REL", "delta_ppl_pct",
    "evaluate", "fill_deltas", "GEMMA3_VOCAB", "HEADERS", "judge", "known_types", "layer_bpvs",
    "LOG_ARGS", "machine_meta", "make_meta", "model_vocab_size", "parse_configs",
    "parse_perplexity_output", "perplexity_layout", "plot", "PLOT_INSTALL_HINT", "Progress",
    "render_markdown", "render_table", "Result", "run_logged", "table_rows",
    "TAIL_LINES", "to_json",
]
