"""Cleaning of (English, translation) pairs and language-code normalisation.

Canonical language codes (see docs/DATA.md): ``ll[_Ssss][_RR]`` with underscores only,
because fairseq splits language pairs on ``-`` (``en-pt_BR`` must stay two languages).
"""
import html
import re
from collections import Counter

# Regions dropped because they are the language's "home" region: de_DE is just de.
_HOME_REGION = {
    "ar": "SA", "be": "BY", "ca": "ES", "cs": "CZ", "da": "DK", "el": "GR", "et": "EE",
    "fa": "IR", "he": "IL", "hi": "IN", "ja": "JP", "ko": "KR", "nb": "NO", "sl": "SI",
    "sq": "AL", "sr": "RS", "sv": "SE", "uk": "UA", "vi": "VN", "en": "US", "ms": "MY",
    "ka": "GE", "hy": "AM", "kk": "KZ", "bn": "BD", "ta": "IN", "te": "IN", "ur": "PK",
    "fil": "PH", "sw": "KE", "gu": "IN", "mr": "IN", "km": "KH", "lo": "LA", "my": "MM",
    "ne": "NP", "si": "LK", "zu": "ZA", "af": "ZA", "ga": "IE", "cy": "GB", "eu": "ES",
    "gl": "ES", "ast": "ES", "uz": "UZ", "az": "AZ", "ky": "KG", "tg": "TJ", "mn": "MN",
}
# Chinese is keyed by script, not country: zh_CN and zh_Hans are the same written language.
_ZH = {"cn": "zh_Hans", "sg": "zh_Hans", "hans": "zh_Hans", "tw": "zh_Hant",
       "hk": "zh_Hant", "mo": "zh_Hant", "hant": "zh_Hant"}
_ALIAS = {"no": "nb", "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "tl": "fil"}
_MODIFIER_SCRIPT = {"latin": "Latn", "cyrillic": "Cyrl", "latn": "Latn", "cyrl": "Cyrl"}
_CODE_RE = re.compile(
    r"^(?P<lang>[a-zA-Z]{2,3})(?:[-_](?P<script>[a-zA-Z]{4}))?"
    r"(?:[-_](?P<region>[a-zA-Z]{2}|[0-9]{3}))?(?:@(?P<mod>[a-zA-Z]+))?$"
)


def normalize_lang(code):
    """Canonical code for a catalog/CLI language code, or None if it is not one.

    pt-BR, pt_br -> pt_BR; de_DE -> de; zh-hans, zh_CN -> zh_Hans; sr@latin -> sr_Latn;
    no, nb_NO -> nb. Non-standard variants such as pretalx's ``de_Formal`` -> None.
    """
    m = _CODE_RE.match(code.strip())
    if not m:
        return None
    lang = m.group("lang").lower()
    lang = _ALIAS.get(lang, lang)
    script, region, mod = m.group("script"), m.group("region"), m.group("mod")
    if lang == "zh":
        key = (script or region or "").lower()
        return _ZH.get(key, "zh_Hans" if not key else None)
    if mod:
        if mod.lower() not in _MODIFIER_SCRIPT or script:
            return None  # e.g. ca@valencia: a real variant, but not a script we can name
        script = _MODIFIER_SCRIPT[mod.lower()]
    parts = [lang]
    if script:
        parts.append(script.title())
    if region:
        region = region.upper()
        if region != lang.upper() and _HOME_REGION.get(lang) != region:
            parts.append(region)
    return "_".join(parts)


# --- text cleaning ---------------------------------------------------------------

# "ファイル(_F)" -> "ファイル": an explicit marker, or a bare letter right after CJK text
# ("Option (1)" and "(a) item" in English stay untouched).
_CJK_ACCEL = re.compile(
    r"(?<=[\u3000-\u9fff\uac00-\ud7af])\s*[(（][_&~]?[A-Z0-9][)）]|\s*[(（][_&~][A-Za-z0-9][)）]"
)
# "_File", "&Open", "Sa&ve"; an "&" that starts an entity (&amp; &#39;) is not an accelerator.
_AMP = r"&(?!#?\w+;)"
_ACCEL = re.compile(r"(?<![\w&~_])(?:_|~|%s)(?=\w)|(?<=\w)(?:~|%s)(?=\w)" % (_AMP, _AMP))
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_SPACE = re.compile(r"\s+")


def strip_markup(text):
    """Remove accelerators, HTML tags and entities; collapse whitespace."""
    text = _TAG.sub(" ", text)
    # Protect placeholders and identifiers (%(file_name)s, {user_id}) from accelerator stripping.
    protected = []

    def _keep(m):
        protected.append(m.group(0))
        return "\x00%d\x00" % (len(protected) - 1)

    text = PLACEHOLDER_RE.sub(_keep, text)
    text = re.sub(r"\b\w+_\w+\b", _keep, text)  # snake_case identifiers keep their underscores
    text = _CJK_ACCEL.sub("", text)
    text = _ACCEL.sub("", text)
    text = re.sub("\x00(\\d+)\x00", lambda m: protected[int(m.group(1))], text)
    text = html.unescape(text)  # after accelerators, so "&amp;" never looks like one
    return _SPACE.sub(" ", text).strip()


PLACEHOLDER_RE = re.compile(
    r"%(?:\d+\$)?(?:\([A-Za-z0-9_.\-]+\))?[-+ #0]*\d*(?:\.\d+)?[hlLqjzt]*[sdifuxXeEgGcrab%]"
    r"|%\d+\b"  # Qt-style %1
    r"|\{[A-Za-z0-9_.\[\]]*(?::[^{}]*)?\}"  # {name}, {0}, {}, {x:.2f}
)


def placeholders(text):
    """Multiset of placeholders; positional indices are kept so %1$s != %2$s."""
    return Counter(p for p in PLACEHOLDER_RE.findall(text) if p != "%%")


_CREDITS = re.compile(
    r"translator[-_ ]?credits|translator[-_ ]?comments|your[ -]names?|your[ -]emails?"
    r"|^translators?$|^credits$|^translated by\b",
    re.IGNORECASE,
)
_LETTER = re.compile(r"[^\W\d_]")

# Reason names double as keys in the data card's drop counts.
REASONS = ("empty", "credits", "untranslated", "too_short", "placeholders", "length_ratio", "too_long")


def clean_pair(src, tgt, max_ratio=3.0, max_chars=400):
    """Return (src, tgt) cleaned, or (None, reason) when the pair must be dropped."""
    if _CREDITS.search(src):
        return None, "credits"
    # Placeholders are compared before markup stripping so that "%(count)s" survives as is.
    if placeholders(src) != placeholders(tgt):
        return None, "placeholders"
    src, tgt = strip_markup(src), strip_markup(tgt)
    if not src or not tgt:
        return None, "empty"
    if src == tgt:
        return None, "untranslated"
    if len(_LETTER.findall(src)) < 2:
        return None, "too_short"
    if len(src) > max_chars or len(tgt) > max_chars:
        return None, "too_long"
    # CJK scripts pack ~2-4 Latin characters per glyph, so the ratio bound is loose on purpose.
    # +5 smoothing: "OK" -> "Aceptar" is a fine pair although its raw ratio is 3.5.
    ratio = (max(len(src), len(tgt)) + 5) / (min(len(src), len(tgt)) + 5)
    if ratio > max_ratio * (2 if _is_cjk(tgt) else 1):
        return None, "length_ratio"
    return (src, tgt), None


def _is_cjk(text):
    return any("\u3040" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" for ch in text)
