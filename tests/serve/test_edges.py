"""The edges a new user hits (issue 23), one row per case: the input, the path (API or CLI),
and the expected outcome (a result, or an exit status and a message fragment).

CLI rows run ``fairseq-taskmoe-translate`` in-process through ``run_main`` (the console
script's error handling) except ctrl-C, which needs a real process and a real SIGINT.
fairseq-generate rows live in tests/tasks/test_checkpoint_flags.py.
"""

import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fairseq_taskmoe.checkpoints import UnsafeEnvironmentError
from fairseq_taskmoe.serve import from_pretrained
from fairseq_taskmoe.serve.cli import run_main
from fairseq_taskmoe.serve.text import SentenceError
from taskmoe_testlib import BIN

LONG = " ".join(["cat"] * 1100)  # 1,100 tokens: over the tiny model's 1,024 source positions


@pytest.fixture(scope="module")
def models(serve_ckpt, serve_extracts, toy_data):
    """Each engine once: the full model, the plugin and stock extracts, the int8 export."""
    return {"full": from_pretrained(serve_ckpt, data=toy_data),
            "plugin": from_pretrained(serve_extracts["plugin"]),
            "stock": from_pretrained(serve_extracts["stock"]),
            "int8": from_pretrained(serve_extracts["int8"])}


# (row, model, sentences, src, tgt, kwargs, expected: list -> same as these sentences, or (error, fragment))
API_ROWS = [
    ("stock extract asked for another target", "stock", ["a cat"], "en", "fr", {},
     (ValueError, "task 'fr' (--moe-task-by target_lang) is not in this extract")),
    ("plugin extract asked for another target", "plugin", ["a cat"], "en", "fr", {},
     (ValueError, "task 'fr' under --moe-task-by target_lang, which the model was not trained on")),
    ("export asked for another target", "int8", ["a cat"], "en", "fr", {},
     (ValueError, "task 'fr' (--moe-task-by target_lang) is not in this export")),
    ("beam=0 (fairseq)", "stock", ["a cat"], "en", "de", {"beam": 0},
     (ValueError, "beam (--beam) must be an integer >= 1; got 0")),
    ("beam=0 (CTranslate2)", "int8", ["a cat"], "en", "de", {"beam": 0},
     (ValueError, "beam (--beam) must be an integer >= 1; got 0")),
    ("batch_size=0", "full", ["a cat"], "en", "de", {"batch_size": 0},
     (ValueError, "batch_size (--batch-size) must be an integer >= 1")),
    ("unknown language", "full", ["a cat"], "en", "xx", {}, (ValueError, "tgt='xx': not a language of this model")),
    ("over-long sentence (fairseq)", "full", ["a cat", LONG], "en", "de", {},
     (SentenceError, "sentences[1]: 1100 tokens, but the model takes at most 1022")),
    ("over-long sentence (CTranslate2)", "int8", [LONG], "en", "de", {},
     (SentenceError, "sentences[0]: 1100 tokens, but the model takes at most 1022")),
    ("bytes that are not UTF-8", "plugin", [b"a cat", b"caf\xe9"], "en", "de", {},
     (SentenceError, "sentences[1]: not UTF-8 text")),
    ("a single string, not a list", "plugin", "a cat", "en", "de", {},
     (TypeError, "takes a list of sentences")),
]


@pytest.mark.parametrize("row", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_api_rows(row, models):
    _, name, sentences, src, tgt, kwargs, (error, fragment) = row
    with pytest.raises(error) as info:
        models[name].translate(sentences, src, tgt, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", ["full", "plugin", "stock", "int8"])
def test_empty_lines_stay_empty(name, models):
    model = models[name]
    alone = model.translate(["the big dog"], "en", "de")
    assert alone[0]  # the toy model translates it to something
    assert model.translate(["", "the big dog", "   ", "\t"], "en", "de") == ["", alone[0], "", ""]
    assert model.translate(["", " "], "en", "de") == ["", ""]


def test_from_pretrained_refuses_unsafe_env(serve_extracts, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    for name in ("stock", "int8"):
        with pytest.raises(UnsafeEnvironmentError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is set"):
            from_pretrained(serve_extracts[name])


def test_zero_byte_and_nan_gate_checkpoints(serve_ckpt, toy_data, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        from_pretrained(empty, data=toy_data)
    state = torch.load(serve_ckpt, weights_only=True)
    key = next(k for k in state["model"] if k.endswith("moe.router.task_gate.weight"))
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=f"{key} holds NaN or infinite weights"):
        from_pretrained(tmp_path / "nan.pt", data=toy_data)


class _Stdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


# (row, model, stdin bytes, extra flags, exit status, stderr fragment, stdout lines or None)
CLI_ROWS = [
    ("stock extract asked for another target", "stock", b"a cat\n", ["-t", "fr"], 2,
     "task 'fr' (--moe-task-by target_lang) is not in this extract", None),
    ("non-UTF-8 stdin", "plugin", b"a cat\ncaf\xe9\n", [], 2, "stdin line 2: not UTF-8 text", None),
    ("over-long line", "int8", b"a cat\n\n" + LONG.encode() + b"\n", [], 2,
     "stdin line 3: 1100 tokens, but the model takes at most 1022", None),
    ("beam 0", "int8", b"a cat\n", ["--beam", "0"], 2, "beam (--beam) must be an integer >= 1; got 0", None),
    ("empty and whitespace lines", "stock", b"\n  \nthe big dog\n\n", [], 0, "", ["", "", "*", ""]),
]


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_cli_rows(row, serve_extracts, models, tmp_path, capsys, monkeypatch):
    _, name, data, extra, status, fragment, lines = row
    flags = {"-s": "en", "-t": "de"}
    for i in range(0, len(extra), 2):
        flags[extra[i]] = extra[i + 1]
    out = tmp_path / "out.txt"
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    code = run_main([str(serve_extracts[name]), *[x for kv in flags.items() for x in kv],
                     "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == status
    if status:
        assert len(err) == 1 and err[0].startswith("fairseq-taskmoe-translate: error: ") and fragment in err[0]
        assert not out.exists() and os.listdir(tmp_path) == []  # no partial output, no temp file
    else:
        got = out.read_text().split("\n")[:-1]
        expected = [models[name].translate(["the big dog"], "en", "de")[0] if x == "*" else x for x in lines]
        assert got == expected


def test_ctrl_c_exits_130_and_writes_nothing(serve_extracts, tmp_path):
    """A real SIGINT while the CLI waits for input: one line, status 130, no --output, no temp file."""
    out = tmp_path / "out.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    env.update(OMP_NUM_THREADS="1")
    # SIGINT's default restored in the child: a suite started in the background by a shell without job
    # control (nohup ... &) inherits SIGINT ignored, and so would the CLI (it then waits for input)
    proc = subprocess.Popen([str(BIN / "fairseq-taskmoe-translate"), str(serve_extracts["int8"]), "-s", "en",
                             "-t", "de", "--output", str(out), "--no-progress"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.stdin.write(b"a cat\n")
        proc.stdin.flush()
        deadline = time.time() + 240
        while not any(p.name.startswith(".out.txt.tmp-") for p in tmp_path.iterdir()):  # model loaded
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err.decode().strip().splitlines() == ["fairseq-taskmoe-translate: interrupted"]
    assert list(tmp_path.iterdir()) == []
