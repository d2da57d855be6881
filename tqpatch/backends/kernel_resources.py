"""Register use of AMD GPU kernels, read from clang's -Rpass-analysis=kernel-resource-usage remarks.

For every kernel clang compiles for an amdgcn target it prints a block of remarks:

  file.cuh:44:1: remark: Function Name: _ZL18flash_attn_ext_vec... [-Rpass-analysis=...]
  file.cuh:44:1: remark:     VGPRs: 256 [...]
  file.cuh:44:1: remark:     AGPRs: 0 [...]           (only on targets with AGPRs: gfx908, gfx90a, gfx94x, gfx95x)
  file.cuh:44:1: remark:     ScratchSize [bytes/lane]: 208 [...]
  file.cuh:44:1: remark:     VGPRs Spill: 72 [...]
  ...

The remarks name no target. With several --offload-arch, clang compiles the
device code once per target in the targets' name order (gfx1100 before gfx942,
gfx906 before gfx942: checked with clang 21), each time for the same kernels, so
an object's blocks split into equal runs, one per target in sorted order; the
AGPRs line (present exactly on targets that have AGPRs) is checked against it.
ninja prints each object's output after its "[n/m] Building HIP object X" line.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass

from .. import formats, ui

_REMARK = re.compile(r"remark:\s+(.*?)\s*\[-Rpass-analysis=kernel-resource-usage\]\s*$")
_OBJECT = re.compile(r"^\[\d+/\d+\] Building \w+ object (\S+)")
_FIELDS = {  # remark label -> Kernel field
    "TotalSGPRs": "sgprs", "SGPRs": "sgprs", "VGPRs": "vgprs", "AGPRs": "agprs",
    "ScratchSize [bytes/lane]": "scratch", "Occupancy [waves/SIMD]": "occupancy",
    "SGPRs Spill": "sgpr_spill", "VGPRs Spill": "vgpr_spill", "LDS Size [bytes/block]": "lds",
}
_FA_VEC = re.compile(r"flash_attn_ext_vecILi(\d+)ELi(\d+)EL9ggml_type(\d+)ELS0_(\d+)ELb([01])ELb([01])EE")


@dataclass
class Kernel:
    object: str          # the object file (its source's name)
    arch: str            # the gfx target
    name: str            # mangled name
    label: str = ""      # readable name
    vgprs: int = 0
    agprs: int | None = None
    sgprs: int = 0
    scratch: int = 0     # bytes per lane
    occupancy: int = 0   # waves per SIMD
    sgpr_spill: int = 0
    vgpr_spill: int = 0
    lds: int = 0         # bytes per block

    def to_json(self) -> dict:
        return asdict(self)


def has_agprs(arch: str) -> bool | None:
    """Whether a target has accumulation registers (CDNA: gfx908, gfx90a, gfx94x, gfx95x);
    None when not known here."""
    if re.match(r"^gfx(908|90a|94\d|95\d)", arch):
        return True
    if re.match(r"^gfx(8\d\d|900|902|904|906|909|90c|10\d\d|11\d\d|12\d\d)", arch):
        return False
    return None


def fa_vec_label(name: str) -> str | None:
    """'flash_attn_ext_vec D=256 ncols=4 K=turbo3 V=turbo3 gqa' for a FA vector kernel."""
    m = _FA_VEC.search(name)
    if not m:
        return None
    d, ncols, k, v, softcap, gqa = m.groups()
    label = (f"flash_attn_ext_vec D={d} ncols={ncols} K={formats.type_name(int(k))} "
             f"V={formats.type_name(int(v))}")
    return label + (" softcap" if softcap == "1" else "") + (" gqa" if gqa == "1" else "")


def _blocks(lines: list[str]) -> list[dict]:
    """The remark blocks of one object's output, in order."""
    blocks: list[dict] = []
    for line in lines:
        m = _REMARK.search(line)
        if not m:
            continue
        text = m.group(1)
        if text.startswith("Function Name:"):
            blocks.append({"name": text.split(":", 1)[1].strip()})
        elif blocks and ":" in text:
            label, value = text.rsplit(":", 1)
            field = _FIELDS.get(label.strip())
            if field and value.strip().lstrip("-").isdigit():
                blocks[-1][field] = int(value)
    return blocks


def parse(log: str, archs: list[str]) -> list[Kernel]:
    """Every kernel's resources in a ninja log of HIP compiles for `archs`; ValueError
    when an object's remarks do not split into one equal run per target."""
    targets = sorted(archs)
    by_object: dict[str, list[str]] = {}
    current = None
    for line in log.splitlines():
        m = _OBJECT.match(line)
        if m:
            current = m.group(1).rsplit("/", 1)[-1].removesuffix(".o")
            by_object.setdefault(current, [])
        elif current is not None:
            by_object[current].append(line)
    kernels: list[Kernel] = []
    for obj, lines in by_object.items():
        blocks = _blocks(lines)
        if not blocks:
            continue
        n = len(blocks) // len(targets)
        if n * len(targets) != len(blocks):
            raise ValueError(f"{obj}: {len(blocks)} kernel remarks do not split into "
                             f"{len(targets)} targets")
        for i, arch in enumerate(targets):
            run = blocks[i * n:(i + 1) * n]
            if [b["name"] for b in run] != [b["name"] for b in blocks[:n]]:
                raise ValueError(f"{obj}: the kernels of {arch} differ from those of {targets[0]}")
            expected = has_agprs(arch)
            if expected is not None and any(("agprs" in b) != expected for b in run):
                raise ValueError(f"{obj}: AGPRs remarks do not match {arch}: the targets' "
                                 "order is not the one assumed")
            kernels += [Kernel(object=obj, arch=arch, **b) for b in run]
    _label(kernels)
    return kernels


def _strip_params(demangled: str) -> str:
    """'void f<1, &g(int)>(char const*, int)' -> 'f<1, &g>'."""
    text = demangled.strip()
    if text.endswith(")"):  # drop the kernel's own parameter list (balanced parentheses)
        depth = 0
        for i in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                text = text[:i]
                break
    text = re.sub(r"^void ", "", text)
    while True:  # function pointers among the template arguments: keep their names only
        shorter = re.sub(r"&\(?([\w:]+)\([^()]*\)\)?", r"&\1", text)
        if shorter == text:
            return text
        text = shorter


def short_label(name: str) -> str:
    """A label from a mangled name that c++filt cannot read (e.g. C++20 auto template
    parameters): the kernel's name and the turbo functions and types named in it."""
    m = re.match(r"_ZL?(\d+)", name)
    if not m:
        return name
    outer = name[m.end():m.end() + int(m.group(1))]
    parts: list[str] = []
    for hit in re.finditer(r"(?=(\d+)([a-z_][a-z0-9_]*))", name[m.end() + len(outer):]):
        ident = hit.group(2)
        if len(ident) == int(hit.group(1)) and "turbo" in ident and ident not in parts:
            parts.append(ident)
    rest = name[m.end() + len(outer):]
    index = {"Ii": ", int32 rows", "Il": ", int64 rows"}.get(rest[:2], "")
    src = ", from half" if "6__half" in rest else ""
    return f"{outer}<{', '.join(parts)}{index}{src}>" if parts else outer


def _label(kernels: list[Kernel]) -> None:
    names = sorted({k.name for k in kernels if not fa_vec_label(k.name)})
    plain: dict[str, str] = {}
    if names and shutil.which("c++filt"):
        out = ui.capture(["c++filt", *names], timeout=30)
        lines = out.splitlines() if out else []
        if len(lines) == len(names):
            plain = {n: _strip_params(d) for n, d in zip(names, lines) if d != n}
    for k in kernels:
        k.label = fa_vec_label(k.name) or plain.get(k.name) or short_label(k.name)


def is_turbo(kernel: Kernel) -> bool:
    """A kernel made for a turbo type: named after one, or a FA vector kernel with turbo K or V."""
    if any(t in kernel.name for t in formats.TURBO_TYPES):
        return True
    label = fa_vec_label(kernel.name) or ""
    return any(f"={t}" in label for t in formats.TURBO_TYPES)


def summary(kernels: list[Kernel]) -> dict:
    """Counts per target: kernels, those that spill, and the worst turbo kernels."""
    out = {}
    for arch in sorted({k.arch for k in kernels}):
        mine = [k for k in kernels if k.arch == arch]
        turbo = [k for k in mine if is_turbo(k)]
        spilling = [k for k in turbo if k.vgpr_spill or k.sgpr_spill]
        worst = sorted(spilling, key=lambda k: (-k.vgpr_spill, -k.scratch, k.label))
        out[arch] = {
            "kernels": len(mine), "spilling": sum(1 for k in mine if k.vgpr_spill or k.sgpr_spill),
            "turbo_kernels": len(turbo), "turbo_spilling": len(spilling),
            "worst": [f"{k.label}: {k.vgprs} VGPRs, {k.vgpr_spill} spilled, "
                      f"{k.scratch} B/lane scratch" for k in worst[:5]],
        }
    return out


def table(kernels: list[Kernel], only_turbo: bool = True) -> str:
    """A Markdown table of the (turbo) kernels, FA vector kernels first."""
    rows = [k for k in kernels if is_turbo(k) or not only_turbo]
    rows.sort(key=lambda k: (fa_vec_label(k.name) is None, k.label, k.arch))
    out = ["| kernel | target | VGPRs | AGPRs | spilled VGPRs | scratch B/lane | waves/SIMD |",
           "|---|---|---|---|---|---|---|"]
    for k in rows:
        out.append(f"| {k.label} | {k.arch} | {k.vgprs} | {'' if k.agprs is None else k.agprs} | "
                   f"{k.vgpr_spill} | {k.scratch} | {k.occupancy} |")
    return "\n".join(out)
