"""The loop detector on hand-written hypotheses, Latin and CJK."""

import pytest

from fairseq_taskmoe.scoring.loops import has_loop, loop_shares, tokens


@pytest.mark.parametrize("text", [
    "Einn Sie Sie Sie Sie eine eine eine eine",        # one token 4 times in a row
    "die Datei die Datei die Datei die Datei öffnen",  # the 3-gram "die Datei die" 3 times
    "Open the file and open the file and open the file and",
    "a b c x a b c y a b c",                          # a 3-gram 3 times, not adjacent
])
def test_latin_loops(text):
    assert has_loop(text, "de")


@pytest.mark.parametrize("text", [
    "Datei Datei Datei speichern",                       # 3 in a row is not 4
    "die Datei die Datei speichern",                    # a 3-gram twice
    "a b a b a b",                                      # "a b a" and "b a b" twice each
    "Speichert die Datei unter einem neuen Namen.",
    "",
])
def test_latin_non_loops(text):
    assert not has_loop(text, "fr")


@pytest.mark.parametrize("text,lang", [
    ("ファイルを開くファイルを開くファイルを開く", "ja"),    # a character 6-gram 3 times
    ("のののの", "ja"),                                   # one character 4 times in a row
    ("設定設定設定設定を保存", "ja"),                       # a 2-character word 4 times in a row
    ("保存保存保存保存", "zh_Hans"),
    ("文件文件文件文件", "zh"),
    ("파일 파일 파일 파일", "ko"),                          # Korean is written with spaces: words
])
def test_cjk_loops(text, lang):
    assert has_loop(text, lang)


@pytest.mark.parametrize("text,lang", [
    # a Japanese reference of data/loc8 that repeats a loanword three times (the literal
    # character 3-gram rule flags it; a word 3-gram rule would not)
    ("カテゴリーは空です。カテゴリーにはイベントもしくは子カテゴリーを含めることができます。", "ja"),
    ("設定設定設定を保存", "ja"),                          # 3 in a row
    ("有 %s 个新增文件，有 %s 个文件已被修改，有 %s 个文件已被移除", "zh_Hans"),
    ("価格は 10000 円です", "ja"),                          # a number is one token, not four zeros
    ("파일을 저장합니다", "ko"),
])
def test_cjk_non_loops(text, lang):
    assert not has_loop(text, lang)


def test_cjk_tokens_keep_latin_runs_whole():
    assert tokens("設定 10000 を%s開く。", "ja") == ["設", "定", "10000", "を", "%s", "開", "く", "。"]
    assert tokens("파일을 저장", "ko") == ["파일을", "저장"]


def test_loop_shares_per_pair_and_group():
    shares = loop_shares({"en-de": ["a a a a", "ok"], "de-en": ["fine", "b b b b"], "en-ja": ["のののの", "良い"]})
    assert shares["pairs"]["en-de"] == {"loops": 1, "sentences": 2, "share": 0.5}
    assert shares["out-of-English"] == {"loops": 2, "sentences": 4, "share": 0.5}
    assert shares["into-English"] == {"loops": 1, "sentences": 2, "share": 0.5}
    assert shares["all"]["loops"] == 3 and shares["all"]["share"] == pytest.approx(0.5)
