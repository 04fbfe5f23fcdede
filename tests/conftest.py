import pytest
import torch


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
