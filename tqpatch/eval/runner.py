"""The evaluation: inputs, the f16 base-logits run, one run per configuration."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from .. import backends, build_record, coherence, fetch, paths, plan
from .. import model as model_mod
from ..backends.base import Backend
from ..errors import TqpatchError
from ..plan.gguf_file import array_len, open_gguf
from .config import BASELINE, DEFAULT_CONFIGS, Config, parse_configs
from .perplexity import build_command, fill_deltas, judge, run_logged
from .result import Result

DEFAULT_TEXT_REL = "tools/server/README.md"
DEFAULT_CHUNKS = 20
DEFAULT_CTX = 512
BASE_FILE_WARN_BYTES = 4 * 1024**3
GEMMA3_VOCAB = 262144  # used when the model's vocabulary cannot be read


# --------------------------------------------------------------------------
# inputs


def default_text() -> Path:
    """tools/server/README.md of the pinned llama.cpp tree (fetched if not there yet)."""
    path = paths.pristine_tree() / DEFAULT_TEXT_REL
    if not path.is_file():
        fetch.ensure_pristine()
    fetch.read_pristine(DEFAULT_TEXT_REL)  # checks it against the pin
    if not path.is_file():
        raise TqpatchError(f"{path} is missing: run `tqpatch fetch` or pass --text FILE")
    return path


def model_vocab_size(model: Path) -> int | None:
    """Number of tokens in a GGUF's vocabulary; None if it cannot be read."""
    try:
        tokens = open_gguf(Path(model))[0].fields.get("tokenizer.ggml.tokens")
        return array_len(tokens) if tokens is not None else None
    except TqpatchError:  # any unreadable file: fall back to an estimate
        return None


def base_file_bytes(chunks: int, ctx: int, n_vocab: int) -> int:
    """Size of llama-perplexity's --kl-divergence-base file (upper bound: the text may be shorter).

    Per chunk it scores the tokens after the first half (ctx - 1 - ctx/2 of them)
    and stores nv = 2*((n_vocab+1)/2) + 4 uint16 values for each.
    """
    nv = 2 * ((n_vocab + 1) // 2) + 4
    return chunks * (ctx - 1 - ctx // 2) * nv * 2



# --------------------------------------------------------------------------
# the evaluation


class Progress:
    """Receives events from evaluate(); the CLI prints them. The default is silent.

    index runs 1..total over the configurations; the f16 base-logits run (KLD
    mode) comes first with index 0.
    """

    def start(self, index: int, total: int, config: Config, what: str) -> None:
        pass

    def finish(self, index: int, total: int, result: Result, what: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def coherence(self, label: str, result) -> None:
        """One configuration's coherence check finished (a tqpatch.coherence.Coherence)."""


def evaluate(
    configs: Sequence[Config | str] | str = DEFAULT_CONFIGS,
    *,
    model: Path | str | None = None,
    text: Path | str | None = None,
    backend: Backend | None = None,
    build_dir: Path | str | None = None,
    binary: Path | str | None = None,
    chunks: int = DEFAULT_CHUNKS,
    ctx: int = DEFAULT_CTX,
    threads: int | None = None,
    kld: bool = True,
    extra_args: Sequence[str] = (),
    progress: Progress | None = None,
    workdir: Path | str | None = None,
    server: Path | str | None = None,
) -> list[Result]:
    """Run llama-perplexity for each configuration; one Result per configuration, in order.

    backend: whose build and device run it (default: the CPU);
    binary: a llama-perplexity to use (default: the backend's, in build_dir).
    model / text default to the Gemma 3 270M test model and the pinned text.
    workdir: where the temporary folder for the base logits goes (default: the cache).
    server: a llama-server: also run tqpatch.coherence's check for each configuration
    (with the same threads and extra_args) into Result.coherence.
    Failing configurations come back with ok=False; nothing is raised for them.
    """
    progress = progress or Progress()
    wanted = parse_configs(configs) if isinstance(configs, str) else configs
    cfgs = [c if isinstance(c, Config) else Config.parse(c) for c in wanted]
    if not cfgs:
        raise TqpatchError("no configuration to evaluate")
    if chunks < 1 or ctx < 16:
        raise TqpatchError("--chunks must be >= 1 and --ctx >= 16")
    threads = threads or os.cpu_count() or 1

    model = check_model(model)
    text = check_text(text)
    backend = backend or backends.get("cpu")
    if binary is None:
        binary = build_record.find_binary("llama-perplexity", backend,
                                          Path(build_dir) if build_dir else None)
    binary = Path(binary)
    if not binary.is_file():
        raise TqpatchError(f"{binary} is missing: build it with "
                           f"`tqpatch build --backend {backend.name}`")

    # what puts llama.cpp's tools on this backend (e.g. -ngl 99, or --device none and
    # the CPU's AMX workaround) comes first; the user's extra arguments can override it
    extra_args = (*backend.e2e.tool_args, *extra_args)
    common = dict(ctx=ctx, chunks=chunks, threads=threads, extra_args=extra_args)
    bpv = layer_bpvs(cfgs, model, ctx)
    if not kld:
        results = [_one(binary, model, text, cfg, i, len(cfgs), progress, common,
                        bpv=bpv.get(cfg)) for i, cfg in enumerate(cfgs, 1)]
        fill_deltas(results)
    else:
        results = _with_kld(binary, model, text, cfgs, progress, common, bpv, chunks, ctx,
                            workdir)
    if server is not None:
        check_coherence(results, Path(server), model, threads, extra_args, progress)
    return results


def check_coherence(results: Sequence[Result], server: Path, model: Path, threads: int,
                    extra_args: Sequence[str], progress: Progress) -> None:
    """Result.coherence for each result; a warning (and None) where the f16 reference
    run fails or itself fails the check."""
    todo = [(r.label, r.k, r.v, r.config.env()) for r in results]
    try:
        _, found = coherence.check(todo, server, model, threads=threads, extra_args=extra_args,
                                   on_result=progress.coherence)
    except TqpatchError as exc:
        progress.warn(f"no coherence column: {exc.message}")
        return
    for r in results:
        r.coherence = found.get(r.label)


def _with_kld(binary: Path, model: Path, text: Path, configs: Sequence[Config],
              progress: Progress, common: dict, bpv: dict, chunks: int, ctx: int,
              workdir: Path | str | None) -> list[Result]:
    """The f16 base-logits run, then each configuration against it."""
    results: list[Result] = []
    root = Path(workdir) if workdir else paths.cache_root() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    n_vocab = model_vocab_size(model) or GEMMA3_VOCAB
    size = base_file_bytes(chunks, ctx, n_vocab)
    if size > BASE_FILE_WARN_BYTES:
        progress.warn(
            f"the f16 base logits for {chunks} chunks x {ctx} tokens take up to "
            f"{size / 1024**3:.1f} GiB in {root} (n_vocab {n_vocab}); lower --chunks or "
            "--ctx, or use --no-kld, if that is too much")
    free = shutil.disk_usage(root).free
    if size > free:
        raise TqpatchError(
            f"the f16 base logits need up to {size / 1024**3:.1f} GiB but {root} has "
            f"{free / 1024**3:.1f} GiB free: lower --chunks or --ctx, point TQPATCH_CACHE "
            "at a larger disk, or use --no-kld")
    tmp = Path(tempfile.mkdtemp(prefix="eval-", dir=root))
    try:
        base_file = tmp / "f16-base.kld"
        total = len(configs)
        base = _one(binary, model, text, BASELINE, 0, total, progress,
                    {**common, "kld_base": base_file}, what="f16/f16 base logits")
        if not base.ok:
            for cfg in configs:
                results.append(Result(cfg, ok=False, returncode=base.returncode,
                                      error=f"the f16/f16 base run failed ({base.error})",
                                      log_tail=base.log_tail, base_command=base.command))
            return results
        for i, cfg in enumerate(configs, 1):
            r = _one(binary, model, text, cfg, i, total, progress,
                     {**common, "kld_base": base_file, "kld": True}, bpv=bpv.get(cfg))
            r.base_command = base.command
            results.append(r)
        fill_deltas(results, base_ppl=base.ppl)
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def perplexity_layout(ctx: int, n_batch: int = 2048) -> tuple[int, int]:
    """(n_ctx, n_parallel) of a llama-perplexity PPL/KLD run at -c ctx: it scores
    n_batch // ctx chunks at once, one sequence (stream) each."""
    n_par = max(1, n_batch // ctx)
    return n_par * ctx, n_par


def layer_bpvs(configs: Sequence[Config], model: Path, ctx: int) -> dict:
    """Config -> (bpv K, bpv V) over the model's layers, for the configurations with
    boundary layers; {} where the model cannot be read (then the types' bpv stand)."""
    todo = [c for c in configs if c.has_boundary]
    if not todo:
        return {}
    try:
        info = plan.read_model(model)
        n_ctx, n_par = perplexity_layout(ctx)
        return {c: c.layer_bpv(info, n_ctx, n_par, unified=False) for c in todo}
    except TqpatchError:
        return {}


def _one(binary: Path, model: Path, text: Path, cfg: Config, index: int, total: int,
         progress: Progress, opts: dict, what: str = "",
         bpv: tuple[float, float] | None = None) -> Result:
    cmd = build_command(binary, model, text, cfg, **opts)
    env = cfg.env()
    progress.start(index, total, cfg, what)
    rc, out, seconds = run_logged(cmd, env)
    result = judge(Result(cfg, command=cmd, env=env), rc, out)
    result.seconds = seconds
    if bpv is not None:
        result.bpv_k, result.bpv_v = bpv
    progress.finish(index, total, result, what)
    return result


def check_model(model: Path | str | None) -> Path:
    if model is None:
        return model_mod.ensure_model()
    path = Path(model).expanduser()
    if not path.is_file():
        raise TqpatchError(f"model file {path} not found: pass an existing .gguf with --model, "
                           "or leave --model out to use the Gemma 3 270M test model")
    return path


def check_text(text: Path | str | None) -> Path:
    if text is None:
        return default_text()
    path = Path(text).expanduser()
    if not path.is_file():
        raise TqpatchError(f"text file {path} not found: pass an existing file with --text, "
                           f"or leave --text out to use the pinned {DEFAULT_TEXT_REL}")
    return path

