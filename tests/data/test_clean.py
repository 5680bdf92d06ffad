import pytest

from fairseq_taskmoe.data.clean import clean_pair, normalize_lang, placeholders, strip_markup


@pytest.mark.parametrize("code,canonical", [
    ("pt-BR", "pt_BR"), ("pt_br", "pt_BR"), ("PT_BR", "pt_BR"),
    ("de_DE", "de"), ("fr_FR", "fr"), ("ja_JP", "ja"), ("ko_KR", "ko"), ("es_419", "es_419"),
    ("zh-hans", "zh_Hans"), ("zh_CN", "zh_Hans"), ("zh_TW", "zh_Hant"), ("zh-Hant", "zh_Hant"), ("zh", "zh_Hans"),
    ("sr@latin", "sr_Latn"), ("sr_Latn", "sr_Latn"), ("no", "nb"), ("nb_NO", "nb"), ("iw", "he"),
    ("de_Formal", None), ("ca@valencia", None), ("klingon!", None), ("", None),
])
def test_normalize_lang(code, canonical):
    assert normalize_lang(code) == canonical


@pytest.mark.parametrize("raw,clean", [
    ("_File", "File"), ("&Open", "Open"), ("Sa&ve", "Save"), ("~Edit", "Edit"), ("Save _As…", "Save As…"),
    ("ファイル(_F)", "ファイル"), ("保存 (&S)...", "保存..."), ("ファイル(F)", "ファイル"),
    ("Option (1)", "Option (1)"), ("(a) item", "(a) item"),
    ("<b>Bold</b> text", "Bold text"), ('<a href="x">link</a>', "link"),
    ("Tom &amp; Jerry", "Tom & Jerry"), ("5 &lt; 6", "5 < 6"), ("it&#39;s", "it's"),
    ("Delete %(file_name)s", "Delete %(file_name)s"), ("user_id {user_id}", "user_id {user_id}"),
    ("  many   spaces\n", "many spaces"),
])
def test_strip_markup(raw, clean):
    assert strip_markup(raw) == clean


@pytest.mark.parametrize("a,b,same", [
    ("%s and %d", "%d und %s", True),
    ("%(name)s", "%(name)s", True), ("%(name)s", "%(nom)s", False),
    ("{name}", "{name}", True), ("{name}", "{nom}", False),
    ("%1$d of %2$s", "%2$s de %1$d", True), ("%1$d", "%2$d", False),
    ("%s %s", "%s", False), ("100%% done", "100%% fertig", True),
])
def test_placeholder_multisets(a, b, same):
    assert (placeholders(a) == placeholders(b)) is same


@pytest.mark.parametrize("src,tgt,reason", [
    ("translator-credits", "Hans Muster", "credits"),
    ("translator_credits", "Hans Muster", "credits"),
    ("Your names", "Hans", "credits"),
    ("Delete %s", "Supprimer %d", "placeholders"),
    ("Delete %(n)s", "Supprimer", "placeholders"),
    ("Django", "Django", "untranslated"),
    ("_Django", "Django", "untranslated"),  # equal after accelerator stripping
    ("A", "Ein A", "too_short"), ("42", "zweiundvierzig", "too_short"),
    ("Yes", "Ja, das ist eine sehr lange Übersetzung eines kurzen Wortes", "length_ratio"),
    ("x" * 500, "y" * 500, "too_long"),
    ("<br/>", "<br/>", "empty"),
])
def test_clean_pair_drops(src, tgt, reason):
    assert clean_pair(src, tgt) == (None, reason)


@pytest.mark.parametrize("src,tgt,expected", [
    ("OK", "Aceptar", ("OK", "Aceptar")),  # short pairs are not ratio victims
    ("_Save %(n)s items", "%(n)s Elemente _speichern", ("Save %(n)s items", "%(n)s Elemente speichern")),
    ("Delete selected files", "選択したファイルを削除", ("Delete selected files", "選択したファイルを削除")),
])
def test_clean_pair_keeps(src, tgt, expected):
    assert clean_pair(src, tgt) == (expected, None)
