"""End to end with the real CLIs: fairseq-train / fairseq-generate / fairseq-interactive."""

import re

import pytest

from taskmoe_testlib import N_EVAL, multilingual_task_args, run_cli, train_args

ROUTINGS = {
    "token": ("token", "token"),
    "sentence": ("sentence", "sentence"),
    "sentence-pooled": ("sentence-pooled", "sentence-pooled"),
    "task": ("task", "task"),
    "token-enc-task-dec": ("token", "task"),
}


def _hyps(stdout):
    return [l for l in stdout.splitlines() if re.match(r"^H-\d+\t", l)]


@pytest.mark.parametrize("name", list(ROUTINGS))
def test_train_then_generate_beam4(name, toy_data, tmp_path):
    enc, dec = ROUTINGS[name]
    save = tmp_path / "ckpt"
    train = run_cli("fairseq-train", multilingual_task_args(toy_data) + train_args(
        save, max_update=3, extra=["--moe-encoder-routing", enc, "--moe-decoder-routing", dec,
                                   "--moe-second-expert-policy", "sampling"]))
    log = train.stdout + train.stderr
    assert "num_updates 3" in log
    for side, routing in (("enc", enc), ("dec", dec)):
        assert f"moe_{side}_aux" in log
    assert (save / "checkpoint_last.pt").exists()
    gen = run_cli("fairseq-generate", multilingual_task_args(toy_data) + [
        "-s", "en", "-t", "de", "--path", save / "checkpoint_last.pt", "--beam", "4",
        "--max-tokens", "2000", "--num-workers", "0", "--max-len-b", "20"])
    assert len(_hyps(gen.stdout)) == N_EVAL
    assert "BLEU4" in gen.stdout


@pytest.fixture(scope="module")
def task_model(toy_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("lp")
    run_cli("fairseq-train", multilingual_task_args(toy_data) + train_args(
        save, max_update=2, extra=["--moe-task-by", "lang_pair"]))
    return save / "checkpoint_last.pt"


def test_interactive_translates_a_line(toy_data, task_model):
    out = run_cli("fairseq-interactive", multilingual_task_args(toy_data) + [
        "-s", "en", "-t", "fr", "--path", task_model, "--beam", "4", "--max-len-b", "10"],
        input_text="the cat runs\n")
    assert len(_hyps(out.stdout)) == 1


def test_unknown_task_at_inference_lists_known_tasks(toy_data, task_model):
    # de-fr was never trained: under --moe-task-by lang_pair it is an unknown task.
    with pytest.raises(AssertionError, match=r"task 'de-fr'.*known tasks: de-en, en-de, en-es"):
        run_cli("fairseq-interactive", multilingual_task_args(toy_data) + [
            "-s", "de", "-t", "fr", "--path", task_model, "--beam", "2"], input_text="the cat\n")


def test_unseen_pair_into_known_target_language_works(toy_data, tmp_path):
    save = tmp_path / "tl"
    run_cli("fairseq-train", multilingual_task_args(toy_data) + train_args(
        save, max_update=1, extra=["--moe-task-by", "target_lang"]))
    out = run_cli("fairseq-interactive", multilingual_task_args(toy_data) + [
        "-s", "de", "-t", "fr", "--path", save / "checkpoint_last.pt", "--beam", "2",
        "--max-len-b", "10"], input_text="the cat\n")
    assert len(_hyps(out.stdout)) == 1
