"""Tiny randomly initialised models built in memory, shaped like SmolLM2 (tied embeddings, GQA)."""

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def tiny_llama_config(**overrides) -> LlamaConfig:
    settings = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides)).to(dtype)
    model.set_attn_implementation("sdpa")
    return model.eval()


BOOKS = Path(__file__).resolve().parent.parent / "data" / "pg19"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 320, pad: bool = True, add_bos: bool = False):
    """A byte-level BPE tokenizer trained in a second on a bundled book, with <s>, </s> and <pad>.

    `pad=False` has <unk> in place of <pad> (Llama-2's ids: 0 <unk>, 1 <s>, 2 </s>), no pad token and no chat template;
    `add_bos=True` puts <s> before every encoded text: with both, Llama-2's tokenizer as LongLoRA meets it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>" if pad else "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = (BOOKS / "pg19test_10146.txt").read_text(encoding="utf-8")[:60_000]
    tokenizer.train_from_iterator([text], trainer=trainer)
    if add_bos:
        bos = ("<s>", tokenizer.token_to_id("<s>"))
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[bos])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>" if pad else None,
        unk_token=None if pad else "<unk>",
        chat_template=CHAT_TEMPLATE if pad else None,  # Llama-2's base tokenizer has no chat template
    )


def save_tiny_model(folder: Path, tokenizer=None, **overrides) -> Path:
    """A tiny Llama + tokenizer (default: `tiny_tokenizer()`) saved as a Hugging Face folder, loadable like any real model."""
    tokenizer = tokenizer or tiny_tokenizer()
    model = tiny_llama(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_moved_adapter(model_dir, folder, seed: int = 1):
    """A LoRA+ adapter of a saved tiny model with LoRA B and the final norm moved at random, saved as
    fine-tune.py saves one (PEFT adapter + trainable_params.safetensors); returns the tuned model."""
    from transformers import AutoModelForCausalLM

    from longctx.lora import save_trainable_params, setup_lora

    tuned = setup_lora(AutoModelForCausalLM.from_pretrained(model_dir), r=4, alpha=8, trainable_params="embed,norm")
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "lora_B" in name or name.endswith("model.norm.weight"):
                parameter.add_(0.5 * torch.randn_like(parameter))
    tuned.save_pretrained(folder)
    save_trainable_params(tuned, folder)
    return tuned.eval()
