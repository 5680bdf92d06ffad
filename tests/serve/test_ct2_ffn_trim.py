"""The CTranslate2 export drops the stock format's FFN zero padding, exactly.

The toy model (transformer_taskmoe_tiny, D=64, F=128, top-2) has a dense layer 0 and a
task-routed MoE layer 1 on each side; its stock extract pads layer 0 from F to the fused
2F = 256. The export's equality with fairseq-generate (test_ctranslate2.py) runs on the
trimmed model; here: the shapes in model.bin, the metadata, both ways of finding the
padding, and a model with nothing to trim.
"""

import json

import numpy as np
import pytest
import torch

from fairseq_taskmoe.serve import ct2_ffn_trim
from fairseq_taskmoe.serve import ctranslate2_export as ct2_export
from serve_testlib import ct2_variable_shapes

D, F, K = 64, 128, 2  # transformer_taskmoe_tiny: embed dim, FFN width; top-2 fused MoE layers
SIDES = ("encoder", "decoder")


def ffn_shapes(model_dir, side, layer):
    shapes = ct2_variable_shapes(model_dir)
    prefix = f"{side}/layer_{layer}/ffn/"
    return (shapes[prefix + "linear_0/weight"], shapes[prefix + "linear_0/bias"],
            shapes[prefix + "linear_1/weight"])


@pytest.mark.parametrize("quant", ["float32", "int8"])
def test_export_runs_dense_layers_at_their_width(serve_extracts, quant):
    report = json.loads((serve_extracts[quant] / "extract.json").read_text())
    trim = report["ctranslate2"]["ffn_trim"]
    for side in SIDES:
        moe = {int(i) for i in report["moe_layout"].get(side, {})}
        assert moe == {1}, "the toy model has one MoE layer per side, layer 1"
        widths = [K * F if i in moe else F for i in range(2)]
        assert trim[side] == {"ffn_widths": widths, "units_trimmed": [K * F - w for w in widths]}
        assert widths == report["stock_overhead"][side]["layer_widths_before_padding"]
        for i, w in enumerate(widths):
            assert ffn_shapes(serve_extracts[quant], side, i) == ((w, D), (w,), (D, w))


def stock_state(serve_extracts):
    stock_dir = serve_extracts["stock"]
    state = torch.load(stock_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return state, json.loads((stock_dir / "extract.json").read_text())["stock_overhead"]


def export(state, dest, toy_data, stock_overhead=None):
    dest.mkdir()
    return ct2_export.convert(state, str(dest), str(toy_data), ["en-de"], "float32",
                              stock_overhead=stock_overhead)


def test_record_and_zero_detection_trim_the_same(serve_extracts, toy_data, tmp_path):
    """The stock extract's record of its padding and the zero units give the same model.bin,
    the one whose hypotheses test_ctranslate2.py checks against fairseq-generate."""
    state, overhead = stock_state(serve_extracts)
    by_record = export(state, tmp_path / "record", toy_data, overhead)
    by_zeros = export(state, tmp_path / "zeros", toy_data)
    assert by_record["ffn_trim"]["padding_from"] == "stock_overhead"
    assert by_zeros["ffn_trim"]["padding_from"] == "zero_units"
    for side in SIDES:
        assert by_record["ffn_trim"][side] == by_zeros["ffn_trim"][side]
        assert sum(by_record["ffn_trim"][side]["units_trimmed"]) == K * F - F
    model = (tmp_path / "record" / "model.bin").read_bytes()
    assert model == (tmp_path / "zeros" / "model.bin").read_bytes()
    assert model == (serve_extracts["float32"] / "model.bin").read_bytes()


def test_same_width_layers_trim_nothing(serve_extracts, toy_data, tmp_path):
    """Layer 0's padding filled with real (non-zero) units: every layer is 2F wide, nothing goes;
    a record that still calls those units padding is refused rather than trusted."""
    state, overhead = stock_state(serve_extracts)
    model = dict(state["model"])
    gen = torch.Generator().manual_seed(0)
    for side in SIDES:
        p = f"{side}.layers.0."
        for name in ("fc1.weight", "fc1.bias", "fc2.weight"):
            t = model[p + name].clone()
            pad = t[F:] if name.startswith("fc1") else t[:, F:]
            pad.copy_(torch.rand(pad.shape, generator=gen) + 0.1)
            model[p + name] = t
    state = dict(state, model=model)
    info = export(state, tmp_path / "uniform", toy_data)
    for side in SIDES:
        assert info["ffn_trim"][side] == {"ffn_widths": [K * F, K * F], "units_trimmed": [0, 0]}
        for i in range(2):
            assert ffn_shapes(tmp_path / "uniform", side, i) == ((K * F, D), (K * F,), (D, K * F))
    with pytest.raises(RuntimeError, match="encoder layer 0: units 128:256 are recorded as padding"):
        export(state, tmp_path / "lying-record", toy_data, overhead)


# --- trim_spec on a spec built by hand -------------------------------------------------------------


def toy_spec(widths, zero_from):
    """A 2+2 layer TransformerSpec whose FFN i has widths[i] units, zero from zero_from[i] on."""
    from ctranslate2.specs.transformer_spec import TransformerSpec

    spec = TransformerSpec.from_config((2, 2), num_heads=4)
    rng = np.random.default_rng(0)
    for side in SIDES:
        for layer, w, z in zip(getattr(spec, side).layer, widths, zero_from):
            fc1_w, fc1_b, fc2_w = (rng.standard_normal(s).astype(np.float32) for s in ((w, D), (w,), (D, w)))
            fc1_w[z:], fc1_b[z:], fc2_w[:, z:] = 0, 0, 0
            layer.ffn.linear_0.weight, layer.ffn.linear_0.bias = fc1_w, fc1_b
            layer.ffn.linear_1.weight = fc2_w
    return spec


def test_trim_spec_same_width_is_untouched():
    spec = toy_spec([96, 96], [96, 96])
    before = [getattr(spec, s).layer[i].ffn.linear_1.weight for s in SIDES for i in range(2)]
    report = ct2_ffn_trim.trim_spec(spec)
    assert report["encoder"] == report["decoder"] == {"ffn_widths": [96, 96], "units_trimmed": [0, 0]}
    after = [getattr(spec, s).layer[i].ffn.linear_1.weight for s in SIDES for i in range(2)]
    assert all(a is b for a, b in zip(before, after))


def test_trim_spec_needs_all_three_zero_and_only_trails():
    spec = toy_spec([96, 96], [40, 96])
    ffn = spec.encoder.layer[0].ffn
    ffn.linear_0.weight[10] = 0  # a zero unit among real ones stays
    ffn.linear_0.bias[10] = 0
    ffn.linear_1.weight[:, 10] = 0
    ffn1 = spec.encoder.layer[1].ffn
    ffn1.linear_0.weight[50:] = 0  # fc1 zero, fc2 not: not padding
    ffn1.linear_0.bias[50:] = 0
    x = np.random.default_rng(1).standard_normal((3, D)).astype(np.float32)

    def ffn_out(f):
        return np.maximum(x @ f.linear_0.weight.T + f.linear_0.bias, 0) @ f.linear_1.weight.T

    expected = ffn_out(ffn)
    report = ct2_ffn_trim.trim_spec(spec)
    assert report["encoder"] == {"ffn_widths": [40, 96], "units_trimmed": [56, 0]}
    assert ffn.linear_0.weight.shape == (40, D) and ffn.linear_1.weight.shape == (D, 40)
    assert ffn.linear_1.weight.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(ffn_out(ffn), expected, rtol=1e-5, atol=1e-6)
