"""The sentence splitter an Argos Translate package carries: a MiniSBD model that never splits.

argos-translate (LibreTranslate's fork ``argos-translate-lt`` 1.12 and ``argostranslate``
1.11) splits each input line into sentences with MiniSBD before translating, and MiniSBD
downloads a per-language ONNX model from GitHub on first use unless the package carries
one in ``minisbd/*.onnx``. Its no-splitting option (``ARGOS_CHUNK_TYPE=NONE``) is not
implemented there: the package is skipped. So every package carries this model, and
nothing is downloaded at run time.

It splits nothing, on purpose: our models were trained on one segment per line and our
own API (``fairseq_taskmoe.serve``) translates each line as one segment, so a line must
reach the model whole for LibreTranslate to return what our API returns. argos still
splits on newlines (one paragraph per line), as our API takes one sentence per line.

What MiniSBD reads (``minisbd.inference.create_session`` / ``output_predictions``):
inputs ``units`` int64 (B, T) character ids and ``features`` float32 (B, T, F), output
(B, T, C) logits over C=5 classes (0 inside a token, 1 token end, 2 sentence end, 3 / 4
multi-word token variants), argmax taken; metadata ``config`` (JSON, ``no_ssplit``: never
end a sentence), ``vocab`` (a character vocabulary's state dict) and ``lexicon``. The
graph here outputs class 1 for every character (each character its own token) and
``no_ssplit`` is set, so the sentence is the line from its first to its last
non-space character. The ONNX protobuf is written by hand (``protowire.py``) (no ``onnx`` package
needed to build a package); tests decode it back and, in LibreTranslate's environment,
run it through MiniSBD itself.

Legend: B paragraphs, T characters, C = 5 classes.
"""

import json
import struct

from fairseq_taskmoe.extract.protowire import bytes_field as _bytes, int_field as _int

FILE_NAME = "nosplit.onnx"
N_CLASSES = 5
TOKEN_END = 1
IR_VERSION = 8
OPSET = 13
FLOAT, INT64 = 1, 7  # onnx.TensorProto data types

CONFIG = {"no_ssplit": True, "skip_newline": False, "max_seqlen": 1000, "batch_size": 1,
          "feat_funcs": [], "use_dictionary": False, "num_dict_feat": 0}
VOCAB = {"lang": "", "idx": 0, "cutoff": 0, "lower": False,
         "_unit2id": {"<PAD>": 0, "<UNK>": 1}, "_id2unit": ["<PAD>", "<UNK>"]}


def _tensor(name: str, dtype: int, dims, values) -> bytes:
    """TensorProto: dims=1, data_type=2, name=8, raw_data=9 (little-endian)."""
    raw = struct.pack("<%d%s" % (len(values), "f" if dtype == FLOAT else "q"), *values)
    return b"".join(_int(1, d) for d in dims) + _int(2, dtype) + _bytes(8, name) + _bytes(9, raw)


def _value_info(name: str, dtype: int, dims) -> bytes:
    """ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1, shape=2}}};
    a str dim is symbolic (dim_param=2), an int fixed (dim_value=1)."""
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, _int(1, dtype) + _bytes(2, shape)))


def _node(op: str, inputs, outputs, attributes=b"") -> bytes:
    """NodeProto: input=1, output=2, name=3, op_type=4, attribute=5."""
    return (b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
            + _bytes(3, outputs[0]) + _bytes(4, op) + attributes)


def nosplit_model_bytes(lang_code: str = "xx") -> bytes:
    """The ONNX model (opset 13): logits (B, T, C) = 0 * float(units)[..., None] + onehot(TOKEN_END)."""
    cast_to_float = _bytes(5, _bytes(1, "to") + _int(3, FLOAT) + _int(20, 2))  # AttributeProto INT
    nodes = [
        _node("Cast", ["units"], ["units_f"], cast_to_float),          # (B, T) float
        _node("Unsqueeze", ["units_f", "axes"], ["units_3d"]),          # (B, T, 1)
        _node("Mul", ["units_3d", "zero"], ["zeros"]),                  # (B, T, 1) all 0
        _node("Add", ["zeros", "class_bias"], ["logits"]),              # (B, T, C)
    ]
    bias = [1.0 if c == TOKEN_END else 0.0 for c in range(N_CLASSES)]
    initializers = [_tensor("axes", INT64, [1], [2]), _tensor("zero", FLOAT, [], [0.0]),
                    _tensor("class_bias", FLOAT, [N_CLASSES], bias)]
    graph = (b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "minisbd_nosplit")
             + b"".join(_bytes(5, t) for t in initializers)
             + _bytes(11, _value_info("units", INT64, ["B", "T"]))
             + _bytes(11, _value_info("features", FLOAT, ["B", "T", "F"]))
             + _bytes(12, _value_info("logits", FLOAT, ["B", "T", N_CLASSES])))
    metadata = {"lang_code": lang_code, "config": json.dumps(CONFIG), "vocab": json.dumps(VOCAB),
                "lexicon": "null"}
    return (_int(1, IR_VERSION) + _bytes(2, "fairseq_taskmoe") + _bytes(7, graph)
            + _bytes(8, _int(2, OPSET))  # OperatorSetIdProto{domain "" (default), version}
            + b"".join(_bytes(14, _bytes(1, k) + _bytes(2, v)) for k, v in metadata.items()))
