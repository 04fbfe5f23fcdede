r"""Merge LoRA adapter(s) and LoRA+ trainable weights into a base model; save a plain HF model.

Each --peft_model folder (adapter_model.safetensors, adapter_config.json, trainable_params.safetensors,
as fine-tune.py and get_trainable_weights.py write them; LongLoRA's .bin files too) is applied in the
order given. The saved config carries the RoPE the adapters were trained with (the last folder's
longctx_training.json), or for LoRA+ folders without one (LongLoRA's) the linear scaling for
--context_size, so the merged model reads long inputs as is; plain LoRA folders without one
(Gradient's) keep the base model's RoPE. Plain LoRA adapters merge as they are; a folder that says it
trained embeddings and norms (LoRA+) but lacks their file is refused. The save is atomic: on any
error no --save_path folder is left behind.

    python merge_lora_weights_and_save_hf_model.py --base_model smollm2 \
        --peft_model outputs/smollm2-16k --save_path outputs/smollm2-16k-merged

Several stages in order (Gradient's 1048k recipe; progressive.py does this itself), with Gradient's
merge_adapters.py flags, in bfloat16 for a large model:
    python merge_lora_weights_and_save_hf_model.py --base_model_name_or_path path/to/Llama-3-8B-Instruct \
        --peft_model_paths outputs/stage-65k outputs/stage-262k --output_dir outputs/llama3-262k \
        --device auto --dtype bfloat16

A LongLoRA folder (no training record): --context_size 32768 gives LongLoRA's linear factor.
"""

from dataclasses import dataclass, field

from transformers import AutoConfig

from longctx.cli import parse_dataclasses, run_cli
from longctx.errors import check_choice
from longctx.merging import merge_and_save
from longctx.modeling import DTYPES, WeightLoading
from longctx.rope import ROPE_METHODS, RopeRequest, context_window


@dataclass
class Arguments:
    peft_model: list[str] = field(
        metadata={"help": "adapter folder(s), merged in the order given", "aliases": ["--peft_model_paths"]}
    )
    save_path: str = field(metadata={"help": "new folder for the merged model and tokenizer", "aliases": ["--output_dir"]})
    context_size: int | None = field(
        default=None,
        metadata={"help": "context length the merged model is for (default: the training length the last adapter "
                          "records; plain LoRA adapters without one: the base model's window)"},
    )
    base_model: str = field(
        default="smollm2",
        metadata={"help": "'smollm2', a local HF folder or a cached hub id", "aliases": ["--base_model_name_or_path"]},
    )
    dtype: str = field(default="float32", metadata={"help": f"dtype to merge and save in: {', '.join(DTYPES)}"})
    rope_method: str | None = field(
        default=None,
        metadata={"help": f"RoPE scaling used in training: {', '.join(ROPE_METHODS)} (default: the adapters' record, else linear)"},
    )
    rope_factor: float | None = field(
        default=None, metadata={"help": "RoPE factor used in training (default: from --context_size)"}
    )
    require_trainable_params: bool | None = field(
        default=None,
        metadata={"help": "True: refuse folders without trainable_params; False: merge LoRA alone; default: refuse "
                          "only a folder that says it trained them (its training record, or a whole checkpoint)"},
    )
    device: str = field(
        default="cpu", metadata={"help": "where to merge (Gradient's flag): cpu, cuda, cuda:N, or auto to spread over the GPUs"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run the model's own code (Gradient's flag; off unless asked; it must be local)"}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Hugging Face cache folder to find hub ids in (LongLoRA's flag); local files only"}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "refused: nothing is uploaded from here (Gradient's flag)"})

    def __post_init__(self):
        if self.context_size is not None and self.context_size <= 0:
            raise ValueError(f"--context_size must be positive (got {self.context_size})")
        check_choice("--dtype", self.dtype, DTYPES)
        if self.rope_method is not None:
            check_choice("--rope_method", self.rope_method, ROPE_METHODS)
        if self.push_to_hub:
            raise ValueError("--push_to_hub: longctx uploads nothing; upload --save_path yourself (huggingface-cli upload)")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ValueError(f"--device {self.device}: choose cpu, cuda, cuda:N or auto")

    def device_map(self) -> str | dict | None:
        return None if self.device == "cpu" else "auto" if self.device == "auto" else {"": self.device}


def main():
    (args,) = parse_dataclasses((Arguments,), __doc__)
    weights = WeightLoading(
        dtype=args.dtype, device_map=args.device_map(), cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code
    )
    rope = RopeRequest(args.rope_method, args.rope_factor)
    save_path = merge_and_save(
        args.base_model, args.peft_model, args.context_size, args.save_path, rope, weights, args.require_trainable_params
    )
    config = AutoConfig.from_pretrained(save_path)
    print(f"merged {len(args.peft_model)} adapter(s) into {args.base_model}; saved to {save_path}")
    print(f"rope_parameters: {config.rope_parameters}; window {context_window(config)} tokens")


if __name__ == "__main__":
    run_cli(main)
