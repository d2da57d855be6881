"""Host emulation of ggml-metal's turbo kernels: the rendered Metal sources, compiled as C++.

Where no Metal device exists, `tqpatch verify --backend metal` runs the Metal
kernel sources of the applied llama.cpp tree -- the turbo libraries rendered
from templates/ggml/src/ggml-metal/ and the upstream code they instantiate
(fa_common.metal, fa_vec_common.metal, fa_aux.metal, fa_f16.metal,
dequantize.h) -- on the CPU:

  * each Metal library becomes one C++ translation unit, compiled with g++
    against shim/metal_stdlib (types and functions of the Metal standard
    library) and simt.h (every GPU thread a fiber; SIMD-group functions and
    barriers synchronise them);
  * the only changes to the sources are mechanical (`rewrite`): [[attributes]]
    are dropped (after their host names are read) and GNU range designators
    (`{ [0 ... N-1] = x }`, not C++) become a fill;
  * emulator.cpp reads verify's case files, plays the host side of
    ggml-metal-ops.cpp (grids, function constants, pipelines by name, the
    flash-attention dispatch sequence) and writes verify's results files, so
    verify.run_harness runs it like the real tqpatch-verify harness.

What this cannot check: anything specific to Apple's compiler and GPUs (MSL
semantics the shim does not enforce, such as address spaces, fast-math
rewrites, subnormal flushing, the exact rounding of exp and of half
arithmetic, threadgroup memory limits) and the Objective-C host code. The
real-device check is ci/tqpatch-metal.yml on a macOS arm64 runner (docs/metal.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from ... import formats, paths, ui, verify_io
from ...errors import TqpatchError
from .. import metal_kernels

HOST_DIR = Path(__file__).resolve().parent
METAL = "ggml/src/ggml-metal"
KERNELS = f"{METAL}/kernels"
EMULATOR_NAME = "tqpatch-verify-metal-emu"
DEVICE_NAME = "host emulation"
DEVICE_DESCRIPTION = "ggml-metal kernels compiled as C++ and run on the CPU (not Apple hardware)"

# upstream libraries the emulated host code dispatches besides the turbo ones:
# flash attention's pad / blk / vec-reduce / q8_0 -> f16 kernels, and the f16
# kernel that runs after the f16 conversion of K and V
UPSTREAM_LIBS = ("fa_aux", "fa_f16")
# host names of the kernels the emulated host code asks for
DISPATCHED = re.compile(r"^kernel_(set_rows|get_rows|cpy)_|^kernel_flash_attn_ext_")
NOT_DISPATCHED = re.compile(r"^kernel_flash_attn_ext_vec_idx$")

CXX_FLAGS = ("-std=c++17", "-O1", "-fno-strict-aliasing", "-w")

# what the emulation reads from the tree: these headers and kernels/*
HEADERS = ("ggml/include/ggml.h", "ggml/include/ggml-turbo-types.h", "ggml/src/ggml-common.h",
           "ggml/src/ggml-turbo-common.h", f"{METAL}/ggml-metal-impl.h", f"{METAL}/ggml-metal-turbo.h")


def tree_files(tree: Path) -> list[str]:
    """Tree-relative paths of every file the emulation reads (e.g. to copy a tree to mutate)."""
    kernels = sorted(p.relative_to(tree).as_posix() for p in (Path(tree) / KERNELS).iterdir() if p.is_file())
    return [*HEADERS, *kernels]


def turbo_libs() -> list[str]:
    return [lib for _, lib in metal_kernels.libraries()]


def all_libs() -> list[str]:
    return [*UPSTREAM_LIBS, *turbo_libs()]


# ---------------------------------------------------------------- source rewrites

_INSTANCE = re.compile(r'^\s*template\s*\[\[\s*host_name\(\s*"([^"]+)"\s*\)\s*\]\]\s*kernel\s+\w+\s+(\w+<.*>)\s*;\s*$')
_PLAIN_KERNEL = re.compile(r"^kernel\s+void\s+(\w+)\s*\(", re.M)
_FUNCTION_CONSTANT = re.compile(
    r"constant\s+(\w+)\s+(\w+)\s*\[\[\s*function_constant\(([^\]]*)\)\s*\]\]\s*;")
_ATTRIBUTE = re.compile(r"\[\[[^\[\]]*\]\]")
_RANGE_INIT = re.compile(
    r"(\w+)\s+(\w+)\[(\w+)\]\s*=\s*\{\s*\[0\s*\.\.\.\s*\3\s*-\s*1\]\s*=\s*([^{}]+?)\s*\}\s*;")
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"', re.M)


_HEADS = re.compile(r"_dk(\d+)_dv(\d+)(_q\d+_ne\d+)?$")


def dispatched(name: str) -> bool:
    """Whether the emulated host code can ask for the kernel of this host name: the ops it
    plays, at the head sizes the turbo flash-attention kernels are instantiated for, in the
    baseline vector configuration."""
    if not DISPATCHED.search(name) or NOT_DISPATCHED.search(name):
        return False
    m = _HEADS.search(name)
    return m is None or (int(m.group(1)) == int(m.group(2)) in metal_kernels.fa_head_sizes()
                         and not m.group(3))


def rewrite(text: str, register: bool = True) -> str:
    """The mechanical MSL -> C++ changes (see the module docstring). With `register`, the
    kernels the emulated host code dispatches are registered by their host names and
    the other explicit instantiations are left out (nothing could call them)."""
    out = []
    for line in text.splitlines():
        m = _INSTANCE.match(line)
        if register and m:
            if dispatched(m.group(1)):
                out.append(_ATTRIBUTE.sub("", line))
                out.append(f'TQ_EMU_REGISTER("{m.group(1)}", {m.group(2)})')
            continue
        out.append(line)
    text = "\n".join(out) + "\n"
    text = _RANGE_INIT.sub(lambda m: f"{m.group(1)} {m.group(2)}[{m.group(3)}]; "
                                     f"for (int tq_i_ = 0; tq_i_ < {m.group(3)}; ++tq_i_) "
                                     f"{m.group(2)}[tq_i_] = {m.group(4)};", text)
    return _ATTRIBUTE.sub("", text)


def _uncommented(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def function_constants(text: str) -> list[tuple[str, str, str]]:
    """(type, name, index expression) of every function constant a source declares."""
    return _FUNCTION_CONSTANT.findall(_uncommented(text))


def _is_template(text: str, pos: int) -> bool:
    """Whether the kernel defined at text[pos:] follows a template<...> parameter list."""
    before = re.sub(r"//[^\n]*", "", text[:pos]).rstrip()
    return before.endswith(">")


def plain_kernels(text: str) -> list[str]:
    """Non-template kernels that the emulated host code dispatches (their name is the host name)."""
    return [m.group(1) for m in _PLAIN_KERNEL.finditer(text)
            if not _is_template(text, m.start()) and dispatched(m.group(1))]


# ---------------------------------------------------------------- preparing a build

@dataclass
class Prepared:
    src: Path                  # rewritten kernel sources + headers
    units: dict[str, Path]     # library -> its translation unit
    digest: str
    include_dirs: list[Path] = field(default_factory=list)


def _read(tree: Path, rel: str) -> str:
    path = tree / rel
    try:
        return path.read_text()
    except OSError:
        raise TqpatchError(f"{path} is missing: the Metal host emulation compiles the applied "
                           "llama.cpp tree (run `tqpatch apply`)") from None


def _kernel_closure(tree: Path, lib: str) -> list[str]:
    """kernels/<lib>.metal and the kernel headers it includes, in include order."""
    seen: list[str] = []

    def visit(name: str):
        if name in seen or not (tree / KERNELS / name).is_file():
            return
        seen.append(name)
        for inc in _INCLUDE.findall(_read(tree, f"{KERNELS}/{name}")):
            visit(inc)

    visit(f"{lib}.metal")
    return seen


def _unit(lib: str, text: str, fcs: list[tuple[str, str, str]]) -> str:
    setters = "\n".join(f"    {name} = ({typ}) cv.get({expr});" for typ, name, expr in fcs)
    registrations = "\n".join(f'TQ_EMU_REGISTER("{k}", {k})' for k in plain_kernels(text))
    return f"""// tqpatch: Metal library kernels/{lib}.metal for the host emulation (generated)
#include <metal_stdlib>
#define GGML_COMMON_DECL_METAL
#define GGML_COMMON_IMPL_METAL
#include "ggml-common.h"
#include "tq_emu.h"

namespace tq_lib_{lib} {{
static void tq_emu_set_fc(const ::tq_emu::fc_values & cv);
#include "{lib}.metal"
{registrations}
static void tq_emu_set_fc(const ::tq_emu::fc_values & cv) {{
    (void) cv;
{setters}
}}
}} // namespace tq_lib_{lib}
"""


def types_header() -> str:
    """tq_types.h: the ggml facts of every type the emulator meets, from tqpatch.formats."""
    rows: list[tuple[str, str, int, int, int | None]] = [
        (f"GGML_TYPE_{t.name.upper()}", t.name, t.block_size, t.block_bytes, t.ggml_id)
        for t in formats.ALL_TYPES.values()]
    rows += [("GGML_TYPE_I32", "i32", 1, 4, None), ("GGML_TYPE_I64", "i64", 1, 8, None)]
    lines = ["// tqpatch: ggml type facts for the Metal host emulation (generated from tqpatch.formats)",
             "#pragma once", "",
             f'#define TQ_EMU_DEVICE_NAME "{DEVICE_NAME}"',
             f'#define TQ_EMU_DEVICE_DESCRIPTION "{DEVICE_DESCRIPTION}"', "",
             "struct tq_type_info {", "    int id;", "    const char * name;", "    int64_t block_size;",
             "    size_t block_bytes;", "};", "",
             "static const tq_type_info tq_types[] = {"]
    lines += [f'    {{{enum}, "{name}", {bs}, {bb}}},' for enum, name, bs, bb, _ in rows]
    lines += ["};", ""]
    lines += [f'static_assert({enum} == {gid}, "{name}: ggml enum value differs from tqpatch.formats");'
              for enum, name, _, _, gid in rows if gid is not None]
    return "\n".join(lines) + "\n"


def wire_header() -> str:
    """tq_wire.h: verify's case and results file constants, from tqpatch.verify_io."""
    w = verify_io.render_context()

    def chars(text: str) -> str:  # a C char array's initializer
        return ", ".join(f"'{c}'" for c in text)

    lines = ["// tqpatch: the verify wire format for the Metal host emulation (generated from "
             "tqpatch.verify_io)", "#pragma once", "", "#include <cstdint>", "",
             f"static constexpr char CASES_MAGIC[4] = {{{chars(w['cases_magic'])}}};",
             f"static constexpr char RESULTS_MAGIC[4] = {{{chars(w['results_magic'])}}};",
             f"static constexpr uint32_t FORMAT_VERSION = {w['version']};",
             f"static constexpr int N_DIMS = {w['n_dims']};",
             f"static constexpr uint32_t MAX_BUFFERS = {w['max_buffers']};",
             f"static constexpr int MAX_BUFFER_BITS = {w['max_buffer_bits']};", "",
             "enum : uint32_t { " + ", ".join(f"OP_{n} = {c}" for n, c in w["ops"].items()) + " };",
             "enum : uint32_t { " + ", ".join(f"STATUS_{n} = {c}" for n, c in w["statuses"].items()) + " };",
             "", "static inline const char * op_label(uint32_t op) {", "    switch (op) {"]
    lines += [f'        case OP_{n}: return "{n}";' for n in w["ops"]]
    lines += ['        default: return "?";', "    }", "}"]
    return "\n".join(lines) + "\n"


def prepare(tree: Path, work: Path, libs: list[str] | None = None) -> Prepared:
    """Rewritten sources and one translation unit per library under work/."""
    libs = list(libs or all_libs())
    src = work / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    h = hashlib.sha256()
    for rel in HEADERS:
        text = _read(tree, rel)
        (src / Path(rel).name).write_text(text)
        h.update(rel.encode() + text.encode())
    for name, text in (("tq_types.h", types_header()), ("tq_wire.h", wire_header())):
        (src / name).write_text(text)
        h.update(text.encode())
    kernel_files: dict[str, str] = {}
    units: dict[str, Path] = {}
    for lib in libs:
        closure = _kernel_closure(tree, lib)
        if not closure:
            raise TqpatchError(f"{tree / KERNELS}/{lib}.metal is missing: apply the tree "
                               "(`tqpatch apply`) before the Metal host emulation")
        fcs: list[tuple[str, str, str]] = []
        for name in closure:
            raw = _read(tree, f"{KERNELS}/{name}")
            fcs += [fc for fc in function_constants(raw) if fc not in fcs]
            kernel_files.setdefault(name, raw)
        unit = src / f"lib_{lib}.cpp"
        unit.write_text(_unit(lib, kernel_files[f"{lib}.metal"], fcs))
        units[lib] = unit
    for name, raw in sorted(kernel_files.items()):
        text = rewrite(raw)
        (src / name).write_text(text)
        h.update(name.encode() + text.encode())
    for unit in units.values():
        h.update(unit.read_bytes())
    for p in sorted(HOST_DIR.rglob("*")):
        if p.is_file() and p.suffix not in (".py", ".pyc"):
            h.update(p.relative_to(HOST_DIR).as_posix().encode() + p.read_bytes())
    h.update(" ".join(CXX_FLAGS).encode())
    return Prepared(src, units, h.hexdigest()[:16], [HOST_DIR / "shim", HOST_DIR, src])


# ---------------------------------------------------------------- compiling

def compiler() -> str:
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise TqpatchError("the Metal host emulation needs a C++17 compiler: install g++ "
                       "(Debian/Ubuntu: `apt install g++`)")


def c_compiler() -> str:
    for name in ("gcc", "cc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    raise TqpatchError("the Metal compile check needs a C compiler: install gcc")


def _compile(cxx: str, source: Path, obj: Path, includes: list[Path], log: Path) -> None:
    cmd = [cxx, *CXX_FLAGS, *[f"-I{d}" for d in includes], "-c", str(source), "-o", str(obj)]
    log.unlink(missing_ok=True)
    proc = ui.run(cmd, log=log, check=False)
    if proc.returncode != 0:
        tail = ui.tail(proc.stdout.strip(), 25)
        raise TqpatchError(f"the Metal host emulation does not compile ({source.name}); "
                           f"log: {log}\n{tail}")


def build(tree: Path, libs: list[str] | None = None, work: Path | None = None,
          echo=None) -> Path:
    """Compile the emulator for the applied tree; reuses an identical earlier build."""
    tree = Path(tree)
    cxx = compiler()
    base = Path(work) if work else paths.cache_root() / "build" / "metal-emulation"
    prep = prepare(tree, base / "prepare", libs)
    out = base / prep.digest
    binary = out / EMULATOR_NAME
    if binary.is_file():
        return binary
    out.mkdir(parents=True, exist_ok=True)
    sources = {**{lib: unit for lib, unit in prep.units.items()}, "emulator": HOST_DIR / "emulator.cpp"}
    includes = prep.include_dirs
    started = time.monotonic()
    if echo:
        echo(f"metal host emulation: compiling {len(sources)} units with {cxx} (a minute or two)")
    jobs = max(1, min(len(sources), os.cpu_count() or 1))
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(_compile, cxx, src, out / f"{name}.o", includes, out / f"{name}.log")
                   for name, src in sources.items()]
        for f in futures:
            f.result()
    link = [cxx, *[str(out / f"{name}.o") for name in sources], "-o", str(binary) + ".tmp"]
    proc = ui.run(link, check=False)
    if proc.returncode != 0:
        raise TqpatchError("linking the Metal host emulation failed:\n" + ui.tail(proc.stdout.strip(), 25))
    os.replace(str(binary) + ".tmp", binary)
    if work is None:  # the cache keeps the emulator of the current sources only
        for old in base.iterdir():
            if old.is_dir() and old.name not in ("prepare", prep.digest):
                shutil.rmtree(old, ignore_errors=True)
    if echo:
        echo(f"metal host emulation: built in {time.monotonic() - started:.0f} s: {binary}")
    return binary


# ---------------------------------------------------------------- the verify runner

def runner(tree: Callable[[], Path], run_harness: Callable, device: str,
           libs: list[str] | None = None, work: Path | None = None):
    """A verify runner: cases -> a harness run, from the emulator built for the applied tree.

    tree() gives that tree and run_harness(binary, device, cases) runs the emulator as
    the harness of ggml device `device` (verify hands both in: it sits above this package)."""
    def run(cases):
        binary = build(tree(), libs, work, echo=_echo)
        return run_harness(binary, device, cases)

    return run


def _echo(msg: str) -> None:
    click.echo(msg, err=True)
