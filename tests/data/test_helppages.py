import shutil
import zipfile

import pytest

from fairseq_taskmoe.data.helppages import align_help, help_key, text_blocks
from fairseq_taskmoe.data.sources import iter_help_files

from .conftest import help_page

C = "usr/share/help/C/gnome-help/files-copy.page"
DE = "usr/share/help/de/gnome-help/files-copy.page"

EN_PAGE = b"""<page xmlns="http://projectmallard.org/1.0/" id="files-copy">
<info><desc>Copy or move items to a new folder.</desc>
<credit type="author"><name>Cristopher Thomas</name></credit>
<license><p>Creative Commons Share Alike 3.0</p></license></info>
<title>Copy or move files and folders</title>
<p>Right-click and select <gui>Copy</gui>, or press
 <keyseq><key>Ctrl</key><key>C</key></keyseq>.</p>
<steps><item><p>Open the <guiseq><gui>Files</gui><gui>Preferences</gui></guiseq> window.</p></item></steps>
<code>cp a b</code>
<p>GNOME</p>
</page>"""
DE_PAGE = """<page xmlns="http://projectmallard.org/1.0/" id="files-copy" xml:lang="de">
<info><desc>Objekte in einen neuen Ordner kopieren oder verschieben.</desc>
<credit type="author"><name>Cristopher Thomas</name></credit>
<license><p>Creative Commons Share Alike 3.0</p></license>
<credit type="translator copyright"><name>Mario</name></credit></info>
<title>Dateien und Ordner kopieren oder verschieben</title>
<p>Klicken Sie mit der rechten Maustaste und wählen Sie <gui>Kopieren</gui>, oder drücken Sie
 <keyseq><key>Strg</key><key>C</key></keyseq>.</p>
<steps><item><p>Öffnen Sie das Fenster <guiseq><gui>Dateien</gui><gui>Einstellungen</gui></guiseq>.</p></item></steps>
<code>cp a b</code>
<p>GNOME</p>
</page>""".encode("utf-8")


def test_blocks_in_document_order_with_rendered_inline_markup():
    assert text_blocks(EN_PAGE) == [
        "Copy or move items to a new folder.",
        "Copy or move files and folders",
        "Right-click and select Copy, or press Ctrl+C.",
        "Open the Files ▸ Preferences window.",
        "GNOME",
    ]  # credits, licence and code are not prose


def test_translated_page_pairs_block_by_block_and_drops_untranslated():
    pairs, stats = align_help({C: EN_PAGE, DE: DE_PAGE})
    assert stats == {"pages_aligned": 1, "pages_skipped": 0}
    assert [(lang, en) for lang, en, _ in pairs] == [("de", b) for b in text_blocks(EN_PAGE)[:4]]
    assert pairs[2][2] == "Klicken Sie mit der rechten Maustaste und wählen Sie Kopieren, oder drücken Sie Strg+C."


@pytest.mark.parametrize("translated", [
    help_page(["Titel", "Nur ein Absatz"]),  # translated from an older English page: other block count
    b"<page><p>unclosed</page>",  # not well-formed
])
def test_page_whose_structure_differs_is_skipped_whole(translated):
    pairs, stats = align_help({C: EN_PAGE, DE: translated})
    assert pairs == [] and stats == {"pages_aligned": 0, "pages_skipped": 1}


def test_help_key_and_reader(tmp_path):
    assert help_key("./usr/share/help/pt_BR/gedit/index.page") == ("pt_BR", "gedit/index.page")
    assert help_key("usr/share/help/de/gedit/figures/x.png") is None
    whl = tmp_path / "x.zip"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(C, EN_PAGE)
        zf.writestr(DE, DE_PAGE)
        zf.writestr("usr/share/libreoffice/help/de/text/shared/main.xml", b"<p/>")
        zf.writestr("usr/share/help/de/libreoffice/x.page", b"<page/>")
    assert sorted(p for p, _ in iter_help_files(str(whl))) == [C, DE]  # LibreOffice paths never read
