"""Argos packages installed offline and served by LibreTranslate (in its own environment).

Runs when FAIRSEQ_TASKMOE_LT_ENV names LibreTranslate's virtualenv: ``make
test-libretranslate`` (which .ci/run calls after ``make libretranslate-env``) sets it;
plain ``make test`` skips this module. Everything is on 127.0.0.1; every request has a
timeout, every loop a bound, and the server's process group is killed at the end
whatever happens (the ``server`` fixture's finalizer).

Equality reference: our API on the pair's CTranslate2 export with argos' decoding options
(``fairseq_taskmoe/serve/libretranslate.py`` says which options fix them). argostranslate's
API must return that text exactly; LibreTranslate's /translate must return it after its
own post-processing (``improve_translation_formatting`` + ``html.unescape``, applied here
by LibreTranslate's own function), which no option turns off.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from argos_testlib import ARGOS_PAIRS, build_spm_data, held_out_sentences, train_toy
from fairseq_taskmoe.extract import extract
from fairseq_taskmoe.serve import libretranslate as lt

LT_ENV = os.environ.get("FAIRSEQ_TASKMOE_LT_ENV")
pytestmark = pytest.mark.skipif(not LT_ENV, reason="LibreTranslate integration test: `make test-libretranslate` "
                                                   "(run by .ci/run) sets FAIRSEQ_TASKMOE_LT_ENV")
SCRIPT = Path(__file__).with_name("lt_env_script.py")
PAIRS = ARGOS_PAIRS.split(",")
ARGOS = {"en": "en", "de": "de", "pt_BR": "pb"}
API_CODE = {"en": "en", "de": "de", "pt_BR": "pt-BR"}  # LibreTranslate's API shows pb as pt-BR
DECODING = dict(beam=4, lenpen=0.2, max_len_b=256, fairseq_ranking=False)
N_SENTENCES = 6


@pytest.fixture(scope="module")
def lt_env():
    env = Path(LT_ENV)
    for tool in ("python", "libretranslate"):
        assert (env / "bin" / tool).is_file(), f"FAIRSEQ_TASKMOE_LT_ENV={LT_ENV}: no bin/{tool} (make libretranslate-env)"
    return str(env)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Toy model -> --tasks all --format argos (packages) and --format ctranslate2 (reference)."""
    root = tmp_path_factory.mktemp("lt")
    data = build_spm_data(root / "data")
    ckpt = train_toy(data, root / "ckpt")
    extract(str(ckpt), ["all"], str(root / "argos"), fmt="argos", data_dir=str(data))
    extract(str(ckpt), ["all"], str(root / "ct2"), fmt="ctranslate2", data_dir=str(data))
    return root


@pytest.fixture(scope="module")
def expected(built):
    """{pair: [(sentence, our API's translation)]} for held-out sentences of every pair."""
    from fairseq_taskmoe.serve import from_pretrained

    out = {}
    for pair in PAIRS:
        src, tgt = pair.split("-")
        model = from_pretrained(built / "ct2" / tgt)  # task = target language
        sentences = held_out_sentences(src, N_SENTENCES)
        out[pair] = [(s, model.translate([s], src, tgt, **DECODING)[0]) for s in sentences]
    assert len({t for v in out.values() for _, t in v}) > 3, "the toy model must not say one thing"
    return out


def lt_script(lt_env, mode, request, home):
    home.mkdir(parents=True, exist_ok=True)
    req, res = home / f"{mode}_request.json", home / f"{mode}_result.json"
    req.write_text(json.dumps(request))
    subprocess.run([lt.lt_python(lt_env), str(SCRIPT), mode, str(req), str(res)], env=lt.environment(str(home)),
                   check=True, timeout=300)
    return json.loads(res.read_text())


def test_argostranslate_installs_offline_and_translates_like_our_api(lt_env, built, expected, tmp_path):
    packages = lt.package_files(str(built / "argos"))
    split = ["One sentence. Two sentences! Three?", "  padded line  "]
    request = {"packages": packages, "split": split,
               "sentences": {"%s-%s" % (ARGOS[p.split("-")[0]], ARGOS[p.split("-")[1]]): [s for s, _ in v]
                             for p, v in expected.items()}}
    result = lt_script(lt_env, "argos", request, tmp_path / "home")
    assert result["installed"] == sorted(request["sentences"])
    for pair, pairs in expected.items():
        key = "%s-%s" % (ARGOS[pair.split("-")[0]], ARGOS[pair.split("-")[1]])
        assert result["translations"][key] == [ours for _, ours in pairs], pair
        assert result["sentences"][key] == [[s.strip()] for s in split]  # the packaged splitter keeps lines whole
    assert not (tmp_path / "home" / "data" / "argos-translate" / "minisbd").exists()  # nothing downloaded


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(lt_env, built, tmp_path_factory):
    home = tmp_path_factory.mktemp("lt_home")
    files = lt.package_files(str(built / "argos"))
    lt.install(lt_env, files, str(home))
    srv = lt.Server(lt_env, str(home), free_port(), lt.languages(files), threads=2)
    try:
        srv.start(timeout=180)
        yield srv
    finally:
        srv.stop()
        assert srv.proc is None or srv.proc.poll() is not None, "libretranslate still running"


def test_languages_lists_the_packages(server):
    langs = lt.get_json(server.url + "/languages")
    assert sorted(l["code"] for l in langs) == sorted(API_CODE.values())
    names = {l["code"]: l["name"] for l in langs}
    assert names["pt-BR"] == "Portuguese (Brazil)" and names["de"] == "German"
    targets = {l["code"]: set(l["targets"]) for l in langs}
    for pair in PAIRS:
        src, tgt = pair.split("-")
        assert API_CODE[tgt] in targets[API_CODE[src]]


def test_translate_equals_our_api_for_every_pair(server, expected, lt_env, tmp_path, capsys):
    served, sources = [], []
    for pair, pairs in expected.items():
        src, tgt = (API_CODE[l] for l in pair.split("-"))
        for sentence, _ in pairs:
            status, body = lt.post_json(server.url + "/translate", {"q": sentence, "source": src, "target": tgt})
            assert status == 200, body
            served.append(body["translatedText"])
        status, body = lt.post_json(server.url + "/translate",
                                    {"q": [s for s, _ in pairs], "source": src, "target": tgt})
        assert status == 200 and body["translatedText"] == served[-len(pairs):]  # batch == one by one
        sources += pairs
    formatted = lt_script(lt_env, "format", [[s, ours] for s, ours in sources], tmp_path / "home")
    assert served == formatted
    raw_equal = sum(a == ours for a, (_, ours) in zip(served, sources))
    with capsys.disabled():
        print(f"\nLibreTranslate == our API on {len(served)}/{len(served)} sentences after its formatting; "
              f"{raw_equal}/{len(served)} without it")


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server, expected):
    url = server.url + "/translate"
    sentence, ours = expected["en-de"][0]
    for payload in ({"source": "en", "target": "de"},                     # no q
                    {"q": sentence, "source": "en", "target": "xx"},     # unknown language
                    {"q": sentence, "source": "en", "target": "de", "format": "pdf"},
                    b'{"q": "unterminated', b'["q", "a list"]'):           # not JSON; not an object
        status, body = lt.post_json(url, payload)
        assert 400 <= status < 500, (payload, status, body)
        assert isinstance(payload, bytes) or "error" in body, (payload, body)
    status, body = lt.post_json(url, {"q": sentence, "source": "en", "target": "de"})
    assert status == 200 and body["translatedText"]
    assert server.proc.poll() is None


def test_bench_runs_at_toy_scale(lt_env, built, tmp_path):
    """bench/libretranslate.py end to end, tiny: LibreTranslate and the in-process task-MoE, both
    mixes, 1 and 2 clients, every request answered (speed is the script's business, not asserted)."""
    from taskmoe_testlib import load_script

    out = tmp_path / "bench.json"
    load_script("libretranslate").main([
        "--checkpoint", str(built / "ckpt" / "checkpoint_last.pt"), "--data", str(built / "data"),
        "--packages", str(built / "argos"), "--lt-env", lt_env, "--systems", "libretranslate,fairseq task-moe",
        "--clients", "1,2", "--duration", "1", "--sentences", "3", "--port", str(free_port()),
        "--out", str(out)])
    result = json.loads(out.read_text())
    points = {(r["system"], r["mix"], r["clients"]) for r in result["rows"]}
    assert points == {(s, m, c) for s in ("libretranslate", "fairseq task-moe")
                      for m in ("uniform", "zipf") for c in (1, 2)}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in result["rows"]), result["rows"]
    assert result["memory"]["libretranslate"]["packages"] == len(PAIRS)
    assert all(m["rss_loaded_mb"] > 0 for m in result["memory"].values())
