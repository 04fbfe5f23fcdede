import os

# One worker per core (pytest-xdist): each worker's torch on its share of the cores, not all of them.
# Oversubscribed OpenMP threads spin while they wait: with two threads in each of two workers the
# suite spent 1166 s of CPU in 727 s, with one 775 s in 528 s (idle, 2 cores; progressive.py's runs
# also shared since). Set before torch is imported, and inherited by the scripts the tests start.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a small trained tokenizer, saved as a Hugging Face folder."""
    from tests.tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def llama2_like_model_dir(tmp_path_factory):
    """A tiny random Llama whose tokenizer is shaped like Llama-2's as LongLoRA meets it: BOS added, no pad token."""
    from tests.tiny_models import save_tiny_model, tiny_tokenizer

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama2"), tokenizer=tiny_tokenizer(pad=False, add_bos=True))
