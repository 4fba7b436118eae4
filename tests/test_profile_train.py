"""bench/profile_train.py on the CPU: it runs the real step runner and accounts for the step's time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import profile_train  # noqa: E402


def test_profile_train_accounts_for_a_static_gradaug_step(tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = profile_train.main(["--device", "cpu", "--arch", "wrn-10-1", "--batch-size", "8", "--pool", "64",
                             "--warmup", "1", "--steps", "2", "--profile-steps", "1", "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["mode"] == "static" and r["method"] == "gradaug"
    assert set(r["parts_ms"]) == {"full", "sub 32px", "sub 28px", "sub 24px", "update"}
    assert all(v > 0 for v in r["parts_ms"].values())
    # the parts add up to about one step (the step also draws its plan and fills its inputs)
    assert 0.5 < sum(r["parts_ms"].values()) / r["step_ms"] < 2.0
    assert r["kinds_ms"]["convolution"] == max(r["kinds_ms"].values())   # a CNN step on a CPU is its convolutions
    assert r["top"] and all(t["ms"] > 0 for t in r["top"])
    assert "convolution" in capsys.readouterr().out


@pytest.mark.parametrize("args, says", [(["--mode", "graphs"], "needs --device cuda"), (["--mode", "fast"], "unknown --mode")])
def test_profile_train_refuses_what_cannot_run(args, says, capsys):
    assert profile_train.main(["--device", "cpu", *args]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("name, kind", [
    # CUDA kernel names from H100 profiles (2026-11-27): torch's native batch norm, cuDNN's (the -fp16 modes),
    # cuDNN's convolutions
    ("void at::native::batch_norm_collect_statistics_channels_last_kernel<at::native::Var, c10::BFloat16, float, 4>",
     "batch norm"),
    ("void cudnn::bn_fw_tr_1C11_singleread_spec<__half, 512, true, 1, 2, 0>", "batch norm"),
    ("void cudnn::bn_bw_1C11_singleread_specialized<__half, 512, 1, 2, 0>", "batch norm"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x64x32_execute_kernel__5x_cudnn",
     "convolution"),
    ("aten::cudnn_convolution", "convolution"),
    ("aten::cudnn_batch_norm", "batch norm"),
])
def test_kernel_kinds_tell_cudnn_batch_norm_from_convolution(name, kind):
    assert profile_train.kind_of(name) == kind
