"""Pickles are read statically and refused unless they hold data only; loads run with the weights-only unpickler."""

import os
import pickle

import numpy as np
import pytest
import torch

from longctx.pickles import check_checkpoint_pickles, check_pickle, safe_unpickling


class RunsCode:
    """Unpickling this touches a file: what a crafted checkpoint would do with a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_files(folder, marker):
    """The same payload as torch.save's zip format and as a raw pickle (what DeepSpeed read as "Invalid magic number")."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"module": RunsCode(marker)}, folder / "zip.pt")
    (folder / "raw.pt").write_bytes(pickle.dumps(RunsCode(marker)))
    return folder / "zip.pt", folder / "raw.pt"


def test_code_in_a_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    zipped, raw = crafted_files(tmp_path / "files", marker)
    with pytest.raises(ValueError, match="refusing to load .*zip.pt: it names io.open, not a tensor or plain data"):
        check_pickle(zipped)
    with pytest.raises(ValueError, match="cannot read .*raw.pt: not a file torch.save wrote"):
        check_pickle(raw)
    with safe_unpickling(), pytest.raises(pickle.UnpicklingError):  # a library asking for weights_only=False
        torch.load(raw, weights_only=False)
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # restored


def test_tensors_rng_states_and_deepspeed_records_pass(tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    state = {"weight": torch.ones(2), "numpy": np.random.get_state(), "scaler": LossScaler(1.0), "stage": ZeroStageEnum.gradients}
    torch.save(state, tmp_path / "optim_states.pt")
    check_pickle(tmp_path / "optim_states.pt")
    with safe_unpickling():
        loaded = torch.load(tmp_path / "optim_states.pt", weights_only=False)
    assert loaded["stage"] == ZeroStageEnum.gradients and torch.equal(loaded["weight"], state["weight"])


def test_a_checkpoint_folder_is_checked_with_its_deepspeed_folders(tmp_path):
    checkpoint = tmp_path / "checkpoint-1"
    (checkpoint / "global_step1").mkdir(parents=True)
    torch.save({"step": 1}, checkpoint / "global_step1" / "mp_rank_00_model_states.pt")
    (checkpoint / "training_args.bin").write_bytes(pickle.dumps(RunsCode(tmp_path / "ran")))  # never loaded: not checked
    (checkpoint / "latest").write_text("global_step1")
    check_checkpoint_pickles(checkpoint)
    (checkpoint / "latest").write_text("../../elsewhere")
    with pytest.raises(ValueError, match="latest names '../../elsewhere', not a DeepSpeed folder inside"):
        check_checkpoint_pickles(checkpoint)
    (checkpoint / "latest").write_text("global_step1")
    torch.save({"module": RunsCode(tmp_path / "ran")}, checkpoint / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(ValueError, match="refusing to load .*optim_states.pt"):
        check_checkpoint_pickles(checkpoint)
    (checkpoint / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    truncated = (checkpoint / "global_step1" / "mp_rank_00_model_states.pt").read_bytes()[:-40]
    (checkpoint / "global_step1" / "mp_rank_00_model_states.pt").write_bytes(truncated)
    with pytest.raises(ValueError, match="cannot read .*mp_rank_00_model_states.pt: not a file torch.save wrote, or damaged"):
        check_checkpoint_pickles(checkpoint)
    assert not (tmp_path / "ran").exists()


def test_a_model_folder_with_a_crafted_weights_file_is_refused(tmp_path):
    from longctx.modeling import resolve_model_path

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    zipped, _ = crafted_files(tmp_path / "crafted", tmp_path / "ran")
    zipped.rename(tmp_path / "model" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to load .*pytorch_model.bin"):
        resolve_model_path(str(tmp_path / "model"))
    assert not (tmp_path / "ran").exists()
