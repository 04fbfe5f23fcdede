"""The parts of bench/gpu_check.sh, one per process (each prints one JSON object), and the merge of their results.

    python bench/gpu_check.py attention --seq_lens 8192,16384,32768     # S²-Attn op (SDPA, flash-attn varlen) vs full
    python bench/gpu_check.py train --seq_lens 16384,32768              # one LoRA+ step, Llama-2-7B shape, random init
    python bench/gpu_check.py dca --seq_len 32768                       # DCA prefill against SDPA, same model
    python bench/gpu_check.py qlora --seq_len 16384                     # QLoRA (NF4) LoRA+ step memory
    python bench/gpu_check.py merge --parts DIR --output_json FILE      # one JSON from the parts' JSON and logs

The model is built from a LlamaConfig shaped like Llama-2-7B (no download; random weights), in
bfloat16 on the first GPU. Figures are peak GPU memory (torch.cuda.max_memory_allocated) and wall
seconds after a warm-up; correctness checks compare against full attention where the two must agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LLAMA2_7B = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
)
PARTS = ("attention", "train", "dca", "qlora")


def lengths(text: str) -> list[int]:
    values = [int(piece) for piece in text.split(",") if piece.strip()]
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"{text}: comma-separated token counts")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=[*PARTS, "merge"])
    parser.add_argument("--seq_lens", type=lengths, default=None, help="attention/train: lengths in tokens")
    parser.add_argument("--seq_len", type=int, default=None, help="dca/qlora: length in tokens")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers of the Llama-2-7B-shaped model")
    parser.add_argument("--parts", default=None, help="merge: folder of the parts' <part>.json and <part>.log")
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def cuda_memory(torch) -> float:
    return torch.cuda.max_memory_allocated() / 2**30


def timed(torch, step) -> float:
    torch.cuda.synchronize()
    began = time.perf_counter()
    step()
    torch.cuda.synchronize()
    return time.perf_counter() - began


def build_llama2_7b(torch, layers: int, context_size: int | None = None, dtype=None):
    """Llama-2-7B's shape, random init, on the GPU; RoPE linearly scaled to `context_size` (LongLoRA's PI)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longctx.rope import extend_context

    config = LlamaConfig(**{**LLAMA2_7B, "num_hidden_layers": layers})
    if context_size:
        extend_context(config, context_size, method="linear")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.bfloat16, attn_implementation="sdpa")
    return model


def attention_part(args) -> dict:
    """S²-Attn forward + backward (SDPA and flash-attn varlen) against full causal attention, Llama-2-7B heads."""
    import torch
    import torch.nn.functional as F

    from longctx.attention import flash_attn_available, shifted_sparse_attention, shifted_sparse_attention_varlen

    rows = []
    for seq_len in args.seq_lens or [8192, 16384, 32768]:
        torch.manual_seed(0)
        query, key, value = (torch.randn(1, 32, seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        group = seq_len // 4
        impls = {
            "full": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "s2_sdpa": lambda q, k, v: shifted_sparse_attention(q, k, v, group),
        }
        if flash_attn_available():
            impls["s2_flash"] = lambda q, k, v: shifted_sparse_attention_varlen(q, k, v, group)
        row = {"seq_len": seq_len}
        outputs = {}
        for name, attend in impls.items():
            q, k, v = (t.detach().requires_grad_() for t in (query, key, value))

            def step():
                attend(q, k, v).float().square().mean().backward()

            step()  # warm-up
            torch.cuda.reset_peak_memory_stats()
            row[f"{name}_seconds"] = timed(torch, step)
            row[f"{name}_peak_gib"] = cuda_memory(torch)
            with torch.no_grad():
                outputs[name] = attend(query, key, value).float()
        # S²-Attn with groups of twice the length is full attention (every head sees its whole causal prefix)
        with torch.no_grad():
            whole = shifted_sparse_attention(query, key, value, 2 * seq_len).float()
            row["s2_whole_group_vs_full_max_abs"] = float((whole - outputs["full"]).abs().max())
            if "s2_flash" in outputs:
                row["s2_flash_vs_sdpa_max_abs"] = float((outputs["s2_flash"] - outputs["s2_sdpa"]).abs().max())
                flash_whole = shifted_sparse_attention_varlen(query, key, value, 2 * seq_len).float()
                row["s2_flash_whole_group_vs_full_max_abs"] = float((flash_whole - outputs["full"]).abs().max())
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"flash_attn": flash_attn_available(), "rows": rows}


def train_part(args) -> dict:
    """One LoRA+ optimizer step with S²-Attn (flash when installed), gradient checkpointing, chunked loss."""
    import torch

    from longctx.attention import enable_s2_attn, flash_attn_available
    from longctx.loss import causal_lm_loss
    from longctx.lora import count_parameters, setup_lora

    seq_lens = args.seq_lens or [16384, 32768]
    began = time.perf_counter()
    model = build_llama2_7b(torch, args.layers, context_size=max(seq_lens))
    build_seconds = time.perf_counter() - began
    enable_s2_attn(model, group_size_ratio=0.25, use_flash_attn=flash_attn_available())
    model = setup_lora(model, r=8, alpha=16, trainable_params="embed,norm")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)

    def step(seq_len: int) -> float:
        input_ids = torch.randint(3, 32000, (1, seq_len), device="cuda", generator=torch.Generator("cuda").manual_seed(seq_len))
        loss_sum, count = causal_lm_loss(model, input_ids, input_ids)
        loss = loss_sum / count
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step(1024)  # warm-up: kernels, optimizer state
    rows = []
    for seq_len in seq_lens:
        torch.cuda.reset_peak_memory_stats()
        losses = []
        seconds = timed(torch, lambda: losses.append(step(seq_len)))  # noqa: B023
        rows.append({"seq_len": seq_len, "seconds": seconds, "peak_gib": cuda_memory(torch), "loss": losses[0]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {
        "layers": args.layers, "flash_attn": flash_attn_available(), "build_seconds": build_seconds,
        "trainable_parameters": trainable, "parameters": total, "rows": rows,
    }


def dca_part(args) -> dict:
    """Prefill (decoder only, no logits) with Dual Chunk Attention against SDPA; the first block must agree."""
    import torch

    from longctx.chunk_attention import disable_dual_chunk_attention, enable_dual_chunk_attention
    from longctx.loss import final_hidden_states

    seq_len = args.seq_len or 32768
    model = build_llama2_7b(torch, args.layers).eval()
    input_ids = torch.randint(3, 32000, (1, seq_len), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    result = {"seq_len": seq_len, "layers": args.layers, "pretraining_length": 4096}
    hidden = {}
    with torch.no_grad():
        for name in ("sdpa", "dca"):
            if name == "dca":
                enable_dual_chunk_attention(model, 4096)
            else:
                disable_dual_chunk_attention(model)
            final_hidden_states(model, input_ids=input_ids[:, :2048])  # warm-up
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            began = time.perf_counter()
            hidden[name] = final_hidden_states(model, input_ids=input_ids)
            torch.cuda.synchronize()
            result[f"{name}_seconds"] = time.perf_counter() - began
            result[f"{name}_peak_gib"] = cuda_memory(torch)
        block = model.config.dual_chunk_attention["chunk_size"] - model.config.dual_chunk_attention["local_window"]
        first = (hidden["dca"][:, :block].float() - hidden["sdpa"][:, :block].float()).abs().max()
        result["first_block_max_abs_diff"] = float(first)
        result["first_block_scale"] = float(hidden["sdpa"][:, :block].float().abs().max())
        result["dca_over_sdpa"] = result["dca_seconds"] / result["sdpa_seconds"]
    return result


def qlora_part(args) -> dict:
    """LongQLoRA's setup on a Llama-2-7B-shaped model: NF4 base (double quantization), bfloat16 compute,
    S²-Attn LoRA+ step; the random model is saved once to local disk so it loads through bitsandbytes."""
    import torch

    from longctx.attention import enable_s2_attn, flash_attn_available
    from longctx.loss import causal_lm_loss
    from longctx.lora import setup_lora
    from longctx.modeling import quantization_config_4bit

    from transformers import AutoModelForCausalLM

    seq_len = args.seq_len or 16384
    result = {"seq_len": seq_len, "layers": args.layers}
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        began = time.perf_counter()
        model = build_llama2_7b(torch, args.layers, context_size=seq_len)
        model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        result["save_seconds"] = time.perf_counter() - began
        torch.cuda.reset_peak_memory_stats()
        model = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=quantization_config_4bit("bfloat16"), dtype=torch.bfloat16, device_map={"": 0}
        )
        result["load_peak_gib"] = cuda_memory(torch)
    enable_s2_attn(model, group_size_ratio=0.25, use_flash_attn=flash_attn_available())
    model = setup_lora(model, r=8, alpha=16, trainable_params="embed,norm")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)

    def step(length: int):
        input_ids = torch.randint(3, 32000, (1, length), device="cuda", generator=torch.Generator("cuda").manual_seed(length))
        loss_sum, count = causal_lm_loss(model, input_ids, input_ids)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(1024)
    torch.cuda.reset_peak_memory_stats()
    result["step_seconds"] = timed(torch, lambda: step(seq_len))
    result["step_peak_gib"] = cuda_memory(torch)
    return result


def merge_part(args) -> dict:
    """One JSON: every part's result (or its exit status and the tail of its log), and the pytest summary."""
    parts = Path(args.parts)
    merged = {"parts": {}}
    for path in sorted(parts.glob("*.status")):
        name = path.stem
        status = path.read_text().strip()
        entry = {"exit_status": int(status) if status.lstrip("-").isdigit() else status}
        result = parts / f"{name}.json"
        if result.is_file() and result.stat().st_size:
            try:
                entry["result"] = json.loads(result.read_text())
            except json.JSONDecodeError:
                entry["result_unreadable"] = True
        log = parts / f"{name}.log"
        if log.is_file() and entry["exit_status"] != 0:
            entry["log_tail"] = log.read_text(errors="replace")[-4000:]
        if entry["exit_status"] == 124:
            entry["timed_out"] = True
        merged["parts"][name] = entry
    info = parts / "machine.json"
    if info.is_file():
        merged["machine"] = json.loads(info.read_text())
    return merged


def main(argv=None):
    args = parse_args(argv)
    if args.part == "merge":
        result = merge_part(args)
    else:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"gpu_check.py {args.part}: no CUDA device")
        result = {"attention": attention_part, "train": train_part, "dca": dca_part, "qlora": qlora_part}[args.part](args)
        result["device"] = torch.cuda.get_device_name()
    text = json.dumps(result, indent=2)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
