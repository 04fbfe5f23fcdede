"""The evaluation scripts' groups: perplexity (eval.py, eval_distributed.py), retrieval (passkey_retrivial.py,
needle_in_haystack.py) and RULER (ruler.py)."""

from __future__ import annotations

from dataclasses import dataclass

from longctx.args.fields import help_field, parse_depths, parse_positive_ints
from longctx.args.loading import InferenceModelArguments
from longctx.errors import check_choice
from longctx.evaluation import SCORINGS
from longctx.token_files import check_token_dtype


@dataclass
class PerplexityArguments(InferenceModelArguments):
    """eval.py and eval_distributed.py: perplexity at one or several lengths (LongLoRA's flags first)."""

    seq_len: str = help_field("evaluation length(s) in tokens, comma-separated for several: 2048,4096,8192", default="2048")
    batch_size: int = help_field("windows per forward pass", default=1)
    data_path: str | None = help_field(
        "token .bin (uint16) / .u32.bin, or .txt files/folders, .jsonl (text field); comma-separated for several "
        "(default: the bundled held-out book data/pg19_eval)",
        default=None,
    )
    token_dtype: str | None = help_field("dtype of .bin token files: uint16 or uint32 (default: from the suffix)", default=None)
    scoring: str = help_field(
        "longlora: windows every --sliding_window tokens, all tokens of each scored, mean of window losses "
        "(LongLoRA's eval.py); strided: each token scored once, with up to seq_len - 1 tokens of context",
        default="longlora",
    )
    sliding_window: int = help_field("stride between window starts in tokens (LongLoRA's and LongQLoRA's 256)", default=256)
    max_tokens: int | None = help_field("use only the first N tokens of the data (bounds the work)", default=None)
    output_json: str | None = help_field("write the results (config, per-length figures, timings) to this JSON file", default=None)
    plot: str | None = help_field("PNG of perplexity against length (default: beside --output_json)", default=None)
    overwrite: bool = help_field("replace --output_json and --plot when they already exist", default=False)
    progress_bar_fresh_rate: int = help_field("refresh the progress bar every N windows (LongLoRA's eval_distributed.py flag)", default=1)

    def __post_init__(self):
        super().__post_init__()
        self.seq_lens = parse_positive_ints("--seq_len", self.seq_len)
        if self.progress_bar_fresh_rate <= 0:
            raise ValueError(f"--progress_bar_fresh_rate must be positive (got {self.progress_bar_fresh_rate})")
        if self.context_size is not None and self.seq_lens[-1] > self.context_size:
            raise ValueError(f"--seq_len {self.seq_lens[-1]} exceeds --context_size {self.context_size}")
        check_choice("--scoring", self.scoring, SCORINGS)
        if self.batch_size <= 0:
            raise ValueError(f"--batch_size must be positive (got {self.batch_size})")
        if self.sliding_window <= 0:
            raise ValueError(f"--sliding_window must be positive (got {self.sliding_window})")
        if self.scoring == "strided" and self.sliding_window >= self.seq_lens[0]:
            raise ValueError(
                f"--sliding_window {self.sliding_window} must be below --seq_len {self.seq_lens[0]} with --scoring "
                "strided (a window's first token is context only)"
            )
        check_token_dtype(self.token_dtype)
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"--max_tokens must be at least 2 (got {self.max_tokens})")


@dataclass
class RetrievalArguments(InferenceModelArguments):
    """passkey_retrivial.py and needle_in_haystack.py: retrieval accuracy by prompt length (LongLoRA's flags)."""

    max_tokens: int = help_field("longest prompt in tokens; lengths are --interval, 2 x --interval, ... up to it", default=8192)
    interval: int = help_field("step between tested prompt lengths in tokens", default=1024)
    num_tests: int = help_field("tests per length (per length and depth with --depths), each with its own key", default=10)
    depths: str | None = help_field(
        "depths of the key in percent of the context, comma-separated, e.g. 0,25,50,75,100 (default: random)",
        default=None,
    )
    seed: int = help_field("seed of the keys and random depths", default=0)
    output_json: str | None = help_field("write the results (config, accuracy per length, every answer) to this JSON file", default=None)
    plot: str | None = help_field("PNG of accuracy against length, or depth x length heatmap (default: beside --output_json)", default=None)
    overwrite: bool = help_field("replace --output_json and --plot when they already exist", default=False)

    def __post_init__(self):
        super().__post_init__()
        if self.interval <= 0:
            raise ValueError(f"--interval must be positive (got {self.interval})")
        if self.max_tokens < self.interval:
            raise ValueError(f"--max_tokens {self.max_tokens} is below --interval {self.interval}: no length to test")
        if self.num_tests <= 0:
            raise ValueError(f"--num_tests must be positive (got {self.num_tests})")
        self.depth_fractions = parse_depths("--depths", self.depths)
        self.lengths = list(range(self.interval, self.max_tokens + 1, self.interval))


@dataclass
class NeedleArguments(RetrievalArguments):
    """needle_in_haystack.py: a needle sentence at fixed depths of real text (LongAlign's and ChunkLlama's test)."""

    num_tests: int = help_field("haystacks per length and depth (each starts at another place in the books)", default=1)
    depths: str | None = help_field("needle depths in percent of the context, comma-separated", default="0,10,20,30,40,50,60,70,80,90,100")
    haystack: str | None = help_field(
        ".txt files or folders of real text (default: the bundled held-out book data/pg19_eval)", default=None
    )
    needle: str = help_field(
        "the sentence hidden in the text",
        default="The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
    )
    question: str = help_field("the question asked after the text", default="What is the best thing to do in San Francisco?")
    answer: str = help_field("the answer that must appear in the reply (case and punctuation aside)", default="Dolores Park")
    answer_prefix: str = help_field("start of the reply, written for the model", default="The best thing to do in San Francisco is")

    def __post_init__(self):
        super().__post_init__()
        if self.depth_fractions is None:
            raise ValueError("--depths must name at least one depth for the needle test")
        if not self.answer.strip() or self.answer.lower() not in self.needle.lower():
            raise ValueError(f"--answer {self.answer!r} must be a non-empty part of --needle")


@dataclass
class RulerArguments(InferenceModelArguments):
    """ruler.py: RULER's 13 synthetic tasks by length, and the effective context length."""

    lengths: str = help_field(
        "lengths in tokens, prompt plus generation budget as RULER counts them, comma-separated",
        default="2048,4096,8192",
    )
    tasks: str = help_field(
        "tasks, families (retrieval, multi_hop, aggregation, qa) or all, comma-separated, e.g. niah_single_1,vt",
        default="all",
    )
    num_samples: int = help_field("samples per task and length (RULER's default: 500)", default=10)
    batch_size: int = help_field(
        "prompts of one task and length generated together, left-padded (1 with --dca); a padded batch loses SDPA's "
        "causal kernel, so 1 is fastest on CPU; larger may pay on GPUs",
        default=1,
    )
    threshold: float = help_field(
        "average score a length must keep to count as effective (RULER's 85.6: Llama-2-7B at 4k)", default=85.6
    )
    haystack: str | None = help_field(
        ".txt files or folders for the essay haystacks and QA passages (default: the held-out book data/pg19_eval)",
        default=None,
    )
    seed: int = help_field("seed of every sample (keys, values, depths, words)", default=0)
    output_json: str | None = help_field(
        "write scores, averages, effective lengths and every reply to this JSON file", default=None
    )
    plot: str | None = help_field("PNG heatmap of scores, tasks x lengths (default: beside --output_json)", default=None)
    overwrite: bool = help_field("replace --output_json and --plot when they already exist", default=False)
    resume: bool = help_field(
        "go on from --output_json's results (written after each task at each length): samples answered with the same "
        "model, RoPE and seed are kept; more tasks, lengths or samples may be added",
        default=False,
    )

    def __post_init__(self):
        from longctx.ruler_tasks import select_tasks

        super().__post_init__()
        self.target_lengths = parse_positive_ints("--lengths", self.lengths)
        self.task_names = select_tasks(self.tasks)
        if self.num_samples <= 0:
            raise ValueError(f"--num_samples must be positive (got {self.num_samples})")
        if self.batch_size <= 0:
            raise ValueError(f"--batch_size must be positive (got {self.batch_size})")
        if not 0 < self.threshold <= 100:
            raise ValueError(f"--threshold must be in (0, 100] (got {self.threshold})")
        if self.resume and not self.output_json:
            raise ValueError("--resume goes on from --output_json's results: name the file")
