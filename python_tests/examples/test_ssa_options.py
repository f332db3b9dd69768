"""--ssa-backend and --ssa-fp32: which backend the SSA op runs on, and in which precision."""

from __future__ import annotations

import pytest
import torch

import examples.mtut_model as mm
from examples.mtut_model import MTUTModel, MTUTOutput, SSAConfig
from examples.train_nvgesture import main
from examples.training.config import build_parser, config_from_args


def _output(dtype: torch.dtype) -> tuple[MTUTOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    feats = {m: {"Mixed_5c": torch.randn(3, 8, 2, 2, 2, generator=g).to(dtype)} for m in ("rgb", "depth")}
    logits = {m: torch.randn(3, 25, generator=g) for m in ("rgb", "depth")}
    return MTUTOutput(logits, feats), torch.tensor([0, 1, 2])


@pytest.mark.parametrize("fp32,expected", [(True, torch.float32), (False, torch.bfloat16)])
def test_ssa_inputs_are_cast_to_float32_unless_asked(monkeypatch, fp32, expected):
    seen = {}

    def spy(feats, ce, **kw):
        seen["dtypes"] = {f.dtype for f in feats}
        seen["backend"] = kw["backend"]
        return torch.zeros(())

    monkeypatch.setattr(mm.mtut_ops, "ssa_loss", spy)
    model = MTUTModel(("rgb", "depth"), 25, width=0.125, ssa=SSAConfig(inputs_fp32=fp32, backend="reference"))
    out, y = _output(torch.bfloat16)  # what autocast hands the loss
    model.loss(out, y, ssa=True)
    assert seen == {"dtypes": {expected}, "backend": "reference"}


def test_backends_give_the_same_loss():
    out, y = _output(torch.float32)
    losses = {
        b: MTUTModel(("rgb", "depth"), 25, width=0.125, ssa=SSAConfig(backend=b)).loss(out, y, ssa=True).ssa
        for b in ("reference", "cpu")
    }
    assert losses["cpu"] > 0
    torch.testing.assert_close(losses["cpu"], losses["reference"], rtol=1e-5, atol=1e-7)


def test_ssa_backend_on_the_command_line(data_root, tmp_path, capsys):
    base = ["--data-root", str(data_root), "--out", str(tmp_path / "run"), "--preset", "cpu-small"]
    cfg = config_from_args(build_parser().parse_args([*base, "--ssa-backend", "reference", "--no-ssa-fp32"]))
    assert cfg.ssa_backend == "reference" and cfg.ssa_fp32 is False
    cfg = config_from_args(build_parser().parse_args([*base, "--ssa-backend", "auto"]))
    assert cfg.ssa_backend is None and cfg.ssa_fp32 is True
    with pytest.raises(SystemExit):
        main([*base, "--ssa-backend", "cuda", "--device", "cpu"])
    assert "--ssa-backend cuda: not available on cpu" in capsys.readouterr().err
