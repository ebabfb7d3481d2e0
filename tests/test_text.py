from nvdata.text import content_id, normalize_text, remove_invisible, text_hash


def test_normalization_ignores_case_space_punctuation_and_unicode_form():
    a = "The  Quick, brown FOX -- jumps!"
    b = "the quick brown fox jumps"
    assert normalize_text(a) == normalize_text(b) == "the quick brown fox jumps"
    assert text_hash("ｆｕｌｌ width") == text_hash("full width")  # NFKC
    assert text_hash("a,b") == text_hash("a, b")
    assert text_hash("cat") != text_hash("cats")


def test_content_id_is_unambiguous():
    assert content_id("ab", "c") != content_id("a", "bc")
    assert content_id("x") == content_id("x")


def test_ascii_fast_path_equals_the_general_rule():
    import random

    from nvdata.text import _normalize_unicode

    rng = random.Random(0)
    alphabet = [chr(i) for i in range(128)]
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(5000)]
    samples += ["Hello,  World!", " a_b ", "\x1c\x1dx\x1f", "x\x0by", "tab\tand\nnewline", "bell\x07in\x00side\x7f"]
    for text in samples:
        assert normalize_text(text) == _normalize_unicode(text), repr(text)


def test_invisible_characters_are_removed_not_turned_into_spaces():
    base = "please cancel my subscription before friday"
    hidden = [  # the three first, then the rest of the class the rule names
        ("cancel", "can\u00adcel"),  # soft hyphen
        ("subscription", "subscrip\u200btion"),  # zero-width space
        ("subscription", "sub\u2060scription"),  # word joiner
        ("please", "\ufeffplease"),  # BOM
        ("cancel", "can\u200ccel"), ("cancel", "can\u200dcel"),  # zero-width (non-)joiner
        ("subscription", "sub\u200escription"),  # left-to-right mark
        ("cancel", "can\u034fcel"),  # combining grapheme joiner
        ("cancel", "can\ufe0fcel"), ("cancel", "can\U000e0101cel"),  # variation selectors
        ("cancel", "can\u3164cel"),  # Hangul filler (a "letter" to \w)
        ("cancel", "can\x00cel"), ("subscription", "sub\x7fscription"),  # ASCII controls
        ("friday", "fri\x9bday"),  # C1 control
    ]
    for word, variant in hidden:
        text = base.replace(word, variant)
        assert normalize_text(text) == base, repr(variant)
        assert text_hash(text) == text_hash(base)
    # visible separators still separate: whitespace (incl. NEL and NBSP) and punctuation
    assert normalize_text("can\u0085cel") == normalize_text("can\u00a0cel") == normalize_text("can-cel") == "can cel"
    assert remove_invisible("Can\u00adcel me\x00") == "Cancel me"
    # the BM25 tokenizer sees the same words
    from nvdata.mine.okapi import Tokenizer

    assert Tokenizer()("Please can\u00adcel my sub\u200bscription") == ["please", "cancel", "my", "subscription"]
