"""The Metal backend's CI compile check, on a machine without Apple's tools.

Three parts, each compiled with g++ (syntax and C++ semantics, no code):

  * every turbo Metal library exactly as ggml-metal embeds it
    (GGML_METAL_EMBED_LIBRARY: the steps of the patched
    ggml/src/ggml-metal/CMakeLists.txt, read from it and replayed here:
    concatenate the headers the source includes, drop those includes, inline
    ggml-common.h, ggml-metal-impl.h and ggml-turbo-common.h with the same
    sed commands), as C++ under the Metal shim, every kernel
    instantiated, alone in a directory: like the Metal runtime, which
    compiles it from memory, the compiler cannot resolve a quoted #include.
  * the host C++ the glue patch touches: ggml-metal-device.cpp and
    ggml-metal-ops.cpp.
  * from ggml-metal-device.m (Objective-C), the library list and supports_op,
    which are plain C, compiled as C.

What it cannot check: MSL-only rules (address spaces, what Apple's compiler
accepts in templates and attributes, function-constant specialisation),
Objective-C and the Metal API calls, and anything at run time on a GPU. That
is ci/tqpatch-metal.yml on a macOS arm64 runner.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ... import ui
from ...errors import TqpatchError
from . import emulate

def _unescape(arg: str) -> str:
    """A CMake quoted argument's text (\\X -> X for a non-alphanumeric X)."""
    return re.sub(r"\\([^A-Za-z0-9])", r"\1", arg)


@dataclass
class EmbedSteps:
    """The embedding recipe, read from ggml/src/ggml-metal/CMakeLists.txt (and the cmake files it includes)."""
    first: list[str]                    # headers every source gets (tree-relative)
    optional: list[tuple[str, str]]     # (regex a source must contain, header it then gets)
    seds: list[list[tuple[str, str, str | None]]]  # per sed pass: (pattern, 'd' | 'r', file)


_EMBED_CHANGED = ("Metal compile check: CMakeLists.txt no longer embeds the library the way this "
                  "check reads it (GGML_METAL_EMBED_LIBRARY, HEADERS_FOR_SRC)")


def _group(pattern: str, text: str) -> str:
    """The first group of pattern's first match in the embedding recipe; TqpatchError if none."""
    m = re.search(pattern, text)
    if m is None:
        raise TqpatchError(_EMBED_CHANGED)
    return m.group(1)


def embed_steps(tree: Path) -> EmbedSteps:
    metal = Path(tree) / emulate.METAL
    texts = [(metal / "CMakeLists.txt").read_text()]
    for inc in re.findall(r"include\(\$\{CMAKE_CURRENT_SOURCE_DIR\}/([\w.-]+\.cmake)\)", texts[0]):
        texts.append((metal / inc).read_text())
    text = "\n".join(texts)
    files = {var: f"{emulate.METAL}/{rel}"
             for var, rel in re.findall(r'set\((\w+)\s+"\$\{CMAKE_CURRENT_SOURCE_DIR\}/([^"]+)"\)', text)}

    def file_of(var: str) -> str:
        if var not in files:
            raise TqpatchError(f"Metal compile check: CMakeLists.txt uses ${{{var}}} without setting it")
        return os.path.normpath(files[var])

    try:
        embed = text[text.index("if (GGML_METAL_EMBED_LIBRARY)"):text.index("else()", text.index(
            "if (GGML_METAL_EMBED_LIBRARY)"))]
    except ValueError:
        raise TqpatchError(_EMBED_CHANGED) from None
    first = _group(r"set\(HEADERS_FOR_SRC \$\{(\w+)\}\)", embed)
    optional = []
    for flag, regex in re.findall(r'file\(STRINGS \$\{SRC\} (\w+)\s+REGEX "((?:[^"\\]|\\.)*)"\)', embed):
        var = _group(rf"if\({flag}\)\s*list\(APPEND HEADERS_FOR_SRC \$\{{(\w+)\}}\)", embed)
        optional.append((_unescape(regex), file_of(var)))
    seds = []
    for cmd in re.findall(r'COMMAND sed ((?:-e "(?:[^"\\]|\\.)*"\s*)+)<', embed):
        ops = []
        for expr in re.findall(r'-e "((?:[^"\\]|\\.)*)"', cmd):
            m = re.fullmatch(r"/(.*)/(d|r \$\{(\w+)\})", _unescape(expr))
            if not m:
                raise TqpatchError(f"Metal compile check: sed expression {expr!r} in CMakeLists.txt "
                                   "is neither /re/d nor /re/r FILE")
            ops.append((m.group(1), m.group(2)[0], file_of(m.group(3)) if m.group(3) else None))
        seds.append(ops)
    return EmbedSteps([file_of(first)], optional, seds)


def _sed(text: str, ops: list[tuple[str, str, str | None]], tree: Path) -> str:
    """One sed pass of /re/d and /re/r FILE commands (GNU and BSD sed alike: a file queued
    by r is written at the end of the cycle, also when d ended it)."""
    out = []
    for line in text.splitlines(keepends=True):
        queued, deleted = [], False
        for pattern, op, rel in ops:
            if re.search(pattern, line):
                if op == "d":
                    deleted = True
                    break
                if rel is not None:  # an r command always names its file
                    queued.append((Path(tree) / rel).read_text())
        if not deleted:
            out.append(line)
        out.extend(queued)
    return "".join(out)


def embedded_source(tree: Path, lib: str, steps: EmbedSteps | None = None) -> str:
    """kernels/<lib>.metal as the embedded Metal library holds it: CMakeLists.txt's steps applied."""
    steps = steps or embed_steps(tree)
    src_rel = f"{emulate.KERNELS}/{lib}.metal"
    src = (Path(tree) / src_rel).read_text()
    headers = steps.first + [h for regex, h in steps.optional if re.search(regex, src)]
    text = "".join((Path(tree) / h).read_text() for h in headers) + src
    for ops in steps.seds:
        text = _sed(text, ops, tree)
    return text


def _run(cmd: list[str], what: str) -> None:
    proc = ui.run(cmd, check=False)
    if proc.returncode != 0:
        out = proc.stdout
        tail = ui.tail(out.strip(), 25)
        hint = ("\n(an #include the embedded library cannot resolve: the Metal runtime compiles it "
                "from memory, with no include path)" if "No such file or directory" in out else "")
        raise TqpatchError(f"Metal compile check: {what} does not compile:\n{tail}{hint}")


def check_embedded(tree: Path, work: Path, cxx: str, lib: str, steps: EmbedSteps) -> None:
    # alone in its directory: a quoted #include finds nothing, as in the Metal runtime
    path = work / "embedded" / lib / f"{lib}.cpp"
    path.parent.mkdir(parents=True, exist_ok=True)
    # GGML_METAL_EMBED_LIBRARY: the macro ggml_metal_library_init passes to the runtime compiler;
    # the shim first: what it declares (int32_t, half, ...) the Metal compiler knows built in
    path.write_text("#define GGML_METAL_EMBED_LIBRARY 1\n#include <metal_stdlib>\n"
                    + emulate.rewrite(embedded_source(tree, lib, steps), register=False))
    _run([cxx, *emulate.CXX_FLAGS, "-fsyntax-only", f"-I{emulate.HOST_DIR / 'shim'}", str(path)],
         f"the embedded library kernels/{lib}.metal")


def check_host(tree: Path, work: Path, cxx: str, unit: str) -> None:
    metal = Path(tree) / emulate.METAL
    includes = [f"-I{metal}", f"-I{metal.parent}", f"-I{Path(tree) / 'ggml/include'}"]
    _run([cxx, "-std=c++17", "-fsyntax-only", *includes, str(metal / unit)], unit)


def device_m_excerpt(tree: Path) -> str:
    """GGML_METAL_LIBS with its tables and the supports_op functions of ggml-metal-device.m, as C."""
    text = (Path(tree) / emulate.METAL / "ggml-metal-device.m").read_text()
    try:
        libs = text[text.index("#define GGML_METAL_LIBS"):]
        libs = libs[:libs.index("};", libs.index("k_lib_names")) + 2]
        start = text.index("static bool ggml_metal_supports_mul_mat_op(")
        end = text.index("const struct ggml_metal_device_props * ggml_metal_device_get_props(")
    except ValueError:
        raise TqpatchError("ggml-metal-device.m no longer has GGML_METAL_LIBS and supports_op "
                           "where the compile check looks for them") from None
    return ('#include "ggml.h"\n#include "ggml-impl.h"\n#include "ggml-metal-device.h"\n'
            '#include "ggml-metal-impl.h"\n#include "ggml-metal-turbo.h"\n#include "ggml-metal-ops.h"\n'
            "struct ggml_metal_device { struct ggml_metal_device_props props; };\n"
            + libs + "\n" + text[start:end])


def check_device_m(tree: Path, work: Path) -> None:
    cc = emulate.c_compiler()
    metal = Path(tree) / emulate.METAL
    path = work / "ggml-metal-device-supports.c"
    path.write_text(device_m_excerpt(tree))
    _run([cc, "-std=c11", "-fsyntax-only", f"-I{metal}", f"-I{metal.parent}",
          f"-I{Path(tree) / 'ggml/include'}", str(path)], "ggml-metal-device.m (library list, supports_op)")


def run(tree: Path, work: Path) -> dict:
    """The whole check; a report dict (units, instances, seconds) or TqpatchError."""
    tree, work = Path(tree), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cxx = emulate.compiler()
    libs = emulate.turbo_libs()
    host_units = ["ggml-metal-device.cpp", "ggml-metal-ops.cpp"]
    started = time.monotonic()
    jobs = max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(jobs) as pool:
        steps = embed_steps(tree)
        futures = [pool.submit(check_embedded, tree, work, cxx, lib, steps) for lib in libs]
        futures += [pool.submit(check_host, tree, work, cxx, u) for u in host_units]
        futures.append(pool.submit(check_device_m, tree, work))
        for f in futures:
            f.result()
    return {"units": host_units + ["ggml-metal-device.m (supports_op, as C)"],
            "instances": [f"kernels/{lib}.metal (embedded)" for lib in libs],
            "configure_s": 0.0, "compile_s": round(time.monotonic() - started, 1), "jobs": jobs,
            "warnings": [], "log": str(work)}


def unavailable() -> str | None:
    try:
        emulate.compiler()
        emulate.c_compiler()
    except TqpatchError as e:
        return e.message
    return None
