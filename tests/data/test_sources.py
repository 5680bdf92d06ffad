"""find_cached: which cached wheel / sdist answers a --packages spec (packaging's file-name rules)."""
import pytest

from fairseq_taskmoe.data.sources import find_cached


@pytest.fixture
def cache(tmp_path):
    for name in ("Django-5.2.9-py3-none-any.whl", "django-5.2.10-py3-none-any.whl", "django-5.2.10.tar.gz",
                 "django_cms-5.1.3-py3-none-any.whl", "django-countries-9.1.0.tar.gz", "thonny-5.0.zip",
                 "django-9.9_all.deb", "django-notes.txt", "broken-x.whl"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("spec,expected", [
    ("django==5.2.9", "Django-5.2.9-py3-none-any.whl"),  # names compare canonicalised
    ("django", "django-5.2.10.tar.gz"),  # newest by version (5.2.10 > 5.2.9), then last by name
    ("Django-CMS==5.1.3", "django_cms-5.1.3-py3-none-any.whl"),
    ("django.countries==9.1.0", "django-countries-9.1.0.tar.gz"),  # a dash inside an sdist's name
    ("thonny==5.0.0", "thonny-5.0.zip"),  # versions compare as pip compares them
    ("django==5.3", None),
    ("django-c", None),
    ("broken", None),
])
def test_find_cached(cache, spec, expected):
    found = find_cached(str(cache), spec)
    assert (found and found.rsplit("/", 1)[1]) == expected


@pytest.mark.parametrize("spec", ["dj ango", "django==5.2 ; python_version>'3'", "django==not-a-version", "==1.0"])
def test_bad_spec_names_the_flag(cache, spec):
    with pytest.raises(ValueError, match="--packages: .* is not NAME or NAME==VERSION"):
        find_cached(str(cache), spec)
