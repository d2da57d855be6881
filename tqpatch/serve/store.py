"""Where `tqpatch serve` keeps what it measured, and the keys that say when it is stale.

  <cache>/serve/<model sha256[:16]>-<calibration key>/
      calib.gguf                     the model's calibration (tqpatch.calibrate)
      probe-<backend>-<build>.json   the probe on one build (ProbeRows + the text's digest;
                                     -nocal: without the calibration, --no-calib)

The calibration key is a digest of what a calibration depends on besides the
model: the codebooks the build was rendered from, the calibration file format
and this tqpatch's version (the fit). The probe key adds the backend served on
and the build's inputs digest (patches, kernels), so a rebuild with other
kernels probes again. A model file's sha256 is remembered by path, size and
mtime (hashing a large model on every start would cost seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import __version__, calibrate, formats, fsutil, paths, quality
from ..backends.base import Backend
from ..errors import TqpatchError
from ..model import sha256_file
from ..plan.recommend import Probe

SHA_INDEX = "model-sha256.json"
CALIB_NAME = "calib.gguf"


def root() -> Path:
    return paths.cache_root() / "serve"


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def model_sha256(model: Path, on_hash=None) -> str:
    """The model file's sha256, from the index when its size and mtime are unchanged."""
    model = Path(model).resolve()
    index_path = root() / SHA_INDEX
    try:
        index = json.loads(index_path.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(model))
    stat = _stat_key(model)
    if isinstance(entry, dict) and {k: entry.get(k) for k in stat} == stat \
            and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    if on_hash:
        on_hash(model)
    try:
        digest = sha256_file(model)
    except OSError as exc:
        raise TqpatchError(f"cannot read {model}: {exc.strerror or exc}") from None
    index[str(model)] = {**stat, "sha256": digest}
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(index_path, (json.dumps(index, indent=1) + "\n").encode())
    except (OSError, TqpatchError):
        pass  # the index only saves time
    return digest


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def calib_key(build_record: dict) -> str:
    codebooks = ((build_record.get("inputs") or {}).get("render") or {}).get("codebooks")
    return _digest({"codebooks": codebooks, "format": calibrate.FORMAT_VERSION,
                    "tqpatch": __version__})


def model_dir(model_sha: str, build_record: dict) -> Path:
    return root() / f"{model_sha[:16]}-{calib_key(build_record)}"


def calib_path(model_sha: str, build_record: dict) -> Path:
    return model_dir(model_sha, build_record) / CALIB_NAME


def probe_path(model_sha: str, build_record: dict, backend: Backend, calibrated: bool = True) -> Path:
    build = (build_record.get("inputs") or {}).get("digest") or "unknown"
    tail = "" if calibrated else "-nocal"
    return model_dir(model_sha, build_record) / f"probe-{backend.name}-{build}{tail}.json"


def load_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())


def remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def latest_probe(model_sha: str, calibrated: bool = True) -> tuple[Path, dict] | None:
    """The newest cached probe of a model on any build and backend (for `tqpatch plan`)."""
    found = []
    for path in root().glob(f"{model_sha[:16]}-*/probe-*.json"):
        if path.name.endswith("-nocal.json") == calibrated:
            continue
        data = load_json(path)
        if data and isinstance(data.get("rows"), list):
            found.append((path.stat().st_mtime, path, data))
    if not found:
        return None
    _, path, data = max(found, key=lambda f: f[0])
    return path, data


def cached_probe(model) -> Probe | None:
    """The newest probe `tqpatch serve` cached for this model file (with the calibration
    if there is one, else without), or None; an unreadable one counts as none, as serve
    itself would probe again."""
    # hashing a large model costs seconds: only when the cache holds any probe at all
    if next(root().glob("*/probe-*.json"), None) is None:
        return None
    sha = model_sha256(model)
    found = latest_probe(sha, calibrated=True) or latest_probe(sha, calibrated=False)
    if found is None:
        return None
    path, data = found
    try:
        rows = [quality.ProbeRow.from_dict(r) for r in data["rows"]]
    except (AttributeError, TypeError):  # a row that is not a mapping
        return None
    if not all(_readable(r) for r in rows):
        return None
    # the calibration a probe ran with sits beside it (calib_path)
    calib = path.parent / CALIB_NAME if any(r.calibrated for r in rows) else None
    fp = data.get("fingerprint")
    return Probe(str(path), str(data.get("backend") or "unknown"), rows,
                 str(calib) if calib else None, fp if isinstance(fp, dict) else {})


def _readable(row) -> bool:
    """A cached row plan can read: cache types tqpatch knows, a KLD that is a number or
    absent, a coherence verdict and a calibration mark that are booleans."""
    try:
        formats.type_info(row.k), formats.type_info(row.v)
    except (TqpatchError, TypeError):
        return False
    number = row.kld is None or (isinstance(row.kld, (int, float)) and not isinstance(row.kld, bool))
    return number and row.coherent in (None, True, False) and isinstance(row.calibrated, bool)
