"""The pinned llama.cpp: one commit, and the verified sources that carry it."""

from importlib import resources

LLAMA_CPP_COMMIT = "0c1e57098"

# The Python package index sdist whose vendor/llama.cpp is exactly that commit.
SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/ec/e9/"
    "e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
    "llama_cpp_python-0.3.36.tar.gz"
)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_SIZE = 76589250
SDIST_SUBDIR = "llama_cpp_python-0.3.36/vendor/llama.cpp"

GIT_URL = "https://github.com/ggml-org/llama.cpp"
LLAMA_CPP_COMMIT_FULL = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

# --- Tree fingerprint -------------------------------------------------------
# Every source (sdist, git checkout, --from) must yield the same tree. The
# fingerprint is sha256 over the sorted lines `path NUL sha256(content) LF`
# for every file under TREE_SCOPE: everything the CMake build reads (the
# top-level CMakeLists.txt and LICENSE, cmake/, ggml/, src/, include/, common/,
# tools/, tests/, vendor/, licenses/, examples/, pocs/, app/, and
# scripts/ui-assets.cmake, which tools/ui/CMakeLists.txt runs with `cmake -P`
# while building llama-server: without it a build fails at its UI step).
# Found by grepping every CMakeLists.txt/*.cmake for include(), file(READ|GLOB),
# configure_file(), add_subdirectory() and `-P` of paths outside the other
# entries; the rest of scripts/ and models/ (vocab files ctest reads, not the
# build) stay out. Left out: docs, CI files, gguf-py, the rest of scripts/,
# models/ and the like (they cannot change the binaries, and users' checkouts
# often carry edits there), `.git` (a file in the sdist, a directory in a
# clone), __pycache__ and *.pyc. Contents are raw bytes and file modes are not
# hashed, so a `git clone` (tqpatch clones with core.autocrlf=false) of the
# commit matches exactly: checked against the submodule git objects the sdist
# ships (git ls-tree of 0c1e57098 == the sdist's vendor/llama.cpp, all 3665
# blobs, plus the sdist's `.git` file).
# The per-file table (paths + 4-byte sha256 prefixes, zlib + base85) lives in
# the package data file TREE_INDEX_FILE and only serves to name the first
# missing/extra/differing file. Regenerate it and the two values below with
# `python -c "from tqpatch import fetch; print(fetch.write_pin_values(TREE))"`.
TREE_SCOPE = (
    "CMakeLists.txt", "LICENSE", "cmake", "ggml", "src", "include", "common",
    "tools", "tests", "vendor", "licenses", "examples", "pocs", "app",
    "scripts/ui-assets.cmake",
)
TREE_FINGERPRINT = "4e769def05148affa566e124c92b142480ebfe779fd184ebf32c35acc34fea7b"
TREE_FILE_COUNT = 3111
TREE_INDEX_FILE = "pin_tree_index.txt"


def tree_index_text() -> str:
    """The encoded per-file table of the pinned tree (see fetch.decode_index)."""
    return resources.files(__package__).joinpath(TREE_INDEX_FILE).read_text(encoding="ascii").strip()
