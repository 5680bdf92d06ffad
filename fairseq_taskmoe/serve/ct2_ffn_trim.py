"""Trim the stock format's FFN zero padding from a converted CTranslate2 model spec.

Legend: D model dim, W padded FFN width (the side's widest layer), F a layer's real width.

A stock fairseq transformer has one FFN width per side, so the stock extract pads every
narrower dense layer with zero units up to the fused top-k width (``extract/stock.py``,
``fuse.pad_dense_ffn`` appends them after the real units). CTranslate2 takes each layer's
FFN width from its weight shapes (``TransformerSpec`` has no FFN width in its config), so
the converted spec can drop those units layer by layer. Exact: a padding unit j has a zero
fc1 row and bias and a zero fc2 column, so its output fc2[:, j] * act(0) is zero for any
finite activation (act(0) is 0 anyway for relu, gelu, gelu-tanh and swish).

Which units are padding: the stock extract's record (``stock_overhead[side]
["layer_widths_before_padding"]``) when the caller has it, checked against the weights
(the dropped units must be exactly zero); otherwise the trailing run of units whose fc1
row, fc1 bias and fc2 column are all exactly zero (trained units are never exactly zero).
"""

from typing import Dict, List, Optional

import numpy as np

SIDES = ("encoder", "decoder")


def zero_tail(fc1_w: np.ndarray, fc1_b: np.ndarray, fc2_w: np.ndarray) -> int:
    """Real width F of an FFN: W minus its trailing units with zero fc1 row, fc1 bias, fc2 column.

    Args: fc1_w (W, D), fc1_b (W,), fc2_w (D, W). At least one unit is kept.
    """
    unit_zero = ~(fc1_w != 0).any(axis=1) & (fc1_b == 0) & ~(fc2_w != 0).any(axis=0)  # (W,)
    width = unit_zero.shape[0]
    while width > 1 and unit_zero[width - 1]:
        width -= 1
    return width


def check_padding(fc1_w, fc1_b, fc2_w, width: int, where: str) -> None:
    """Raise unless units ``width:`` (the recorded padding) are exactly zero in all three tensors."""
    if not 0 < width <= fc1_w.shape[0]:
        raise RuntimeError(f"{where}: recorded FFN width {width} does not fit the converted "
                           f"width {fc1_w.shape[0]}")
    if (fc1_w[width:] != 0).any() or (fc1_b[width:] != 0).any() or (fc2_w[:, width:] != 0).any():
        raise RuntimeError(f"{where}: units {width}:{fc1_w.shape[0]} are recorded as padding "
                           "but are not all zero; not trimming a real unit")


def trim_ffn_spec(ffn, width: int) -> None:
    """Keep the first ``width`` units of a ``FeedForwardSpec`` (fc1 = linear_0, fc2 = linear_1)."""
    ffn.linear_0.weight = np.ascontiguousarray(ffn.linear_0.weight[:width])  # (F, D)
    ffn.linear_0.bias = np.ascontiguousarray(ffn.linear_0.bias[:width])  # (F,)
    ffn.linear_1.weight = np.ascontiguousarray(ffn.linear_1.weight[:, :width])  # (D, F)


def trim_spec(spec, known_widths: Optional[Dict[str, List[int]]] = None) -> dict:
    """Trim the FFN padding of every layer of a ``TransformerSpec`` in place.

    Args:
        spec: the spec ``FairseqConverter`` built (float32 numpy weights, before quantization).
        known_widths: {side: real FFN width per layer}, the stock extract's record; None to
            find the padding from the weights (``zero_tail``).
    Returns:
        the metadata for extract.json: how padding was found and, per side, the FFN width
        per layer after trimming and the units trimmed per layer.
    """
    report = {"padding_from": "stock_overhead" if known_widths is not None else "zero_units"}
    for side in SIDES:
        layers = getattr(spec, side).layer
        widths, trimmed = [], []
        for i, layer in enumerate(layers):
            ffn = layer.ffn
            if hasattr(ffn, "linear_0_noact"):  # gated FFN: not what the fairseq converter builds
                raise RuntimeError(f"{side} layer {i}: gated FFN, trimming is not defined for it")
            fc1_w, fc1_b, fc2_w = ffn.linear_0.weight, ffn.linear_0.bias, ffn.linear_1.weight
            padded = fc1_w.shape[0]
            if known_widths is None:
                width = zero_tail(fc1_w, fc1_b, fc2_w)
            else:
                if len(known_widths[side]) != len(layers):
                    raise RuntimeError(f"{side}: {len(known_widths[side])} recorded FFN widths for "
                                       f"{len(layers)} converted layers")
                width = int(known_widths[side][i])
                check_padding(fc1_w, fc1_b, fc2_w, width, f"{side} layer {i}")
            if width < padded:
                trim_ffn_spec(ffn, width)
            widths.append(width)
            trimmed.append(padded - width)
        report[side] = {"ffn_widths": widths, "units_trimmed": trimmed}
    return report


def known_widths(stock_overhead: Optional[dict]) -> Optional[Dict[str, List[int]]]:
    """{side: real FFN width per layer} from extract.json's ``stock_overhead`` (None if absent)."""
    if not stock_overhead:
        return None
    return {side: list(stock_overhead.get(side, {}).get("layer_widths_before_padding", []))
            for side in SIDES}
