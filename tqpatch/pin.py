"""The pinned llama.cpp: one commit, and the verified sources that carry it."""

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
