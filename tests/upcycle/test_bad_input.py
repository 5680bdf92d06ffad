"""Bad input: one-line errors naming the flag or file, exit status 2, nothing written."""

import pytest
import torch

from fairseq_taskmoe.checkpoints import EXIT_BAD_INPUT
from fairseq_taskmoe.upcycle import UpcycleCheckError, UpcycleOptions, api, upcycle
from fairseq_taskmoe.upcycle.cli import run_main


def _refused(capsys, tmp_path, argv, *words):
    out = tmp_path / "out" / "init.pt"
    code = run_main([*map(str, argv), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT, err
    assert err.startswith("fairseq-taskmoe-upcycle: error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # no temp file


@pytest.fixture(scope="module")
def moe_ckpt(dense, tmp_path_factory):
    """A checkpoint that already has MoE layers (an upcycled one)."""
    out = tmp_path_factory.mktemp("moe") / "moe.pt"
    upcycle(str(dense["ml_post"]), str(out), UpcycleOptions(expert_count=2))
    return out


CASES = {
    "lstm": (lambda d, m: [d["lstm"]], ["--arch lstm", "LSTMModel", "not a fairseq transformer"]),
    "already-moe": (lambda d, m: [m], ["moe.pt", "already has MoE layers"]),
    "zero-experts": (lambda d, m: [d["ml_post"], "--moe-expert-count", "0"],
                     ["--moe-expert-count must be >= 1, got 0"]),
    "unknown-language": (lambda d, m: [d["ml_post"], "--lang-pairs", "en-de,en-xx"],
                         ["--lang-pairs en-xx", "'xx'", "no language token", "de, en, fr"]),
    "bilingual-task-routing": (lambda d, m: [d["bi"], "--moe-encoder-routing", "token"],
                               ["--moe-decoder-routing task", "bilingual"]),
    "bilingual-lang-pairs": (lambda d, m: [d["bi"], "--moe-decoder-routing", "token",
                                           "--lang-pairs", "en-de"], ["--lang-pairs", "bilingual"]),
    "freq-zero": (lambda d, m: [d["ml_post"], "--moe-freq", "0"], ["--moe-freq must be >= 1"]),
    "freq-too-large": (lambda d, m: [d["ml_post"], "--moe-freq", "3"], ["no layer becomes an MoE layer"]),
    "negative-noise": (lambda d, m: [d["ml_post"], "--expert-noise", "-1"], ["--expert-noise must be >= 0"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused(case, dense, moe_ckpt, capsys, tmp_path):
    argv, words = CASES[case]
    _refused(capsys, tmp_path, argv(dense, moe_ckpt), *words)


def test_not_a_checkpoint_and_missing_data(dense, capsys, tmp_path):
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    _refused(capsys, tmp_path, [junk], "junk.pt", "not a fairseq checkpoint")
    _refused(capsys, tmp_path, [dense["ml_post"], "--data", tmp_path / "nowhere"], "nowhere", "--data")


def test_wrong_dictionary_in_data(dense, bi_data, capsys, tmp_path):
    # bilingual data: no dict.fr.txt for the multilingual model's pairs
    _refused(capsys, tmp_path, [dense["ml_post"], "--data", bi_data], "dict.fr.txt")
    # the right languages but not the dense model's dictionary
    _refused(capsys, tmp_path, [dense["ml_post"], "--data", bi_data, "--lang-pairs", "en-de"],
             "dictionary has", "embeddings have")


def test_existing_out_needs_force(dense, capsys, tmp_path):
    out = tmp_path / "init.pt"
    out.write_bytes(b"keep me")
    assert run_main([str(dense["ml_post"]), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert run_main([str(dense["ml_post"]), "--out", str(out), "--force"]) == 0
    assert "model" in torch.load(out, weights_only=True)


def test_failed_check_writes_nothing(dense, toy_data, tmp_path, monkeypatch):
    """A mapping that is off (an expert changed) must be caught by the check before the write."""
    def broken(*args, **kwargs):
        state, layers = real(*args, **kwargs)
        # (not a constant shift of the output: the post-norm LayerNorm would remove it exactly)
        state["decoder.layers.1.moe.experts.fc2_weight"] = state["decoder.layers.1.moe.experts.fc2_weight"] * 1.5
        return state, layers

    real = api.upcycle_state
    monkeypatch.setattr(api, "upcycle_state", broken)
    out = tmp_path / "init.pt"
    with pytest.raises(UpcycleCheckError, match="built-in check failed.*nothing written"):
        upcycle(str(dense["ml_post"]), str(out), UpcycleOptions(expert_count=4, data=str(toy_data)))
    assert list(tmp_path.iterdir()) == []


def test_noise_is_reported_not_refused(dense, toy_data, tmp_path):
    report = upcycle(str(dense["ml_post"]), str(tmp_path / "n.pt"),
                     UpcycleOptions(expert_count=4, expert_noise=0.05, data=str(toy_data)))
    assert report["check"]["max_logprob_diff"] < 1e-5  # the exact model passed the check
    assert report["check_after_noise"]["max_logprob_diff"] > 1e-4  # the written one is perturbed
    state = torch.load(tmp_path / "n.pt", weights_only=True)["model"]
    w = state["decoder.layers.1.moe.experts.fc1_weight"]
    assert not torch.equal(w[0], w[1])
