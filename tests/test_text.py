from nvdata.text import content_id, normalize_text, text_hash


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
    samples += ["Hello,  World!", " a_b ", "\x1c\x1dx\x1f", "x\x0by", "tab\tand\nnewline"]
    for text in samples:
        assert normalize_text(text) == _normalize_unicode(text), repr(text)
