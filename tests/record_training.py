"""Run a training script as a user would (alone or under torchrun), recording what tests compare.

    python tests/record_training.py RECORD.pt fine-tune.py --model_name_or_path ... (script arguments)

Rank 0 writes RECORD.pt: `losses`, the loss of every micro-batch as the Trainer gets it, and
`gradients`, per optimizer step the whole gradient of every trainable weight, by name. Under DeepSpeed
the gradients are read just before the engine's step (they are reduced by then, and gone after);
otherwise just before the optimizer's step.
"""

import runpy
import sys

import torch
from transformers import TrainerCallback

import longctx.trainer

RECORD = {"losses": [], "gradients": []}
RECORD_PATH = sys.argv[1]


def trainable_gradients(model, deepspeed: bool) -> dict:
    if deepspeed:
        from deepspeed.utils import safe_get_full_grad
    gradients = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            gradient = safe_get_full_grad(parameter) if deepspeed else parameter.grad
            gradients[name] = gradient.detach().float().cpu().clone()
    return gradients


class Recorder(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not args.deepspeed:
            RECORD["gradients"].append(trainable_gradients(model, deepspeed=False))

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            torch.save(RECORD, RECORD_PATH)


def record_deepspeed_steps() -> None:
    from deepspeed.runtime.engine import DeepSpeedEngine

    step = DeepSpeedEngine.step

    def recording_step(engine, *args, **kwargs):
        if engine.is_gradient_accumulation_boundary():
            RECORD["gradients"].append(trainable_gradients(engine.module, deepspeed=True))
        return step(engine, *args, **kwargs)

    DeepSpeedEngine.step = recording_step


def main():
    trainer_class = longctx.trainer.LongContextTrainer
    init, training_step = trainer_class.__init__, trainer_class.training_step

    def recording_init(trainer, *args, **kwargs):
        init(trainer, *args, **kwargs)
        trainer.add_callback(Recorder(trainer))
        if trainer.is_deepspeed_enabled:
            record_deepspeed_steps()

    def recording_training_step(trainer, *args, **kwargs):
        loss = training_step(trainer, *args, **kwargs)
        RECORD["losses"].append(float(loss))
        return loss

    trainer_class.__init__, trainer_class.training_step = recording_init, recording_training_step
    script = sys.argv[2]
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(script, run_name="__main__")  # launched from the repository root


if __name__ == "__main__":
    main()
