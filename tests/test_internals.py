"""Every entry of longctx/internals.py against the installed libraries: an upgrade that moves one fails here,
naming the entry and the versions, before it fails somewhere deep in training or reading."""

import importlib.metadata
import importlib.util
import inspect

import pytest
import torch

from longctx import internals


def moved(entry: str, library: str, detail: str) -> str:
    try:
        installed = importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        installed = "not installed"
    return (
        f"longctx.internals.{entry}: {detail} ({library} {installed} installed, checked against "
        f"{internals.CHECKED_AGAINST[library]}); adapt longctx/internals.py to the new version"
    )


def test_attn_implementation_reads_what_set_attn_implementation_wrote(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.set_attn_implementation("eager")
    try:
        assert internals.attn_implementation(model.config) == "eager"
    except (AttributeError, AssertionError):
        pytest.fail(moved("attn_implementation", "transformers", "config._attn_implementation no longer records it"))


def test_attention_functions_keep_their_signatures():
    parameters = list(inspect.signature(internals.sdpa_attention_forward).parameters)
    assert parameters[:5] == ["module", "query", "key", "value", "attention_mask"], moved(
        "sdpa_attention_forward", "transformers", f"its parameters are now {parameters}"
    )
    for name in ("flash_attention_mask", "sdpa_mask"):
        assert callable(getattr(internals, name)), moved(name, "transformers", "not a function any more")


def test_process_wide_sdpa_is_restored_to_transformers_own():
    from transformers import AttentionInterface

    internals.register_process_wide_sdpa(lambda *args, **kwargs: None)
    internals.register_process_wide_sdpa()
    assert AttentionInterface()["sdpa"] is internals.sdpa_attention_forward, moved(
        "register_process_wide_sdpa", "transformers", "the 'sdpa' entry is not sdpa_attention_forward"
    )


@pytest.mark.parametrize("name", sorted(internals.TRAINER_PRIVATE_METHODS))
def test_trainer_private_methods_keep_their_signatures(name):
    from transformers import Trainer

    method = getattr(Trainer, name, None)
    assert method is not None, moved("TrainerHooks", "transformers", f"Trainer.{name} is gone")
    parameters = tuple(inspect.signature(method).parameters)
    assert parameters == internals.TRAINER_PRIVATE_METHODS[name], moved(
        "TrainerHooks", "transformers", f"Trainer.{name} now takes {parameters}"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [("OPTIMIZER_NAME", "optimizer.pt"), ("TRAINER_STATE_NAME", "trainer_state.json"), ("PREFIX_CHECKPOINT_DIR", "checkpoint")],
)
def test_trainer_checkpoint_names(name, expected):
    try:
        value = getattr(internals, name)
    except ImportError as error:
        pytest.fail(moved(name, "transformers", f"cannot be imported ({error})"))
    assert value == expected, moved(name, "transformers", f"is now {value!r}")


def test_trainer_helpers_import():
    for name in ("sort_checkpoints", "numpy_rng_safe_globals"):
        try:
            assert callable(getattr(internals, name))
        except (ImportError, AssertionError):
            pytest.fail(moved(name, "transformers", "cannot be imported or is not a function"))


def test_dynamic_layer_keeps_what_the_streaming_cache_uses():
    layer = internals.DynamicLayer()
    for name in ("lazy_initialization", "reset", "get_mask_sizes", "update", "is_initialized", "get_seq_length"):
        assert hasattr(layer, name), moved("DynamicLayer", "transformers", f"DynamicLayer has no {name}")


def test_gguf_quantizer_can_forget_its_record():
    from transformers.quantizers.base import HfQuantizer

    assert hasattr(HfQuantizer, "remove_quantization_config"), moved(
        "drop_quantization_record", "transformers", "HfQuantizer.remove_quantization_config is gone"
    )


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_with_lse_against_float64(causal):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, 6, 8, generator=generator) for _ in range(3))
    try:
        output, lse = internals.sdpa_with_lse(query, key, value, None, causal, 8**-0.5)
    except (AttributeError, RuntimeError, TypeError) as error:
        pytest.fail(moved("sdpa_with_lse", "torch", f"the fused kernel fails ({error})"))
    scores = query.double() @ key.double().transpose(-1, -2) * 8**-0.5
    if causal:
        scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.double(), scores.softmax(-1) @ value.double(), atol=1e-5, rtol=1e-5)


def test_bitsandbytes_linear4bit_has_the_repacking_switch():
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(64, 64, bias=False)
    assert hasattr(layer, "support_avx512bf16_for_cpu"), moved(
        "stop_bnb_cpu_repacking", "bitsandbytes", "Linear4bit has no support_avx512bf16_for_cpu"
    )
    internals.stop_bnb_cpu_repacking(torch.nn.Sequential(layer))
    assert layer.support_avx512bf16_for_cpu is False


def test_deepspeed_checkpoint_records_import():
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    assert len(internals.deepspeed_checkpoint_classes()) == 4, moved(
        "deepspeed_checkpoint_classes", "deepspeed", "a checkpoint record class moved"
    )


def test_bitsandbytes_cpu_logger_still_exists():
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    module = internals.BNB_CPU_LOGGER
    assert importlib.util.find_spec(module) is not None, moved(
        "quiet_known_library_noise", "bitsandbytes", f"{module} is gone (the logger to quiet has another name)"
    )


def test_attention_overrides_come_back_as_they_were():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert isinstance(getattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping", None), dict), moved(
        "keeping_attention_overrides", "transformers", "ALL_ATTENTION_FUNCTIONS has no _local_mapping dict"
    )
    with internals.keeping_attention_overrides():
        ALL_ATTENTION_FUNCTIONS["sdpa"] = lambda *args, **kwargs: None  # as DeepSpeed's Ulysses overrides an entry
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is internals.sdpa_attention_forward, moved(
        "keeping_attention_overrides", "transformers", "item assignment no longer goes to _local_mapping"
    )


def test_deepspeed_sequence_parallel_state_has_its_accessors():
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    for name in ("get_sequence_parallel_rank", "get_sequence_parallel_group"):
        assert callable(getattr(parallel_state_sp, name, None)), moved(
            "sequence_parallel_rank", "deepspeed", f"parallel_state_sp.{name} is gone"
        )


def test_groups_without_ulysses_stand_in_for_the_registration_accelerate_calls():
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    register = UlyssesSPAttentionHF.register_with_transformers
    parameters = inspect.signature(register).parameters
    assert {"sequence_parallel_size", "core_attn_implementation"} <= parameters.keys(), moved(
        "deepspeed_groups_without_ulysses", "deepspeed", "register_with_transformers takes other arguments"
    )
    assert callable(getattr(parallel_state_sp, "initialize_sequence_parallel", None)), moved(
        "deepspeed_groups_without_ulysses", "deepspeed", "parallel_state_sp.initialize_sequence_parallel is gone"
    )
    with internals.deepspeed_groups_without_ulysses():
        assert UlyssesSPAttentionHF.register_with_transformers is not register
    assert UlyssesSPAttentionHF.register_with_transformers == register  # put back


def test_trainer_resume_skip_is_a_module_attribute():
    import transformers.trainer

    assert callable(getattr(transformers.trainer, "skip_first_batches", None)), moved(
        "TrainerHooks", "transformers", "transformers.trainer.skip_first_batches is gone (the resume skip moved)"
    )


def test_custom_skip_replaces_the_resume_skip_only_within_an_epoch():
    import transformers.trainer

    original = transformers.trainer.skip_first_batches
    seen = []

    class Base:
        def _run_epoch(self, loader):
            return transformers.trainer.skip_first_batches(loader, 2)

    class Skipping(internals.TrainerHooks, Base):
        def custom_skip(self, loader, batches):
            seen.append((loader, batches))
            return "skipped" if loader == "mine" else None

    loader = torch.utils.data.DataLoader(list(range(5)))
    assert Skipping()._run_epoch("mine") == "skipped"
    assert [int(batch) for batch in Skipping()._run_epoch(loader)] == [2, 3, 4]  # accelerate's own skip
    assert seen == [("mine", 2), (loader, 2)]
    assert transformers.trainer.skip_first_batches is original
