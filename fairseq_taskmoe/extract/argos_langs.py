"""Language codes and names for Argos Translate packages, from a model's language names.

Argos Translate and LibreTranslate name a language by a short code (mostly ISO 639-1) and
a display name (``metadata.json``'s ``from_code`` / ``from_name``). Their own codes for
variants: ``pb`` Portuguese (Brazil), ``zh`` Chinese (simplified), ``zt`` Chinese
(traditional); LibreTranslate's API shows ``pb`` / ``zh`` / ``zt`` as ``pt-BR`` /
``zh-Hans`` / ``zh-Hant``. A model's languages are fairseq names (``pt_BR``, ``zh_Hans``
in data/loc8): mapped here, and refused when unknown rather than guessed.
"""

from typing import Tuple

# LibreTranslate's languages (argos codes) and the English names its packages use.
NAMES = {
    "ar": "Arabic", "az": "Azerbaijani", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan",
    "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "ga": "Irish", "gl": "Galician", "he": "Hebrew",
    "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "ms": "Malay", "nb": "Norwegian",
    "nl": "Dutch", "pb": "Portuguese (Brazil)", "pl": "Polish", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sq": "Albanian",
    "sv": "Swedish", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian",
    "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese", "zt": "Chinese (traditional)",
}

# fairseq / gettext language names that are not argos codes themselves.
ALIASES = {
    "pt_BR": "pb", "pt-BR": "pb", "pt_PT": "pt", "zh_Hans": "zh", "zh_CN": "zh", "zh-Hans": "zh",
    "zh_Hant": "zt", "zh_TW": "zt", "zh-Hant": "zt", "nb_NO": "nb", "no": "nb",
}


def argos_language(lang: str) -> Tuple[str, str]:
    """(argos code, English name) of the model language ``lang``; ValueError when unknown."""
    code = ALIASES.get(lang, lang)
    if code not in NAMES:
        known = ", ".join(sorted(set(NAMES) | set(ALIASES)))
        raise ValueError(f"--format argos: language {lang!r} has no Argos Translate / LibreTranslate "
                         f"code; known languages: {known}")
    return code, NAMES[code]

