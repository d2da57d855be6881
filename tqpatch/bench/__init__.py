"""Speed and size of the turbo KV-cache types on a built llama.cpp (`tqpatch bench`).

One module a job:
  fa_perf      test-backend-ops perf: the flash-attention decode cases, parsed, ratios, targets
  llama_bench  llama-bench pp/tg at depth: commands, JSON parser, targets
  kv_size      llama.cpp's reported KV-cache size against tqpatch.plan's prediction
  model        the models run: the default test model, --model files, the synthetic 8B-attention one
  report       the tables (text or Markdown) and saved results merged (--load)
  suite        the options checked, the binaries found, the parts run together, results
  common       K/V pair labels, list parsing, progress and raw-output files
  proc         how the parts run their binaries (tqpatch.ui.run)
"""
