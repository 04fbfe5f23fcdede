r"""Split a LoRA+ training checkpoint into the adapter and the trainable embed/norm weights.

Reads a Trainer checkpoint saved plainly, under torchrun, or by DeepSpeed ZeRO-2/3 (consolidated with
DeepSpeed's own zero_to_fp32), and LongLoRA's `pytorch_model.bin` layout. Writes, by default into the
checkpoint folder itself: adapter_model.safetensors, adapter_config.json, trainable_params.safetensors,
and the checkpoint's longctx_training.json (its RoPE and length) when written elsewhere.
Key names are matched by their structure (PEFT / DDP / DeepSpeed prefixes), and checked against the
base model's layers when it can be found locally.

    python get_trainable_weights.py --checkpoint_path outputs/smollm2-16k/checkpoint-100 \
        --trainable_params embed,norm

Then merge (see merge_lora_weights_and_save_hf_model.py):
    python merge_lora_weights_and_save_hf_model.py --base_model smollm2 \
        --peft_model outputs/smollm2-16k/checkpoint-100 --save_path outputs/merged-16k
"""

from dataclasses import dataclass, field
from pathlib import Path

from longctx.checkpoints import check_against_base, check_split_outputs, read_checkpoint, write_split_checkpoint
from longctx.cli import parse_dataclasses, run_cli
from longctx.training_record import read_record, write_record


@dataclass
class Arguments:
    checkpoint_path: str = field(metadata={"help": "checkpoint folder (checkpoint-N, or a LongLoRA output folder)"})
    trainable_params: str = field(
        default="embed,norm", metadata={"help": "comma-separated name parts trained at full rank ('' for LoRA only)"}
    )
    output_dir: str | None = field(default=None, metadata={"help": "where to write (default: --checkpoint_path)"})
    base_model: str | None = field(
        default=None, metadata={"help": "base model to check shapes against (default: the adapter config's)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace adapter and trainable params files already there"})


def main():
    (args,) = parse_dataclasses((Arguments,), __doc__)
    output_dir = args.output_dir or args.checkpoint_path
    writes = check_split_outputs(args.checkpoint_path, output_dir, args.trainable_params, args.overwrite)
    split = read_checkpoint(args.checkpoint_path, args.trainable_params)
    checked = check_against_base(split, args.base_model)
    written = write_split_checkpoint(split, output_dir) if writes else []
    record = read_record(args.checkpoint_path)  # how it was trained (RoPE, length) travels with the weights
    if writes and record is not None and Path(output_dir).resolve() != Path(args.checkpoint_path).resolve():
        written.append(write_record(output_dir, record))
    print(f"read {split.source}: {len(split.adapter)} LoRA tensors, {len(split.trainable)} trainable tensors")
    print(f"checked against base model {checked}" if checked else "base model not found locally: shapes unchecked")
    for path in written:
        print(f"wrote {path}")
    if not writes:
        print(f"{output_dir} is already split into adapter and trainable params: nothing written")


if __name__ == "__main__":
    run_cli(main)
