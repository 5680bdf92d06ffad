"""--format argos and --tasks all: package layout, metadata, shared bytes, and what argos feeds the model.

argostranslate cannot go into the project environment (its pins, and stanza pulls its own
stack), so installing the packages and translating with argostranslate's API and with
LibreTranslate is tests/integration/test_libretranslate.py, run by .ci/run. Here: what
can be pinned without it. The package's model directory, fed the way argostranslate
feeds it (pieces without language token, ``target_prefix``, its beam / length penalty),
returns exactly the hypotheses and scores of the CTranslate2 export fed the way our
translator feeds it; the no-split MiniSBD model decodes to the graph and metadata MiniSBD
reads; bad input is refused with nothing written.
"""

import json
import os
import struct
import zipfile

import pytest

from argos_testlib import ARGOS_PAIRS, build_spm_data, held_out_sentences, train_toy
from fairseq_taskmoe.extract import argos_langs, argos_sbd, extract
from fairseq_taskmoe.extract.cli import run_main

PAIRS = ARGOS_PAIRS.split(",")
CODES = {"en": "en", "de": "de", "pt_BR": "pb"}
ARGOS_BEAM, ARGOS_LENPEN = 4, 0.2  # argostranslate's apply_packaged_translation


@pytest.fixture(scope="module")
def argos_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("argos_model")
    data = build_spm_data(root / "data")
    return train_toy(data, root / "ckpt"), data


@pytest.fixture(scope="module")
def argos_out(argos_model, tmp_path_factory):
    ckpt, data = argos_model
    out = tmp_path_factory.mktemp("argos_out") / "packages"
    report = extract(str(ckpt), ["all"], str(out), fmt="argos", data_dir=str(data))
    return out, report


@pytest.fixture(scope="module")
def ct2_all(argos_model, tmp_path_factory):
    ckpt, data = argos_model
    out = tmp_path_factory.mktemp("ct2_all") / "ct2"
    extract(str(ckpt), ["all"], str(out), fmt="ctranslate2", data_dir=str(data))
    return out


def unzip(package, dest):
    with zipfile.ZipFile(package) as zf:
        zf.extractall(dest)
    (top,) = os.listdir(dest)
    return dest / top


def test_one_package_per_pair_layout_and_metadata(argos_out):
    out, report = argos_out
    assert sorted(p["pair"] for p in report["packages"]) == sorted(PAIRS)
    assert json.loads((out / "extract.json").read_text())["packages"] == report["packages"]
    for pkg in report["packages"]:
        src, tgt = pkg["pair"].split("-")
        with zipfile.ZipFile(out / pkg["file"]) as zf:
            names = sorted(zf.namelist())
            top = f"translate-{CODES[src]}_{CODES[tgt]}-1_0"
            assert names == sorted(f"{top}/{n}" for n in (
                "README.md", "metadata.json", "sentencepiece.model", "minisbd/nosplit.onnx",
                "model/model.bin", "model/config.json", "model/shared_vocabulary.json"))
            meta = json.loads(zf.read(f"{top}/metadata.json"))
            config = json.loads(zf.read(f"{top}/model/config.json"))
            vocab = json.loads(zf.read(f"{top}/model/shared_vocabulary.json"))
            readme = zf.read(f"{top}/README.md").decode()
        assert pkg["file"] == f"{CODES[src]}_{CODES[tgt]}.argosmodel"
        assert (meta["from_code"], meta["to_code"]) == (CODES[src], CODES[tgt])
        assert meta["from_name"] == argos_langs.NAMES[CODES[src]] and meta["type"] == "translate"
        assert meta["package_version"] and meta["argos_version"] == "1.11"
        # Target prefix and source token: the model's language tokens.
        assert meta["target_prefix"] == f"__{tgt}__" == pkg["target_prefix"] and meta["target_prefix"] in vocab
        assert config["add_source_bos"] and config["bos_token"] == f"__{src}__" in vocab
        assert config["decoder_start_token"] == "</s>" and config["add_source_eos"]
        assert f"task `{pkg['task']}`" in readme and "updates" in readme and "Not scored" in readme


def test_pairs_of_a_task_share_the_export_bytes(argos_out, ct2_all, tmp_path):
    """de-en and pt_BR-en (task "en") carry the same model.bin and vocabulary, byte for byte, and
    they are the --tasks all --format ctranslate2 export's; only config.json differs (source token)."""
    out, report = argos_out
    by_pair = {p["pair"]: p for p in report["packages"]}
    models = {}
    for pair, pkg in by_pair.items():
        models[pair] = unzip(out / pkg["file"], tmp_path / pair) / "model"
    assert by_pair["de-en"]["model_sha256"] == by_pair["pt_BR-en"]["model_sha256"]
    for pair in PAIRS:
        task = by_pair[pair]["task"]
        for name in ("model.bin", "shared_vocabulary.json"):
            assert (models[pair] / name).read_bytes() == (ct2_all / task / name).read_bytes()
    assert (models["de-en"] / "config.json").read_text() != (models["pt_BR-en"] / "config.json").read_text()


def test_package_model_fed_the_argos_way_equals_the_export(argos_out, ct2_all, tmp_path):
    """Exactly the export's hypotheses and scores, and our API's translation (with argos' options)."""
    import ctranslate2
    import sentencepiece as spm

    from fairseq_taskmoe.serve import from_pretrained

    out, report = argos_out
    outputs = []
    for pkg in report["packages"]:
        src, tgt = pkg["pair"].split("-")
        root = unzip(out / pkg["file"], tmp_path / pkg["pair"])
        sp = spm.SentencePieceProcessor(model_file=str(root / "sentencepiece.model"))
        argos_like = ctranslate2.Translator(str(root / "model"))
        ours = ctranslate2.Translator(str(ct2_all / pkg["task"]))
        api = from_pretrained(ct2_all / pkg["task"])
        for sentence in held_out_sentences(src):
            pieces = sp.encode(sentence, out_type=str)
            a = argos_like.translate_batch([pieces], target_prefix=[[pkg["target_prefix"]]],
                                           beam_size=ARGOS_BEAM, length_penalty=ARGOS_LENPEN,
                                           num_hypotheses=ARGOS_BEAM, return_scores=True)[0]
            b = ours.translate_batch([[f"__{src}__"] + pieces], target_prefix=[[f"__{tgt}__"]],
                                     beam_size=ARGOS_BEAM, length_penalty=ARGOS_LENPEN,
                                     num_hypotheses=ARGOS_BEAM, return_scores=True)[0]
            assert [h[1:] for h in a.hypotheses] == [h[1:] for h in b.hypotheses]
            assert a.scores == b.scores
            expected = api.translate([sentence], src, tgt, beam=ARGOS_BEAM, lenpen=ARGOS_LENPEN,
                                     max_len_b=256, fairseq_ranking=False)[0]
            # argos decodes the whole hypothesis, prefix included: language tokens are control pieces
            assert sp.decode_pieces(a.hypotheses[0]) == expected
            outputs.append(expected)
    assert len(set(outputs)) > 3  # a trained model, not one string for every input


def test_package_spm_drops_language_tokens_and_encodes_as_before(argos_model, argos_out, tmp_path):
    import sentencepiece as spm

    _, data = argos_model
    out, report = argos_out
    root = unzip(out / report["packages"][0]["file"], tmp_path / "pkg")
    plain = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    package = spm.SentencePieceProcessor(model_file=str(root / "sentencepiece.model"))
    assert package.get_piece_size() == plain.get_piece_size() + 3
    for text in held_out_sentences("en") + held_out_sentences("pt_BR") + ["x __de__ y _ __en__"]:
        assert package.encode(text, out_type=str) == plain.encode(text, out_type=str)
    pieces = ["__de__", "\u2581Red", "en", "__de__", "\u2581cat", "__pt_BR__", "."]
    assert package.decode_pieces(pieces) == "Reden cat."
    assert plain.decode_pieces(pieces) != "Reden cat."  # what argos would print without them


def _fields(buf):
    """{field number: [values]} of one protobuf message (varint and length-delimited only)."""
    out, pos = {}, 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        if key & 7 == 0:
            value, pos = _read_varint(buf, pos)
        else:
            assert key & 7 == 2, f"unexpected wire type {key & 7}"
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        out.setdefault(key >> 3, []).append(value)
    return out


def _read_varint(buf, pos):
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def test_nosplit_sbd_model_is_the_onnx_minisbd_reads():
    """Decoded back: IR / opset, inputs units (int64) and features (float), the four nodes,
    the class bias (token end), and the metadata MiniSBD parses (no_ssplit on)."""
    model = _fields(argos_sbd.nosplit_model_bytes())
    assert model[1] == [argos_sbd.IR_VERSION] and _fields(model[8][0])[2] == [argos_sbd.OPSET]
    graph = _fields(model[7][0])
    assert [_fields(n)[4][0] for n in graph[1]] == [b"Cast", b"Unsqueeze", b"Mul", b"Add"]
    inputs = [_fields(v) for v in graph[11]]
    assert [i[1][0] for i in inputs] == [b"units", b"features"]
    elem_types = [_fields(_fields(i[2][0])[1][0])[1][0] for i in inputs]  # ValueInfo.type.tensor_type
    assert elem_types == [argos_sbd.INT64, argos_sbd.FLOAT]
    tensors = {_fields(t)[8][0]: _fields(t) for t in graph[5]}
    bias = struct.unpack("<5f", tensors[b"class_bias"][9][0])
    assert max(range(5), key=bias.__getitem__) == argos_sbd.TOKEN_END
    meta = {_fields(e)[1][0].decode(): _fields(e)[2][0].decode() for e in model[14]}
    assert json.loads(meta["config"])["no_ssplit"] is True and meta["lexicon"] == "null"
    assert json.loads(meta["vocab"])["_unit2id"] == {"<PAD>": 0, "<UNK>": 1}


def test_tasks_all_ctranslate2_writes_the_vocabulary_once(argos_model, ct2_all, tmp_path):
    """--tasks all: one export per task, spm.model and dict.*.txt once at the top; each task
    directory equals the single-task export byte for byte and translates through the API."""
    from fairseq_taskmoe.serve import from_pretrained

    ckpt, data = argos_model
    report = json.loads((ct2_all / "extract.json").read_text())
    assert report["tasks"] == ["de", "en", "pt_BR"] and report["all_tasks"]
    assert sorted(report["vocab_files"]) == ["dict.de.txt", "dict.en.txt", "dict.pt_BR.txt",
                                             "spm.model"]
    for task in report["tasks"]:
        assert not any(n.startswith("dict.") or n == "spm.model" for n in os.listdir(ct2_all / task))
    single = tmp_path / "en-de"
    extract(str(ckpt), ["en-de"], str(single), fmt="ctranslate2", data_dir=str(data))
    assert (single / "model.bin").read_bytes() == (ct2_all / "de" / "model.bin").read_bytes()
    sentences = held_out_sentences("en")
    assert (from_pretrained(ct2_all / "de").translate(sentences, "en", "de")
            == from_pretrained(single).translate(sentences, "en", "de"))


def test_tasks_all_plugin_one_extract_per_task(argos_model, tmp_path):
    from fairseq_taskmoe.serve import from_pretrained

    ckpt, data = argos_model
    out = tmp_path / "plugin"
    report = extract(str(ckpt), ["all"], str(out), fmt="plugin", data_dir=str(data))
    assert [report["extracts"][t]["pairs"] for t in report["tasks"]] == [["en-de"], ["de-en", "pt_BR-en"],
                                                                        ["en-pt_BR"]]
    for task in report["tasks"]:  # fairseq needs the dictionaries next to the checkpoint
        assert (out / task / "checkpoint.pt").is_file() and (out / task / "dict.en.txt").is_file()
    sentences = held_out_sentences("pt_BR")
    assert (from_pretrained(out / "en").translate(sentences, "pt_BR", "en")
            == from_pretrained(ckpt, data=str(data)).translate(sentences, "pt_BR", "en"))


# -- bad input: a clear error naming the flag, nothing written ---------------------------------

def _refused(capsys, argv, out, needle):
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fairseq-taskmoe-extract: error:") and needle in err and "\n" not in err
    assert not out.exists() and not [p for p in os.listdir(out.parent) if p.startswith("." + out.name)]
    return err


def test_argos_refuses_a_token_routed_side(token_task_ckpt, toy_data, tmp_path, capsys):
    out = tmp_path / "out"
    err = _refused(capsys, [str(token_task_ckpt), "--tasks", "all", "--format", "argos", "--data",
                            str(toy_data), "--out", str(out)], out, "--format argos: encoder layers")
    assert "no MoE layer" in err


def test_argos_refuses_an_unknown_language_code(argos_model, tmp_path, capsys, monkeypatch):
    ckpt, data = argos_model
    monkeypatch.delitem(argos_langs.ALIASES, "pt_BR")
    out = tmp_path / "out"
    _refused(capsys, [str(ckpt), "--tasks", "all", "--format", "argos", "--data", str(data), "--out",
                      str(out)], out, "language 'pt_BR' has no Argos Translate")


def test_argos_needs_a_sentencepiece_model(task_task_ckpt, toy_data, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, [str(task_task_ckpt), "--tasks", "en-de", "--format", "argos", "--data", str(toy_data),
                      "--out", str(out)], out, "needs the model's sentencepiece model")


def test_existing_output_without_force_is_kept(argos_model, tmp_path, capsys):
    ckpt, data = argos_model
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    for fmt in ("argos", "ctranslate2"):
        assert run_main([str(ckpt), "--tasks", "all", "--format", fmt, "--data", str(data),
                         "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "already exists; pass --force" in err
        assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("argv,needle", [
    (["--tasks", "all", "en-de"], "--tasks all takes no language pairs"),
    (["--tasks", "all", "--target-langs", "de"], "leave out --target-langs"),
    (["--tasks", "en-de", "--scores", "s.json"], "--scores is for --format argos"),
    (["--tasks", "all", "--format", "argos", "--prune-token-experts", "2"], "nothing to prune"),
])
def test_flag_combinations_are_refused(argos_model, tmp_path, capsys, argv, needle):
    ckpt, data = argos_model
    out = tmp_path / "out"
    _refused(capsys, [str(ckpt), "--data", str(data), "--out", str(out), *argv], out, needle)


def test_argos_subset_of_pairs_quotes_scores(argos_model, tmp_path):
    """--tasks en-de packages that pair only; --scores (fairseq-taskmoe-evaluate's JSON) goes
    into its README, and a pair the file lacks is said to be missing."""
    ckpt, data = argos_model
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"checkpoint": str(ckpt), "pairs": {
        "en-de": {"bleu": 12.345, "chrf": 40.0, "sentences": 13}}}))
    out = tmp_path / "out"
    report = extract(str(ckpt), ["en-de", "en-pt_BR"], str(out), fmt="argos", data_dir=str(data),
                     scores=str(scores))
    assert [p["file"] for p in report["packages"]] == ["en_de.argosmodel", "en_pb.argosmodel"]
    readmes = {}
    for pkg in report["packages"]:
        with zipfile.ZipFile(out / pkg["file"]) as zf:
            readmes[pkg["pair"]] = zf.read(next(n for n in zf.namelist() if n.endswith("README.md"))).decode()
    assert "bleu 12.35, chrf 40.00 on 13 sentences" in readmes["en-de"]
    assert "`scores.json` has no score for en-pt_BR" in readmes["en-pt_BR"]
