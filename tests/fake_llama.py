"""A tiny fake llama.cpp for apply / revert / status tests, in-process or in a subprocess.

A setup folder holds everything tqpatch would otherwise take from the network
and the repository:
  upstream/       the fake upstream tree (fetch copies it: no network)
  patches/        series + patch files
  rendered.json   {"files": {path: text}, "versions": {...}} (what render would give)
  pin.json        the pin values describing upstream/

`install(setup, setattr)` points tqpatch at it (monkeypatch.setattr in tests,
plain setattr in a subprocess). `python tests/fake_llama.py SETUP ARGS...` runs
the tqpatch CLI that way, so tests can kill a real process mid-apply.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def write_upstream(setup: Path, files: dict[str, str]) -> None:
    from tqpatch import fetch

    upstream = setup / "upstream"
    for rel, text in files.items():
        (upstream / rel).parent.mkdir(parents=True, exist_ok=True)
        (upstream / rel).write_text(text)
    index = fetch.tree_index(upstream)
    (setup / "pin.json").write_text(json.dumps({
        "fingerprint": fetch.fingerprint(index), "index": fetch.encode_index(index),
        "count": len(index)}))


def write_patches(setup: Path, patches: list[tuple[str, str]], series_extra: str = "") -> None:
    pdir = setup / "patches"
    pdir.mkdir(parents=True, exist_ok=True)
    for p in pdir.glob("*.patch"):
        p.unlink()
    for name, text in patches:
        (pdir / name).write_text(text)
    (pdir / "series").write_text("# test series\n\n" + "".join(f"{n}\n" for n, _ in patches)
                                 + series_extra)


def write_rendered(setup: Path, files: dict[str, bytes], versions: dict[str, str]) -> None:
    (setup / "rendered.json").write_text(json.dumps({
        "files": {k: v.decode() for k, v in files.items()}, "versions": versions}))


def read_rendered(setup: Path):
    from tqpatch.render import RenderResult

    data = json.loads((setup / "rendered.json").read_text())
    return RenderResult(files={k: v.encode() for k, v in data["files"].items()},
                        versions=dict(data["versions"]))


def install(setup: Path, setattr=setattr) -> None:
    from tqpatch import fetch, paths, pin, render

    setup = Path(setup)
    values = json.loads((setup / "pin.json").read_text())
    setattr(pin, "TREE_FINGERPRINT", values["fingerprint"])
    setattr(pin, "TREE_FILE_COUNT", values["count"])
    setattr(pin, "tree_index_text", lambda: values["index"])
    setattr(paths, "patches_dir", lambda: setup / "patches")
    setattr(render, "load_rendered", lambda *a, **k: read_rendered(setup))
    real_fetch = fetch.fetch
    setattr(fetch, "fetch", lambda *a, **k: real_fetch(from_path=setup / "upstream",
                                                        echo=lambda m: None))


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    from tqpatch.cli import main

    sys.argv = ["tqpatch", *sys.argv[2:]]  # what lock files and journals record
    main(sys.argv[1:], prog_name="tqpatch")
