"""README commands run as written (issue 23): "Generate and score" on a toy model, and the pip-only
install steps, which must be the Makefile's tested steps (the venv under test was built by them)."""

import os
import re
import subprocess

from taskmoe_testlib import BIN, N_EVAL, PLUGIN_DIR, REPO, multilingual_task_args, run_cli, train_args


def section_block(title):
    """The first ```bash block after the README heading ``title``."""
    text = (REPO / "README.md").read_text()
    start = text.index(title)
    return re.search(r"```bash\n((?:.*\n)*?)```", text[start:]).group(1)


def commands(block):
    """Shell commands of a block: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [" ".join(line.split("#")[0].split()) for line in joined.splitlines() if line.split("#")[0].strip()]


def cli_env():
    """What a user's shell would have: the venv's console scripts on PATH, no unsafe-load override."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    return env


def test_pip_only_steps_are_the_makefiles(tmp_path):
    steps = commands(section_block("### Without make (pip only)"))
    assert steps[0].startswith("git clone ") and steps[0].endswith(" fairseq_taskmoe && cd fairseq_taskmoe")
    make = (REPO / "Makefile").read_text()
    pins = dict(re.findall(r"^(\w+_PIN) := (\S+)$", make, flags=re.M))
    wanted = []
    for line in re.findall(r"^\t\$\(BIN\)/python -m (pip install .*)$", make, flags=re.M):
        line = " ".join(w for w in line.split() if w != "-q")
        for name, pin in pins.items():
            line = line.replace(f"$({name})", pin)
        if "--upgrade pip" not in line and "fairscale" not in line:  # fairscale: benchmarks only
            wanted.append(line)
    assert [s for s in steps if s.startswith("pip install")] == wanted


def test_generate_and_score_as_written(toy_data, tmp_path):
    """The block's commands with the README's paths made to exist: data/loc8 (the toy data, with
    raw/), ckpt/checkpoint_best.pt (a toy model trained on 6 pairs: the block asks for 4, a subset)."""
    run_cli("fairseq-train", [*multilingual_task_args(toy_data), *train_args(tmp_path / "ckpt", max_update=2, extra=[
        "--disable-validation", "--moe-decoder-routing", "task"])])
    os.rename(tmp_path / "ckpt" / "checkpoint_last.pt", tmp_path / "ckpt" / "checkpoint_best.pt")
    loc8 = tmp_path / "data" / "loc8"
    loc8.mkdir(parents=True)
    for f in toy_data.iterdir():
        (loc8 / f.name).symlink_to(f)
    (loc8 / "raw").symlink_to(toy_data.parent / "raw")  # test.en-de.de: the toy corpus' raw text
    (tmp_path / "fairseq_taskmoe").symlink_to(PLUGIN_DIR)
    env = cli_env()
    block = section_block("### Generate and score")
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((tmp_path / "hyp.de").read_text().splitlines()) == N_EVAL
    assert '"name": "BLEU"' in proc.stdout and '"name": "chrF2"' in proc.stdout


def test_upcycle_sequence_as_written(toy_data, tmp_path):
    """"Upcycle a dense model": stock dense model -> upcycle -> fine-tune -> stock extract, as written
    (update counts cut to 3) on the toy data as data/loc8; step 3's model flags are the ones step 2
    prints, and the extract has exactly the dense model's parameter shapes."""
    import shlex

    from fairseq_taskmoe.checkpoints import load_checkpoint_safely

    loc8 = tmp_path / "data" / "loc8"
    loc8.parent.mkdir()
    loc8.symlink_to(toy_data)
    (tmp_path / "fairseq_taskmoe").symlink_to(PLUGIN_DIR)
    env = cli_env()
    block = section_block("### Upcycle a dense model")
    block = re.sub(r"--(max-update|total-num-update) \d+", r"--\1 3", block)
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fairseq-taskmoe-upcycle: check passed: 16/16 identical hypotheses" in proc.stderr
    printed = shlex.split(re.search(r"fine-tune with: fairseq-train DATA (.*) --finetune-from-model",
                                    proc.stderr).group(1))
    printed[printed.index("--user-dir") + 1] = "fairseq_taskmoe"  # printed absolute
    finetune = shlex.split(next(c for c in commands(block) if "--finetune-from-model" in c))
    assert finetune[2:2 + len(printed)] == printed, "README step 3 is not what fairseq-taskmoe-upcycle prints"
    load = lambda p: load_checkpoint_safely(str(p))["model"]  # noqa: E731
    dense, extract = load(tmp_path / "ckpt/dense/checkpoint_last.pt"), load(tmp_path / "extracts/en-de/checkpoint.pt")
    assert {k: v.shape for k, v in extract.items()} == {k: v.shape for k, v in dense.items()}
