"""``fairseq_taskmoe.checkpoints`` is the bottom layer of checkpoint I/O: it reads every
kind of checkpoint, shard sets included, and imports nothing from ``parallel/`` (which
writes shard sets and uses these readers). Checked on the source, so an import hidden in
a function body or spelled as a string for ``importlib`` counts too."""

import ast
from pathlib import Path

from taskmoe_testlib import PLUGIN_DIR

FORBIDDEN = "fairseq_taskmoe.parallel"


def _imports(path: Path):
    """Every module name a file imports or names in a string constant (importlib)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # relative (from ..parallel import x, from .. import parallel): resolve in the package
            base = ".".join(["fairseq_taskmoe", "checkpoints"][:3 - node.level]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("fairseq_taskmoe."):
                yield node.value


def test_checkpoints_imports_nothing_from_parallel():
    files = sorted((PLUGIN_DIR / "checkpoints").glob("*.py"))
    assert any(f.name == "shards.py" for f in files)  # the shard-set readers live here
    bad = {f.name: name for f in files for name in _imports(f)
           if name == FORBIDDEN or name.startswith(FORBIDDEN + ".")}
    assert not bad, f"checkpoints/ must not import parallel/: {bad}"


def test_the_checker_sees_an_import_circle(tmp_path):
    """The check above is able to fail: each spelling of the old circle is caught."""
    for i, line in enumerate(["from fairseq_taskmoe.parallel.merge import load_merged_state",
                              "import fairseq_taskmoe.parallel.shards",
                              "def f():\n    from fairseq_taskmoe.parallel import merge",
                              "import importlib\nimportlib.import_module('fairseq_taskmoe.parallel.merge')",
                              "from .. import parallel", "from ..parallel.shards import write_shard"]):
        f = tmp_path / f"m{i}.py"
        f.write_text(line + "\n")
        assert any(n.startswith(FORBIDDEN) for n in _imports(f)), line


def test_old_safe_load_shim_is_gone():
    assert not (PLUGIN_DIR / "safe_load.py").exists()  # use fairseq_taskmoe.checkpoints
