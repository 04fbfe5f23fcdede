"""Accuracy on held-out long-document questions: greedy answers, scored by their short answer key.

The records are those of `python -m longctx.build_qa_data` (LongAlpaca `instruction`/`output` plus an
`answer` key); a reply is right when it holds the key as whole words (case and punctuation aside,
`longctx.retrieval.answer_correct`). Prompts are rendered exactly as in training
(`longctx.sft_data.prompt_token_ids`), so the check reads the model in the format it was tuned in.

supervised-fine-tune.py runs it before and after training; on its own, base model vs adapter:

    python -m longctx.qa_accuracy --eval_data_path outputs/sft-data/heldout.json --context_size 16384
    python -m longctx.qa_accuracy --eval_data_path outputs/sft-data/heldout.json --context_size 16384 \\
        --peft_model outputs/smollm2-16k-sft --output_json outputs/smollm2-16k-sft/heldout-accuracy.json
"""

from __future__ import annotations

import time

from longctx.args import QAAccuracyArguments, QACheckArguments
from longctx.cli import parse_dataclasses, run_cli
from longctx.io import write_json_atomic
from longctx.modeling import load_tokenizer, resolve_model_path
from longctx.outputs import check_output_file
from longctx.prompts import usable_template
from longctx.qa_data import load_questions, qa_accuracy
from longctx.reading_model import load_for_inference


def main():
    model_args, check_args = parse_dataclasses((QAAccuracyArguments, QACheckArguments), __doc__)
    if not check_args.eval_data_path:
        raise ValueError("--eval_data_path is required: held-out questions from python -m longctx.build_qa_data")
    inputs = {"--eval_data_path": check_args.eval_data_path}
    check_output_file("--output_json", model_args.output_json, inputs, model_args.overwrite)
    tokenizer = load_tokenizer(resolve_model_path(model_args.base_model, model_args.cache_dir), model_args.cache_dir)
    template = usable_template(tokenizer, model_args.prompt_template)
    questions = load_questions(check_args.eval_data_path, check_args.eval_samples, template)
    longest = max(len(message["content"]) for conversation, _ in questions for message in conversation.messages) // 3
    model, tokenizer = load_for_inference(model_args.reading_model(longest))  # longest: ~tokens, generous
    began = time.perf_counter()
    result = qa_accuracy(model, tokenizer, questions, template, check_args.eval_max_new_tokens)
    result.update(
        base_model=model_args.base_model,
        peft_model=model_args.peft_model,
        context_size=model_args.context_size,
        data_path=check_args.eval_data_path,
        seconds=time.perf_counter() - began,
    )
    if model_args.output_json:
        write_json_atomic(model_args.output_json, result)
    print(f"accuracy {result['correct']}/{result['questions']} = {result['accuracy']:.2f} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    run_cli(main)
