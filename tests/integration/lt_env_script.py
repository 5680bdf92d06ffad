"""Run with LibreTranslate's Python (not ours): argostranslate's API and LibreTranslate's formatting.

    python lt_env_script.py argos REQUEST.json RESULT.json
        REQUEST: {"packages": [paths], "sentences": {"en-de": [...], ...}} (argos codes);
        installs the packages with ``package.install_from_path`` (the packages dir comes from
        ARGOS_PACKAGES_DIR), translates every sentence with ``translate.get_translation_from_codes``
        and splits each with the package's sentencizer (MiniSBD on the packaged model).
    python lt_env_script.py format REQUEST.json RESULT.json
        REQUEST: [[source, translation], ...]; RESULT: LibreTranslate's post-processing of each
        (``improve_translation_formatting`` then ``html.unescape``, as its /translate does).
"""

import json
import sys


def argos(request):
    from argostranslate import package, translate
    from argostranslate.sbd import MiniSBDSentencizer

    for path in request["packages"]:
        package.install_from_path(path)
    installed = {(p.from_code, p.to_code): p for p in package.get_installed_packages()}
    out = {"installed": sorted("%s-%s" % k for k in installed), "translations": {}, "sentences": {}}
    for pair, sentences in request["sentences"].items():
        src, tgt = pair.split("-")
        translation = translate.get_translation_from_codes(src, tgt)
        out["translations"][pair] = [translation.translate(s) for s in sentences]
        splitter = MiniSBDSentencizer(installed[(src, tgt)])
        out["sentences"][pair] = [splitter.split_sentences(s) for s in request.get("split", [])]
    return out


def format_(request):
    from html import unescape

    from libretranslate.language import improve_translation_formatting

    return [unescape(improve_translation_formatting(src, hyp)) for src, hyp in request]


if __name__ == "__main__":
    mode, request_path, result_path = sys.argv[1:]
    with open(request_path) as f:
        req = json.load(f)
    result = {"argos": argos, "format": format_}[mode](req)
    with open(result_path, "w") as f:
        json.dump(result, f, ensure_ascii=False)
