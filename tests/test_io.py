"""Atomic writes: complete files with ordinary permissions, nothing left behind on failure."""

import concurrent.futures
import multiprocessing
import os
import stat
import time

import pytest

from longctx.io import atomic_file, atomic_folder, build_folder_once, write_json_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_results_are_readable_like_any_file(tmp_path, umask_022):
    path = write_json_atomic(tmp_path / "out" / "results.json", {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone gives 0600
    with atomic_folder(tmp_path / "model") as staging:
        (staging / "config.json").write_text("{}")
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755  # mkdtemp alone gives 0700


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "model") as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == ["results.json"]


def _build_slowly(folder, log):
    def build(staging):
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one builds
        (staging / "config.json").write_text("{}")

    return str(build_folder_once(folder, build))


def test_processes_started_together_build_the_folder_once(tmp_path):
    """Test workers and torchrun ranks convert the bundled model at once: one builds, the others wait for it."""
    folder, log = tmp_path / "cache" / "model", tmp_path / "builds.log"
    with concurrent.futures.ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_build_slowly, [folder] * 3, [log] * 3))
    assert results == [str(folder)] * 3
    assert log.read_text() == "built\n" and (folder / "config.json").read_text() == "{}"
    assert sorted(os.listdir(folder.parent)) == ["model", "model.lock"]  # no staging folder left behind
