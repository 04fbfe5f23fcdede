"""Every use of another library's internals, in one place, each with the versions it was checked against.

longctx extends transformers through its public registries (`AttentionInterface`,
`AttentionMaskInterface`), `config.rope_parameters`, `set_attn_implementation` and PEFT's API. Where
no public API does the job, the dependence lives here: what is used, why, and the versions it was
checked against (`CHECKED_AGAINST`). tests/test_internals.py checks every entry against the installed
libraries and fails naming the entry when an upgrade moves one; that is the place to look first after
bumping requirements.txt.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import flash_attention_mask, sdpa_mask

CHECKED_AGAINST = {
    "torch": "2.13.0",
    "transformers": "5.24.0",
    "peft": "0.21.2",
    "bitsandbytes": "0.50.2",
    "deepspeed": "0.19.8",
}

__all__ = [
    "CHECKED_AGAINST",
    "DynamicLayer",
    "TrainerHooks",
    "attn_implementation",
    "deepspeed_checkpoint_classes",
    "keeping_attention_overrides",
    "drop_quantization_record",
    "flash_attention_mask",
    "quiet_known_library_noise",
    "register_process_wide_sdpa",
    "sdpa_attention_forward",
    "sdpa_mask",
    "sdpa_with_lse",
    "sequence_parallel_group",
    "sequence_parallel_rank",
    "stop_bnb_cpu_repacking",
]

# ---------------------------------------------------------------------------------------------
# transformers: module paths and attributes that are not part of its documented API
#
# - `sdpa_attention_forward` (transformers.integrations.sdpa_attention): the function behind "sdpa";
#   S²-Attn and DCA fall back to it when decoding with a cache. Taken by path, not from the registry,
#   because `replace_llama_attn` may have replaced the registry's "sdpa" entry.
# - `flash_attention_mask` / `sdpa_mask` (transformers.masking_utils): the mask builders registered
#   with `AttentionMaskInterface` for our implementations (the plain 2D padding mask) and restored
#   for "sdpa".
# - `OPTIMIZER_NAME`, `TRAINER_STATE_NAME`, `PREFIX_CHECKPOINT_DIR`, `sort_checkpoints`: the Trainer's
#   checkpoint layout, which resuming and get_trainable_weights.py read.
# - `numpy_rng_safe_globals` (transformers.trainer_pt_utils.safe_globals): the allow-list with which
#   the Trainer itself loads its RNG state weights-only.
# - `DynamicLayer` (transformers.cache_utils): the per-layer cache that longctx.streaming subclasses;
#   it relies on `keys`, `values`, `device`, `is_initialized`, `lazy_initialization`, `reset` and
#   `get_mask_sizes`.


def attn_implementation(config) -> str | None:
    """The attention implementation a model runs (`config._attn_implementation`, transformers 5's only record)."""
    return config._attn_implementation


def drop_quantization_record(model) -> None:
    """Let `save_pretrained` write a GGUF-loaded model (transformers refuses while its quantizer is set).

    The weights are already dequantised to float32; `hf_quantizer.remove_quantization_config` is the
    quantizer's own way to forget it.
    """
    model.hf_quantizer.remove_quantization_config(model)


class TrainerHooks:
    """The private Trainer methods longctx's trainers need, overridden in one place, each behind a public hook.

    - `_get_train_sampler`: the Trainer builds its sampler there; a length-sorted batch sampler
      (LongAlign's sort batching) replaces it when `custom_train_sampler()` returns one.
    - `_get_num_items_in_batch`: the divisor of the loss over an accumulated batch; LongAlign's loss
      weighting divides by sequences instead of tokens when `custom_num_items_in_batch` returns a count.
    - `_prepare_for_training`: where the Trainer wraps its DataLoader (accelerate, DeepSpeed);
      `custom_train_loader` may replace the wrapped loader (sequence parallelism shards its rows).
    - `_run_epoch` with the module attribute `transformers.trainer.skip_first_batches`: the resume
      skip, which rebuilds DataLoaders; `custom_skip` may skip a loader that knows how itself.
    Mix in before `Trainer`; each falls back to the Trainer's own when its hook returns None (or the
    loader unchanged).
    """

    def custom_train_sampler(self):
        return None

    def custom_num_items_in_batch(self, batch_samples, device):
        return None

    def custom_train_loader(self, loader):
        return loader

    def custom_skip(self, loader, batches):
        return None

    def _get_train_sampler(self, train_dataset=None):
        sampler = self.custom_train_sampler()
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def _get_num_items_in_batch(self, batch_samples, device):
        count = self.custom_num_items_in_batch(batch_samples, device)
        return count if count is not None else super()._get_num_items_in_batch(batch_samples, device)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        model, loader = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        replacement = self.custom_train_loader(loader)
        if replacement is not loader:
            self.callback_handler.train_dataloader = replacement
        return model, replacement

    def _run_epoch(self, *args, **kwargs):
        if type(self).custom_skip is TrainerHooks.custom_skip:
            return super()._run_epoch(*args, **kwargs)
        import transformers.trainer

        skip_first_batches = transformers.trainer.skip_first_batches

        def skip(loader, batches):
            skipped = self.custom_skip(loader, batches)
            return skipped if skipped is not None else skip_first_batches(loader, batches)

        transformers.trainer.skip_first_batches = skip
        try:
            return super()._run_epoch(*args, **kwargs)
        finally:
            transformers.trainer.skip_first_batches = skip_first_batches


TRAINER_PRIVATE_METHODS = {
    "_get_train_sampler": ("self", "train_dataset"),
    "_get_num_items_in_batch": ("self", "batch_samples", "device"),
    "_prepare_for_training": ("self", "max_steps", "train_dataloader", "resume_from_checkpoint"),
    "_run_epoch": (
        "self", "model", "epoch", "train_dataloader", "steps_in_epoch", "num_update_steps_per_epoch", "trial",
        "ignore_keys_for_eval", "start_time", "resume_from_checkpoint", "epochs_trained",
        "steps_trained_in_current_epoch",
    ),
}


def register_process_wide_sdpa(attention_forward=None, mask_function=None) -> None:
    """Replace the registry's "sdpa" entry for the whole process (LongLoRA's `replace_llama_attn` contract);
    no argument restores transformers' own. Every model loaded with "sdpa" afterwards uses the replacement."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register("sdpa", attention_forward or sdpa_attention_forward)
    AttentionMaskInterface.register("sdpa", mask_function or sdpa_mask)


# ---------------------------------------------------------------------------------------------
# torch: fused attention kernels that return the log-sum-exp (no public API returns it)


def sdpa_with_lse(query, key, value, bias, is_causal: bool, scaling: float):
    """(output, log-sum-exp) of softmax attention through torch's fused kernels, never a score matrix.

    CUDA: `aten._scaled_dot_product_efficient_attention` (its log-sum-exp is padded to a multiple of
    32 queries: cut here); CPU: `aten._scaled_dot_product_flash_attention_for_cpu`. `bias` is an
    additive mask or None.
    """
    if query.is_cuda:
        output, lse, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, bias, True, 0.0, is_causal, scale=scaling
        )
        return output, lse[:, :, : query.shape[2]]
    output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, is_causal, attn_mask=bias, scale=scaling
    )
    return output, lse


# ---------------------------------------------------------------------------------------------
# bitsandbytes, DeepSpeed, PEFT


def stop_bnb_cpu_repacking(model) -> None:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, the first eval-mode forward repacks each layer in place (and undoes the
    double quantization); the repacked kernel has no backward, so a model evaluated before training
    (fine-tune.py's perplexity check) would silently stop passing gradients through its frozen
    layers, and LoRA weights below them would get none. `support_avx512bf16_for_cpu` is the
    attribute of bitsandbytes' Linear4bit that turns the repacking on.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def deepspeed_checkpoint_classes() -> list[type]:
    """Plain records in DeepSpeed's ZeRO checkpoints (loss scaler, stage, fragment address): data, no code.

    Named by their module paths inside DeepSpeed, so the weights-only unpickler may load them.
    """
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


# `deepspeed.runtime.sequence_parallel.parallel_state_sp`: the module DeepSpeed's ulysses_sp keeps
# its process groups in (accelerate exposes no accessor).


def sequence_parallel_rank() -> int:
    """This process's rank in its Ulysses group."""
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    return parallel_state_sp.get_sequence_parallel_rank()


def sequence_parallel_group():
    """This process's Ulysses group (a torch.distributed group)."""
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    return parallel_state_sp.get_sequence_parallel_group()


@contextlib.contextmanager
def keeping_attention_overrides():
    """Put transformers' per-process attention overrides back as they were on the way out.

    DeepSpeed's Ulysses registers its wrapper of the model's attention as an override in
    `ALL_ATTENTION_FUNCTIONS._local_mapping` (transformers' registry, not its public `register`);
    longctx.sequence_parallel takes it out after training so later passes never wait on the group.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    overrides = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    try:
        yield
    finally:
        ALL_ATTENTION_FUNCTIONS._local_mapping.clear()
        ALL_ATTENTION_FUNCTIONS._local_mapping.update(overrides)


@contextlib.contextmanager
def deepspeed_groups_without_ulysses():
    """While accelerate prepares DeepSpeed: the sequence-parallel groups, without Ulysses' attention wrapper.

    accelerate (1.12) asks `UlyssesSPAttentionHF.register_with_transformers` for DeepSpeed's process
    groups (`parallel_state_sp`, passed on as `mpu`), and the same call wraps the model's attention in
    the all-to-all and refuses head counts the group size does not divide. The halo mode
    (longctx.halo_attention) attends on each shard itself, so it takes only the groups.
    """
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    def groups_only(*, sequence_parallel_size, **_):
        parallel_state_sp.initialize_sequence_parallel(sequence_parallel_size=sequence_parallel_size)
        return parallel_state_sp

    register = UlyssesSPAttentionHF.__dict__["register_with_transformers"]
    UlyssesSPAttentionHF.register_with_transformers = staticmethod(groups_only)
    try:
        yield
    finally:
        UlyssesSPAttentionHF.register_with_transformers = register


BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
PEFT_DEPRECATION_MESSAGE = "`is_gradient_checkpointing` is deprecated"


def quiet_known_library_noise() -> None:
    """Silence two messages nothing a longctx user can act on, for the process (called once, by longctx.lora).

    - bitsandbytes' CPU backend logs on import that it cannot fetch an optional inference kernel from
      the hub; longctx never uses that kernel (`stop_bnb_cpu_repacking`).
    - PEFT reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model; the
      FutureWarning is about PEFT's code.
    """
    logging.getLogger(BNB_CPU_LOGGER).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=PEFT_DEPRECATION_MESSAGE, category=FutureWarning)


# The Trainer's names load transformers.trainer (seconds): only when a module asks for them.
_TRAINER_NAMES = {
    "OPTIMIZER_NAME": ("transformers.trainer", "OPTIMIZER_NAME"),
    "TRAINER_STATE_NAME": ("transformers.trainer", "TRAINER_STATE_NAME"),
    "PREFIX_CHECKPOINT_DIR": ("transformers.trainer_utils", "PREFIX_CHECKPOINT_DIR"),
    "sort_checkpoints": ("transformers.trainer_utils", "sort_checkpoints"),
    "numpy_rng_safe_globals": ("transformers.trainer_pt_utils", "safe_globals"),
}


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        import importlib

        module, attribute = _TRAINER_NAMES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
