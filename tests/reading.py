"""The answer inference.py and demo.py must give, computed by hand with the same prompt and sampling."""

import torch

from longctx.material import fit_material
from longctx.reading_model import ReadingModel, load_for_inference


def expected_answer(model_dir, material: str, question: str, window: int, max_gen_len: int, seed: int):
    """(answer, prompt length): the material prompt sampled at the scripts' defaults (temperature 0.6, top-p 0.9)."""
    # RoPE scaled as the scripts do
    model, tokenizer = load_for_inference(ReadingModel(str(model_dir), context_size=window))
    prompt = torch.tensor([fit_material(tokenizer, material, question, window=window, max_gen_len=max_gen_len).input_ids])
    torch.manual_seed(seed)
    output = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        max_new_tokens=max_gen_len,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True), prompt.shape[1]
