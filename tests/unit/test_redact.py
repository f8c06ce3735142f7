from hubruntime.redact import redact


def test_userinfo_removed_everywhere():
    text = "open rtsp://admin:s3cr3t@10.0.0.2:554/x failed; retry rtsps://u@h/y"
    out = redact(text)
    assert "s3cr3t" not in out and "admin" not in out
    assert "rtsp://***@10.0.0.2:554/x" in out and "rtsps://***@h/y" in out


def test_query_secrets_and_plain_urls():
    assert redact("http://h/p?user=a&password=xyz&x=1") == "http://h/p?user=a&password=***&x=1"
    assert redact("rtsp://127.0.0.1:8554/cam") == "rtsp://127.0.0.1:8554/cam"


def test_raw_at_sign_inside_password():
    out = redact("rtsp://viewer:p@ss@word@10.0.0.2/x and rtsp://h/y?x=a@b")
    assert "ss" not in out.split("10.0.0.2")[0] and "word" not in out
    assert out.startswith("rtsp://***@10.0.0.2/x")
