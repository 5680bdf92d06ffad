"""Every extract carries a README.md whose commands work as written (issue 23).

Each fenced block of each format's README runs from inside the extract directory
(``bash`` blocks in a shell with the venv on PATH, ``python`` blocks in-process) and must
print the translation that ``fairseq_taskmoe.serve`` gives. ``DATA`` in the stock
``fairseq-generate`` block is the one placeholder (a binarized test split), replaced by the
toy data. The plugin section is the same for every format, so it runs for one of them.
"""

import contextlib
import io
import os
import re
import subprocess

import pytest

from fairseq_taskmoe.extract import extract
from fairseq_taskmoe.serve import from_pretrained
from taskmoe_testlib import BIN, N_EVAL

FORMATS = {"plugin": None, "stock": None, "ctranslate2": "float32"}


@pytest.fixture(scope="module")
def extracts(task_task_ckpt, toy_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    out = {}
    for fmt, quant in FORMATS.items():
        out[fmt] = root / fmt
        extract(str(task_task_ckpt), ["en-de"], str(out[fmt]), fmt=fmt, data_dir=str(toy_data), quantization=quant)
    return out


def blocks(readme: str):
    """(section title, language, code) of every fenced block."""
    section, found = "", []
    for part in re.split(r"^(## .*|```\w*\n(?:.*\n)*?```)$", readme, flags=re.M):
        if part.startswith("## "):
            section = part[3:]
        elif part.startswith("```"):
            lang, code = re.match(r"```(\w*)\n((?:.*\n)*?)```", part).groups()
            found.append((section, lang, code))
    return found


def run_bash(code, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "-e", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{code}\n{proc.stderr[-3000:]}"
    return proc.stdout


def run_python(code, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    return out.getvalue()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_readme_commands_work_as_written(fmt, extracts, toy_data, monkeypatch):
    d = extracts[fmt]
    readme = (d / "README.md").read_text()
    assert (d / "langs.txt").read_text().split() == ["de", "en", "es", "fr"]
    assert (d / "lang_pairs.txt").read_text().strip() == "en-de"
    example = re.search(r'echo "([^"]+)"', readme).group(1)
    expected = from_pretrained(d).translate([example], "en", "de", beam=4)[0]
    assert expected
    ran = []
    for section, lang, code in blocks(readme):
        if section.startswith("The plugin") and fmt != "ctranslate2":
            continue  # the same commands for every format
        if "fairseq-generate DATA" in code:
            out = run_bash(code.replace("DATA", str(toy_data)), d)
            assert len(re.findall(r"^H-\d+\t", out, flags=re.M)) == N_EVAL
        elif lang == "bash":
            out = run_bash(code, d)
            assert expected in out, (code, out[-2000:])
        else:
            out = run_python(code, d, monkeypatch)
            assert expected in out, (code, out)
        ran.append(section)
    wanted = {"plugin": {"fairseq (with the plugin as `--user-dir`)"},
              "stock": {"Stock fairseq (no plugin)"},
              "ctranslate2": {"The plugin (`pip install fairseq-taskmoe`)", "Plain CTranslate2 (no fairseq, no plugin)"}}
    assert wanted[fmt] <= set(ran)
    if fmt == "stock":
        assert ran.count("Stock fairseq (no plugin)") == 3  # interactive, generate, hub
        assert "prefix_allowed_tokens_fn" in readme  # the stock hub bug is stated
