"""Resuming / fine-tuning keeps the checkpoint's task-gate rows (matched by task name).

fairseq-train builds the model from the command line, then loads a checkpoint's
weights into it (resume, --restore-file, --finetune-from-model alike), so the
task list must come from the checkpoint, never be rebuilt from --lang-pairs.
"""

import argparse
import shutil

import pytest
import torch

from fairseq_taskmoe.tasks.translation_multi_taskmoe import (
    resolve_task_names, restore_checkpoint_path,
)
from taskmoe_testlib import multilingual_task_args, run_cli, setup_task, train_args


def test_resolve_keeps_checkpoint_order_and_matches_by_name():
    assert resolve_task_names("target_lang", ["de", "fr"], [], None, None, None) == ["de", "fr"]
    assert resolve_task_names("target_lang", ["fr"], [], ["de", "es", "fr"], "target_lang", "c.pt") == [
        "de", "es", "fr"]
    assert resolve_task_names("target_lang", ["de", "fr"], ["fr", "de"], ["fr", "de"], "target_lang",
                              "c.pt") == ["fr", "de"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(pair_names=["de", "it"]), r"task\(s\) it .*c\.pt.*its tasks are de, es, fr"),
    (dict(task_by="lang_pair", pair_names=["en-de"]), r"--moe-task-by lang_pair differs .*target_lang"),
    (dict(given=["es", "de", "fr"]), r"--moe-task-names es,de,fr differs .*de,es,fr"),
])
def test_resolve_mismatch_is_a_clear_error(kwargs, match):
    args = dict(task_by="target_lang", pair_names=["de"], given=[], ckpt_names=["de", "es", "fr"],
                ckpt_task_by="target_lang", ckpt_path="c.pt")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        resolve_task_names(**args)


def test_new_tasks_get_rows_after_the_checkpoints_only_with_a_fresh_optimizer():
    args = dict(task_by="target_lang", pair_names=["de", "it"], given=[], ckpt_names=["de", "fr"],
                ckpt_task_by="target_lang", ckpt_path="c.pt", new_tasks=True)
    assert resolve_task_names(**args, fresh_optimizer=True) == ["de", "fr", "it"]
    with pytest.raises(ValueError, match="--moe-new-tasks .*--finetune-from-model or --reset-optimizer"):
        resolve_task_names(**args, fresh_optimizer=False)


def test_router_loads_fewer_task_rows_only_when_allowed():
    from fairseq_taskmoe.moe.router import Router

    torch.manual_seed(0)
    old = Router("task", 8, 4, num_tasks=2)
    new = Router("task", 8, 4, num_tasks=3)
    fresh_row = new.task_gate.weight[2].detach().clone()
    with pytest.raises(RuntimeError, match="size mismatch"):
        new.load_state_dict(old.state_dict())
    new.allow_new_task_rows = True
    new.load_state_dict(old.state_dict())
    assert torch.equal(new.task_gate.weight[:2], old.task_gate.weight)
    assert torch.equal(new.task_gate.weight[2], fresh_row)


def test_restore_path_follows_fairseq(tmp_path):
    ns = argparse.Namespace(save_dir=str(tmp_path), restore_file="checkpoint_last.pt", checkpoint_suffix="",
                            finetune_from_model=None, continue_once=None)
    assert restore_checkpoint_path(ns) is None  # first launch, nothing to load
    ns.finetune_from_model = "/pre/trained.pt"
    assert restore_checkpoint_path(ns) == "/pre/trained.pt"
    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    assert restore_checkpoint_path(ns) == str(tmp_path / "checkpoint_last.pt")  # a resume wins
    ns.restore_file, ns.finetune_from_model, ns.checkpoint_suffix = "other/ck.pt", None, "-x"
    assert restore_checkpoint_path(ns) == "other/ck.pt".replace(".pt", "-x.pt")


def _fake_checkpoint(path, names, task_by="target_lang"):
    model_ns = argparse.Namespace(moe_task_names=names, moe_task_by=task_by)
    torch.save({"model": {}, "cfg": {"model": model_ns, "task": argparse.Namespace()}}, path)


def test_resume_takes_rows_from_the_checkpoint_in_process(toy_data, tmp_path):
    # gate order of a checkpoint trained with other pairs: not the sorted order of --lang-pairs
    _fake_checkpoint(tmp_path / "checkpoint_last.pt", "fr,en,zh,es,de")
    task = setup_task(toy_data, extra=["--save-dir", str(tmp_path)])
    assert task.moe_task_names == ["fr", "en", "zh", "es", "de"]
    assert task.task_id("en", "fr") == 0 and task.task_id("en", "de") == 4
    _fake_checkpoint(tmp_path / "checkpoint_last.pt", "de,en,fr,it")
    with pytest.raises(ValueError, match=r"task\(s\) es .*no task-gate row"):
        setup_task(toy_data, extra=["--save-dir", str(tmp_path)])


PAIR_TASK_FLAGS = ["--moe-task-by", "lang_pair", "--langs", "de,en,es,fr"]


@pytest.fixture(scope="module")
def lang_pair_ckpt(toy_data, tmp_path_factory):
    """One update on en-de,en-fr with a task per pair: gate rows [en-de, en-fr].

    --langs pins fairseq's language-token vocabulary, which otherwise follows
    --lang-pairs (another pair set would change the embedding size)."""
    save = tmp_path_factory.mktemp("resume") / "ckpt"
    run_cli("fairseq-train", multilingual_task_args(toy_data, lang_pairs="en-de,en-fr") + train_args(
        save, max_update=1, extra=PAIR_TASK_FLAGS))
    return save


def test_resume_with_a_subset_of_pairs_keeps_the_rows(toy_data, lang_pair_ckpt, tmp_path):
    save = tmp_path / "ckpt"
    shutil.copytree(lang_pair_ckpt, save)
    out = run_cli("fairseq-train", multilingual_task_args(toy_data, lang_pairs="en-fr") + train_args(
        save, max_update=2, extra=PAIR_TASK_FLAGS))
    log = out.stdout + out.stderr
    assert "task-gate rows follow the task order" in log and "num_updates 2" in log
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert state["cfg"]["model"].moe_task_names == "en-de,en-fr"  # en-fr still trains row 1


def test_finetune_with_a_task_the_checkpoint_lacks_is_an_error(toy_data, lang_pair_ckpt, tmp_path):
    # without the check en-es would silently train (and serve with) en-fr's row 1
    source = lang_pair_ckpt / "checkpoint_last.pt"
    before = source.read_bytes()
    with pytest.raises(AssertionError, match=r"task\(s\) en-es .*its tasks are en-de, en-fr"):
        run_cli("fairseq-train", multilingual_task_args(toy_data, lang_pairs="en-de,en-es") + train_args(
            tmp_path / "ft", max_update=2, extra=[*PAIR_TASK_FLAGS, "--finetune-from-model", source]))
    assert source.read_bytes() == before
    assert not (tmp_path / "ft" / "checkpoint_last.pt").exists()


def test_finetune_with_new_tasks_appends_rows(toy_data, lang_pair_ckpt, tmp_path):
    source = lang_pair_ckpt / "checkpoint_last.pt"
    save = tmp_path / "ft"
    # --lr 0: the update leaves the weights as loaded, so the rows can be compared
    run_cli("fairseq-train", multilingual_task_args(toy_data, lang_pairs="en-es,en-de") + train_args(
        save, max_update=1, extra=[*PAIR_TASK_FLAGS, "--finetune-from-model", source, "--moe-new-tasks",
                                   "--lr", "0"]))
    before = torch.load(source, weights_only=True)
    after = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert after["cfg"]["model"].moe_task_names == "en-de,en-fr,en-es"
    gates = [k for k in before["model"] if k.endswith("task_gate.weight")]
    assert gates
    for key in gates:
        assert after["model"][key].shape[0] == 3
        assert torch.equal(after["model"][key][:2], before["model"][key])
