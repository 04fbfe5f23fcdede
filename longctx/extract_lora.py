r"""Turn a fully fine-tuned model into a rank-r LoRA adapter plus LoRA+ trainable params (longctx.lora_extraction).

    python -m longctx.extract_lora --base smollm2 --tuned outputs/smollm2-16k-full --rank 32 \
        --save_path outputs/smollm2-16k-lora32
    python merge_lora_weights_and_save_hf_model.py --base_model smollm2 \
        --peft_model outputs/smollm2-16k-lora32 --context_size 16384 --save_path outputs/smollm2-16k-again

For each linear layer the delta W_tuned - W_base is factored by truncated SVD (the best rank-r
approximation, Eckart-Young); changed embeddings and norms are kept at full rank. The per-layer
relative errors are printed and saved in the folder's extraction_report.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from longctx.cli import parse_dataclasses, run_cli
from longctx.errors import check_choice
from longctx.lora_extraction import extract_lora, load_weights, save_extracted
from longctx.modeling import DTYPES, parse_dtype
from longctx.outputs import check_output_folder
from longctx.rope import context_window, rope_parameters


@dataclass
class Arguments:
    base: str = field(metadata={"help": "base model: 'smollm2', a local HF folder or a cached hub id"})
    tuned: str = field(metadata={"help": "the fully fine-tuned model (same architecture as --base)"})
    save_path: str = field(metadata={"help": "new folder for the adapter"})
    rank: int = field(default=32, metadata={"help": "LoRA rank r"})
    target: str = field(default="all-linear", metadata={"help": "linear layers to factor: all-linear or leaf names"})
    trainable_params: str = field(
        default="embed,norm", metadata={"help": "changed non-linear weights kept at full rank ('' for none)"}
    )
    dtype: str = field(default="float32", metadata={"help": f"dtype of the saved factors: {', '.join(DTYPES)}"})

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"--rank must be positive (got {self.rank})")
        check_choice("--dtype", self.dtype, DTYPES)


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_dataclasses((Arguments,), __doc__, argv)
    save_path = check_output_folder("--save_path", args.save_path, {"--base": args.base, "--tuned": args.tuned})
    base, tuned = load_weights(args.base), load_weights(args.tuned)
    adapter, trainable, config, errors, left_out = extract_lora(
        base, tuned, args.rank, args.target, args.trainable_params, parse_dtype(args.dtype)
    )
    config.base_model_name_or_path = args.base
    report = {
        "base": args.base,
        "tuned": args.tuned,
        "rank": args.rank,
        "tuned_context_window": context_window(tuned.config),
        "tuned_rope_parameters": rope_parameters(tuned.config),
        "trainable_params": sorted(trainable),
        "changed_but_left_out": left_out,
        "layers": [asdict(error) for error in errors],
    }
    save_extracted(save_path, adapter, trainable, config, report)
    width = max(len(error.name) for error in errors)
    print(f"{'layer':<{width}}  {'shape':>11}  rank  relative error")
    for error in errors:
        shape = "x".join(map(str, error.shape))
        print(f"{error.name:<{width}}  {shape:>11}  {error.rank:>4}  {error.relative_error:.3e}")
    worst = max(errors, key=lambda error: error.relative_error)
    print(f"worst relative error {worst.relative_error:.3e} ({worst.name}); {len(trainable)} weights kept at full rank")
    if left_out:
        print(f"warning: {len(left_out)} changed weights not captured (e.g. {left_out[0]}); "
              "see --target and --trainable_params")
    print(
        f"saved to {save_path}; merge with --context_size {report['tuned_context_window']} "
        f"(the tuned model's RoPE: {report['tuned_rope_parameters']})"
    )


if __name__ == "__main__":
    run_cli(main)
