"""The README's claim: adding a backend is its module (a Backend object) and a registry entry.

A throwaway backend, built here and put in a temporary registry, is picked up by
render (its context and file-name expansion), verify (its runner, precision and
label), build (its cmake arguments, its arch check), the CLI (its --backend
choice), doctor, and the tests' backend parametrisation, with no other edit.
"""

from __future__ import annotations

import dataclasses
import json

from click.testing import CliRunner

import backend_params
from tqpatch import backends, build, precision, render, verify
from tqpatch import verify_io as io
from tqpatch.backends.base import Backend, EndToEnd, reject_arch
from tqpatch.backends.cmake import configure_args
from tqpatch.cli import main


def _toy_runner(record, tree, run_harness):
    """Host 'kernels' that answer with the reference (as a perfect device would)."""
    def run(cases):
        by_case = {id(ch.case): ch for ch in run.checks}
        results = [io.Result(i, 0, "", verify.expected_output(by_case[id(c)]))
                   for i, c in enumerate(cases)]
        return verify.HarnessRun("TOY0", "toy device", "a toy", results, [])
    return run


TOY = Backend(
    name="toy", ggml_backend_name="TOY0",
    cmake_args=lambda arch, options: ["-DGGML_TOY=ON"],
    normalize_arch=lambda arch: reject_arch("toy", arch, "(it has no archs)"),
    render_context=lambda: {"greeting": "hello from toy"},
    render_expansions=lambda: {"toy_item": lambda: [{"slug": "a"}, {"slug": "b"}]},
    precision=precision.ggml_cpu,
    verify_label="toy-emulated",
    make_verify_runner=_toy_runner,
    e2e=EndToEnd(marker="gpu", tool_args=("--toy",)),
)


def test_render_reads_its_context_and_expansion(tmp_path):
    (tmp_path / "ggml/src/ggml-toy").mkdir(parents=True)
    (tmp_path / "ggml/src/ggml-toy/toy.h.j2").write_text("// {{ toy.greeting }}\n")
    (tmp_path / "ggml/src/ggml-toy/toy-[toy_item].c.j2").write_text("// {{ toy_item.slug }}\n")
    with backends.registered(TOY):
        files = render.render_all(backends.all_backends(), tmp_path).files
        assert "toy" in render.render_context(backends.all_backends())
    assert files["ggml/src/ggml-toy/toy.h"].decode().endswith("// hello from toy\n")
    assert files["ggml/src/ggml-toy/toy-a.c"].decode().endswith("// a\n")
    assert "ggml/src/ggml-toy/toy-b.c" in files


def test_verify_runs_its_runner_with_its_precision_and_label(monkeypatch, tmp_path):
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path))  # not built: the runner needs no build
    checks = verify.make_checks(seed=0, quick=True, types=("turbo3",))
    monkeypatch.setattr(verify, "make_checks", lambda *a, **k: checks)

    def runner(record, tree, run_harness):
        run = _toy_runner(record, tree, run_harness)
        run.checks = checks
        return run

    with backends.registered(dataclasses.replace(TOY, make_verify_runner=runner)):
        res = CliRunner().invoke(main, ["verify", "--backend", "toy", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["backend"] == "toy" and report["label"] == "toy-emulated" and report["passed"]
    assert report["precision_model"] == precision.ggml_cpu().name


def test_build_takes_its_cmake_arguments_and_arch_check(monkeypatch, tmp_path):
    args = configure_args(TOY)
    assert args[-1] == "-DGGML_TOY=ON" and "-DLLAMA_BUILD_SERVER=ON" in args
    monkeypatch.setenv("TQPATCH_CACHE", str(tmp_path))
    with backends.registered(TOY):
        bad = CliRunner().invoke(main, ["build", "--backend", "toy", "--arch", "90"])
        assert bad.exit_code == 1 and "does not apply to the toy backend" in bad.output
        seen = {}
        monkeypatch.setattr(build, "build", lambda req: seen.setdefault("req", req))
        res = CliRunner().invoke(main, ["build", "--backend", "toy"])
        assert res.exit_code == 0, res.output
        assert seen["req"].backend is backends.get("toy")


def test_cli_offers_it_and_refuses_unknown_names():
    with backends.registered(TOY):
        assert "toy" in CliRunner().invoke(main, ["verify", "--help"]).output
        doctor = json.loads(CliRunner().invoke(main, ["doctor", "--json"]).output)
        assert doctor["backends"]["toy"]["ggml_backend_name"] == "TOY0"
    res = CliRunner().invoke(main, ["verify", "--backend", "toy"])
    assert res.exit_code == 2 and "unknown backend 'toy'" in res.output


def test_the_tests_parametrise_over_it():
    with backends.registered(TOY):
        ids = [p.id for p in backend_params.params(marked=True)]
        marks = {p.id: [m.name for m in p.marks] for p in backend_params.params()}
    assert "toy" in ids and marks["toy"] == ["gpu"]
    assert "toy" not in [p.id for p in backend_params.params()]
