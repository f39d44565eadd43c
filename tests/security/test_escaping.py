"""What a notice's text can do downstream: nothing. Property tests of the email message
(no header can be added through a title, a user name or an id; the HTML part escapes
everything), of the Telegram text (only Vestnik's own <b> and <a>), and a reading of the
web pages' scripts (text goes in through textContent only; links are http(s) only,
checked by running the widget's own safeLink in Node). tests/forward/test_forward_job.py
sends one hostile notice through a real SMTP server; these cover every string."""

from __future__ import annotations

import email
import email.policy
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import markupsafe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vestnik.streams.channels.email import EmailChannel, SmtpConfig, one_line, safe_link
from vestnik.streams.channels.telegram import render as telegram_render
from vestnik.streams.schemas import Notice, User

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"
HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "X-Vestnik-Notice", "Auto-Submitted",
           "MIME-Version", "Content-Type"}

# text with every kind of line break, header-looking content and markup in it
pieces = st.sampled_from([*"ab <>&\"'=:;/\\\r\n\t\x0b\x0c\x00\x85\u2028\u2029é中😀",
                          "\r\nBcc: evil@example.org", "\nX-Injected: 1", "<script>",
                          "</b><i>", "=?utf-8?q?x?=", "javascript:alert(1)",
                          "https://x.example/"])
nasty = st.lists(pieces, min_size=1, max_size=12).map("".join).filter(str.strip)

CHANNEL = EmailChannel(SmtpConfig("smtp://127.0.0.1:1"), "Vestnik <vestnik@example.org>")


def _notice(title: str, body: str = "", link: str | None = None, nid: str = "N1") -> Notice:
    return Notice(id=nid, alert="disk", title=title, body=body, link=link,
                  recipients=["1"], created_at=1_700_000_000_000)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@settings(max_examples=300, deadline=None)
@given(title=nasty, name=nasty, nid=nasty)
def test_no_header_injection_through_title_name_or_id(title: str, name: str, nid: str):
    user = User(id="1", name=name, email="alice@example.org")
    raw = CHANNEL.message(_notice(title, nid=nid), user, "alice@example.org")
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        # every header line is a known header or a folded continuation
        assert line[:1] in (b" ", b"\t") or line.split(b":", 1)[0].decode() in HEADERS, line
    assert b"\n" not in head.replace(b"\r\n", b"") and b"\r" not in head.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert set(msg.keys()) == HEADERS
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert unquote(str(msg["X-Vestnik-Notice"])) == nid  # any id, ASCII on the wire
    subject = re.sub(r"\s+", " ", str(msg["Subject"])).strip()
    assert subject == re.sub(r"\s+", " ", one_line(title)).strip()


@settings(max_examples=300, deadline=None)
@given(title=nasty, body=nasty, link=nasty)
def test_email_html_part_escapes_everything(title: str, body: str, link: str):
    user = User(id="1", name="Alice", email="alice@example.org")
    msg = email.message_from_bytes(
        CHANNEL.message(_notice(title, body, link), user, "alice@example.org"),
        policy=email.policy.default)
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    html = part.get_payload(decode=True).decode("utf-8")  # exactly what was rendered
    assert str(markupsafe.escape(one_line(title))) in html
    assert str(markupsafe.escape(body)) in html
    parser = Tags()
    parser.feed(html)
    assert {t for t, _ in parser.tags} <= {"html", "head", "meta", "title", "body", "div", "p",
                                           "h1", "a"}
    for tag, attrs in parser.tags:
        if tag == "a":
            assert safe_link(link) is not None and attrs["href"] == safe_link(link)


@settings(max_examples=300, deadline=None)
@given(title=nasty, body=nasty, link=nasty)
def test_telegram_text_has_only_vestniks_own_markup(title: str, body: str, link: str):
    text = telegram_render(_notice(title, body, link))
    parser = Tags()
    parser.feed(text)
    assert [t for t, _ in parser.tags] in (["b"], ["b", "a"])
    for tag, attrs in parser.tags:
        if tag == "a":
            assert re.match(r"^https?://", attrs["href"] or "")


# ------------------------------------------------------------------------- the web pages

SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|"
                   r"new Function|setHTMLUnsafe|createContextualFragment")


def test_pages_put_text_in_through_textcontent_only():
    scripts = sorted(STATIC.glob("*.js"))
    assert len(scripts) >= 5
    for js in scripts:
        for n, line in enumerate(js.read_text().splitlines(), 1):
            if SINKS.search(line):
                # the one HTML sink: the widget's constant bell icon
                assert re.fullmatch(r"\s*this\.(bell|headBell)\.innerHTML = BELL;", line), \
                    f"{js.name}:{n}: {line.strip()}"
    for js in ("lib.js", "vestnik-inbox.js"):
        src = (STATIC / js).read_text()
        # the element helper every page renders with: `text` becomes textContent, other
        # attributes are set with setAttribute (never parsed as HTML)
        assert 'else if (k === "text") e.textContent = v;' in src, js
    inbox = (STATIC / "vestnik-inbox.js").read_text()
    assert 'h("div", { class: "title", text: n.title })' in inbox
    assert 'h("div", { class: "body", text: n.body })' in inbox
    # the demo mailbox shows an email's HTML in a sandboxed frame (no scripts, own origin)
    mail = (STATIC / "mail.js").read_text()
    for line in mail.splitlines():
        if "srcdoc" in line:
            assert 'sandbox: ""' in line, line


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is installed by bootstrap.sh")
def test_widget_follows_only_http_links():
    src = (STATIC / "vestnik-inbox.js").read_text()
    fn = re.search(r"  function safeLink\(link\) \{.*?\n  \}\n", src, re.S)
    assert fn, "safeLink not found in vestnik-inbox.js"
    cases = ["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)",
             "java\tscript:alert(1)", "data:text/html,<script>alert(1)</script>",
             "vbscript:x", "https://panel.example/vm/1", "http://x.example/", "/inbox#1", "",
             None, 42]
    program = ("const location = {href: 'https://vestnik.example/app/'};\n" + fn.group(0)
               + f"\nconsole.log(JSON.stringify({json.dumps(cases)}.map(safeLink)));\n")
    out = subprocess.run(["node", "-e", program], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    got = json.loads(out)
    assert got[:6] == [None] * 6
    assert got[6:10] == ["https://panel.example/vm/1", "http://x.example/",
                         "https://vestnik.example/inbox#1", None]
    assert got[10:] == [None, None]


def test_the_fast_path_of_one_line_misses_no_line_break():
    """one_line skips its regex for printable text: every character the regex replaces
    (any code point) must be unprintable, or a title could smuggle a header line."""
    from vestnik.streams.channels.email import _CRLF
    breaks = [chr(c) for c in range(0x110000) if _CRLF.match(chr(c))]
    assert "\n" in breaks and "\u2028" in breaks
    assert not [c for c in breaks if c.isprintable()]
    assert one_line("a\r\nBcc: x@example.org") == "a Bcc: x@example.org"
