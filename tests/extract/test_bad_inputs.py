"""Bad input to the plugin's tools (issue 11): every case is refused cleanly.

Table-driven over the real CLIs (``fairseq-taskmoe-extract``,
``fairseq-taskmoe-routing``), in-process through ``run_main`` (the console
scripts' own error handling), plus a few real subprocess runs. Each case
asserts: a non-zero documented exit status, exactly one ``PROG: error: ...``
line naming the flag or file, no traceback, and every input file
byte-identical afterwards. It lives here to reuse the session-trained
checkpoint of tests/extract/conftest.py.
"""

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fairseq_taskmoe.analysis import routing
from fairseq_taskmoe.checkpoints import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_UNSAFE
from fairseq_taskmoe.extract import cli as extract_cli
from taskmoe_testlib import BIN


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def digest(paths):
    """{file: sha256} of every file under ``paths`` (files or directories)."""
    out = {}
    for root in paths:
        root = Path(root)
        for p in ([root] if root.is_file() else sorted(q for q in root.rglob("*") if q.is_file())):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def files(token_task_ckpt, toy_data, tmp_path_factory):
    """Inputs for the cases: the trained checkpoint, the data, and broken / hostile variants."""
    root = tmp_path_factory.mktemp("bad_inputs")
    state = torch.load(token_task_ckpt, weights_only=True)
    data = token_task_ckpt.read_bytes()
    (root / "cut.pt").write_bytes(data[: len(data) // 2])
    evil = Evil()
    evil.marker = root / "pwned"
    with open(root / "evil.pt", "wb") as f:
        pickle.dump({"model": {}, "payload": evil}, f)

    def variant(name, edit):
        s = {**state, "cfg": {**state["cfg"], "model": pickle.loads(pickle.dumps(state["cfg"]["model"]))},
             "model": dict(state["model"])}
        edit(s)
        torch.save(s, root / name)

    variant("huge.pt", lambda s: setattr(s["cfg"]["model"], "moe_expert_count", 10 ** 9))
    variant("layers.pt", lambda s: setattr(s["cfg"]["model"], "encoder_layers", 10 ** 9))
    variant("negative.pt", lambda s: setattr(s["cfg"]["model"], "moe_layout",
                                             '{"encoder": {"1": {"experts": -3}}}'))
    key = "decoder.layers.1.moe.experts.fc1_weight"
    variant("shape.pt", lambda s: s["model"].__setitem__(key, s["model"][key][:3]))
    variant("stock.pt", lambda s: s["cfg"].__setitem__("model", {"_name": "transformer"}))
    (root / "notextract").mkdir()
    (root / "notextract" / "precious.txt").write_text("keep me")
    return {"ckpt": token_task_ckpt, "data": toy_data, "dir": root, "marker": evil.marker}


def run(tool, argv, capsys):
    code = tool.run_main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def check_refusal(code, err, expected_code, prog, must_name):
    assert code == expected_code, err
    assert "Traceback" not in err
    errors = [l for l in err.strip().splitlines() if l.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, err
    for word in must_name:
        assert word in errors[0], (word, errors[0])


# (id, argv builder, exit status, strings the error line must contain)
EXTRACT_CASES = [
    ("missing-checkpoint", lambda f, o: ["{dir}/nope.pt", "--tasks", "en-de", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["checkpoint not found", "nope.pt"]),
    ("truncated", lambda f, o: ["{dir}/cut.pt", "--tasks", "en-de", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["truncated or corrupt", "cut.pt"]),
    ("malicious", lambda f, o: ["{dir}/evil.pt", "--tasks", "en-de", "--out", o, "--data", "{data}"],
     EXIT_UNSAFE, ["refusing to load", "evil.pt", "system", "refused"]),
    ("stock-checkpoint", lambda f, o: ["{dir}/stock.pt", "--tasks", "en-de", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["stock.pt", "stock fairseq transformer"]),
    ("expert-count-1e9", lambda f, o: ["{dir}/huge.pt", "--tasks", "en-de", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["huge.pt", "1000000000 experts", "shape"]),
    ("layers-1e9", lambda f, o: ["{dir}/layers.pt", "--tasks", "en-de", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["layers.pt", "encoder_layers=1000000000"]),
    ("negative-layout", lambda f, o: ["{dir}/negative.pt", "--tasks", "en-de", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["negative.pt", "-3 experts"]),
    ("shape-mismatch", lambda f, o: ["{dir}/shape.pt", "--tasks", "en-de", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["shape.pt", "decoder.layers.1.moe.experts.fc1_weight", "(3,"]),
    ("bad-pair", lambda f, o: ["{ckpt}", "--tasks", "ende", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["--tasks", "src-tgt"]),
    ("unknown-task", lambda f, o: ["{ckpt}", "--tasks", "en-xx", "--out", o, "--data", "{data}"],
     EXIT_BAD_INPUT, ["--tasks en-xx", "known tasks"]),
    ("data-missing", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", o, "--data", "/nonexistent"],
     EXIT_BAD_INPUT, ["--data /nonexistent", "no such directory"]),
    ("no-data", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", o],
     EXIT_BAD_INPUT, ["--data", "dict.*.txt"]),
    ("prune-split", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", o, "--data", "{data}",
                                  "--prune-token-experts", "2", "--prune-split", "nosuch"],
     EXIT_BAD_INPUT, ["--prune-split nosuch"]),
    ("prune-too-many", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", o, "--data", "{data}",
                                     "--prune-token-experts", "100"],
     EXIT_BAD_INPUT, ["--prune-token-experts 100", "at most 4 experts"]),
    ("prune-below-k", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", o, "--data", "{data}",
                                    "--prune-token-experts", "1"],
     EXIT_BAD_INPUT, ["--prune-token-experts", "--moe-top-k"]),
    ("force-over-checkpoint-dir", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", "{ckptdir}",
                                                "--data", "{data}", "--force"],
     EXIT_BAD_INPUT, ["--out", "contains an input"]),
    ("force-over-data-dir", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", "{data}", "--data", "{data}",
                                          "--force"],
     EXIT_BAD_INPUT, ["--out", "contains an input"]),
    ("force-over-non-extract", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", "{dir}/notextract",
                                             "--data", "{data}", "--force"],
     EXIT_BAD_INPUT, ["notextract", "not an earlier extract"]),
    ("read-only-out", lambda f, o: ["{ckpt}", "--tasks", "en-de", "--out", "/sys/taskmoe-out", "--data",
                                    "{data}"],
     EXIT_ENVIRONMENT, ["/sys/taskmoe-out", "permission denied"]),
]


@pytest.mark.parametrize("case", EXTRACT_CASES, ids=[c[0] for c in EXTRACT_CASES])
def test_extract_refuses(case, files, tmp_path, capsys):
    _, build, expected, must_name = case
    fmt = {"dir": files["dir"], "data": files["data"], "ckpt": files["ckpt"],
           "ckptdir": files["ckpt"].parent}
    argv = [str(a).format(**fmt) for a in build(files, tmp_path / "out")]
    inputs = [files["dir"], files["data"], files["ckpt"].parent]
    before = digest(inputs)
    code, err = run(extract_cli, argv, capsys)
    check_refusal(code, err, expected, "fairseq-taskmoe-extract", must_name)
    assert digest(inputs) == before
    assert not (tmp_path / "out").exists() and not files["marker"].exists()


def test_extract_disk_full_keeps_earlier_extract(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = [files["ckpt"], "--tasks", "en-de", "--out", out, "--data", files["data"]]
    assert run(extract_cli, argv, capsys)[0] == 0
    before = digest([out])

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, err = run(extract_cli, argv + ["--force"], capsys)
    check_refusal(code, err, EXIT_ENVIRONMENT, "fairseq-taskmoe-extract",
                  ["disk full", str(out / "checkpoint.pt")])
    assert digest([out]) == before  # the earlier extract is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp left behind


def test_extract_recovers_after_kill_during_swap(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [files["ckpt"], "--tasks", "en-de", "--out", out, "--data", files["data"]]
    assert run(extract_cli, argv, capsys)[0] == 0
    before = digest([out])
    # what a kill between the two renames of a --force swap leaves behind
    old, tmp = tmp_path / ".out.old-deadbeef", tmp_path / ".out.tmp-feedface"
    out.rename(old)
    tmp.mkdir()
    (tmp / "checkpoint.pt").write_bytes(b"half")
    code, err = run(extract_cli, argv, capsys)  # without --force: restore, then refuse to overwrite
    check_refusal(code, err, EXIT_BAD_INPUT, "fairseq-taskmoe-extract", ["--force"])
    assert not old.exists() and digest([out]) == before  # the earlier extract is back in place
    notes = [l for l in err.splitlines() if l.startswith("fairseq-taskmoe-extract: note: ")]
    assert any("restored" in n for n in notes)
    assert any(str(tmp) in n for n in notes)  # the incomplete output is reported


def test_extract_refuses_unsafe_torch_env(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    code, err = run(extract_cli, [files["ckpt"], "--tasks", "en-de", "--out", tmp_path / "o", "--data",
                                  files["data"]], capsys)
    check_refusal(code, err, EXIT_UNSAFE, "fairseq-taskmoe-extract",
                  ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "unset"])


ROUTING_CASES = [
    ("split", ["{ckpt}", "--data", "{data}", "--pairs", "en-de", "--split", "nosuch"], EXIT_BAD_INPUT,
     ["--split nosuch"]),
    ("pair-format", ["{ckpt}", "--data", "{data}", "--pairs", "ende"], EXIT_BAD_INPUT, ["--pairs", "ende"]),
    ("pair-unknown", ["{ckpt}", "--data", "{data}", "--pairs", "en-xx"], EXIT_BAD_INPUT,
     ["--pairs", "'xx'", "trained pairs"]),
    ("stock", ["{dir}/stock.pt", "--data", "{data}"], EXIT_BAD_INPUT, ["stock.pt", "stock fairseq"]),
    ("truncated", ["{dir}/cut.pt", "--data", "{data}", "--pairs", "en-de"], EXIT_BAD_INPUT,
     ["cut.pt", "truncated or corrupt"]),
    ("malicious", ["{dir}/evil.pt", "--data", "{data}", "--pairs", "en-de"], EXIT_UNSAFE,
     ["evil.pt", "refused"]),
    ("expert-count-1e9", ["{dir}/huge.pt", "--data", "{data}", "--pairs", "en-de"], EXIT_BAD_INPUT,
     ["huge.pt", "1000000000 experts"]),
    ("data-missing", ["{ckpt}", "--data", "/nonexistent"], EXIT_BAD_INPUT, ["--data /nonexistent"]),
    ("json-dir-missing", ["{ckpt}", "--data", "{data}", "--json", "/nonexistent/r.json"], EXIT_BAD_INPUT,
     ["--json", "/nonexistent"]),
    ("json-read-only", ["{ckpt}", "--data", "{data}", "--json", "/sys/r.json"], EXIT_ENVIRONMENT,
     ["/sys/r.json", "permission denied"]),
]


@pytest.mark.parametrize("case", ROUTING_CASES, ids=[c[0] for c in ROUTING_CASES])
def test_routing_refuses(case, files, tmp_path, capsys):
    _, argv, expected, must_name = case
    fmt = {"dir": files["dir"], "data": files["data"], "ckpt": files["ckpt"]}
    argv = [a.format(**fmt) for a in argv]
    if "--json" not in argv:
        argv += ["--json", str(tmp_path / "r.json")]
    inputs = [files["dir"], files["data"], files["ckpt"].parent]
    before = digest(inputs)
    code, err = run(routing, argv, capsys)
    check_refusal(code, err, expected, "fairseq-taskmoe-routing", must_name)
    assert digest(inputs) == before and not (tmp_path / "r.json").exists()


def test_routing_png_without_matplotlib(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    code, err = run(routing, [files["ckpt"], "--data", files["data"], "--json", tmp_path / "r.json",
                              "--png", tmp_path / "r.png"], capsys)
    check_refusal(code, err, EXIT_BAD_INPUT, "fairseq-taskmoe-routing", ["--png", "pip install matplotlib"])


def _console(name, args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    env.update(OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_console_scripts(files, tmp_path):
    proc = _console("fairseq-taskmoe-extract", [files["ckpt"], "--tasks", "en-de", "--out", tmp_path / "o",
                                                "--data", files["data"]],
                    {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert proc.returncode == EXIT_UNSAFE and "Traceback" not in proc.stderr
    assert "fairseq-taskmoe-extract: error: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is set" in proc.stderr
    assert "UNSAFE ENVIRONMENT" in proc.stderr  # the import-time warning, too
    proc = _console("fairseq-taskmoe-routing", [files["ckpt"], "--data", files["data"], "--pairs", "ende",
                                                "--json", tmp_path / "r.json"])
    assert proc.returncode == EXIT_BAD_INPUT and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fairseq-taskmoe-routing: error: --pairs")


def test_routing_happy_path_after_refusals(files, tmp_path, capsys):
    # the control: the same tool on good input works (and writes readable outputs)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    code, err = run(routing, [files["ckpt"], "--data", files["data"], "--pairs", "en-de,en-fr,de-en",
                              "--json", out, "--png", png], capsys)
    assert code == 0, err
    import json

    report = json.loads(out.read_text())
    assert report["groups"] == ["de", "en", "fr"] and report["sentences"]["en-de"] == 13
    assert [(l["side"], l["routing"]) for l in report["layers"]] == [("encoder", "token"), ("decoder", "task")]
    # task routing: each target language always uses the same 2 experts
    assert report["layers"][1]["top_k_share"] == pytest.approx(1.0)
    assert png.stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.png"]
