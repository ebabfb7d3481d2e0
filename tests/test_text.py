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
