"""Model output rendered as Markdown: nothing a response writes can run, load or link outside
http(s), and code blocks come back highlighted."""

from __future__ import annotations

import re

import pytest

from tether.feedback.app.render import render_markdown, sanitize


def tags(html: str) -> set[str]:
    return set(re.findall(r"<([a-z0-9]+)", html))


@pytest.mark.parametrize("attack", [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    '<a href="javascript:alert(1)">x</a>',
    "<iframe src='https://evil.example'></iframe>",
    "<style>body{display:none}</style>",
])
def test_raw_html_in_a_response_is_shown_as_text(attack):
    html = render_markdown(f"Here you go: {attack}")
    assert tags(html) == {"p"}, html
    assert attack.replace("<", "&lt;").replace(">", "&gt;")[:20] in html


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x",
                                 "file:///etc/passwd", "vbscript:x", "/logout"])
def test_only_http_links_become_links(url):
    html = render_markdown(f"[click]({url}) and <{url}>")
    assert "<a" not in html, html
    assert "click" in html


def test_web_links_open_in_a_new_tab_without_a_referrer():
    html = render_markdown("[docs](https://example.org/a?b=1&c=2)")
    assert 'href="https://example.org/a?b=1&amp;c=2"' in html
    assert 'target="_blank"' in html and "noreferrer" in html and "noopener" in html


def test_images_are_not_loaded():
    html = render_markdown("![pixel](https://tracker.example/p.png?who=ann)")
    assert "<img" not in html
    assert '<a href="https://tracker.example/p.png?who=ann"' in html


def test_fenced_code_is_highlighted_with_classes_only():
    html = render_markdown("```python\ndef f(x):\n    return '<b>'  # note\n```")
    assert '<code class="language-python">' in html
    assert '<span class="k">def</span>' in html  # keyword
    assert '<span class="nf">f</span>' in html  # function name
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "style=" not in html  # the CSP forbids inline styles; static/code.css colours classes


def test_unknown_or_missing_language_is_escaped_plain_code():
    for fence in ("```no-such-language", "```"):
        html = render_markdown(f"{fence}\nif a < b: <script>\n```")
        assert "<span" not in html
        assert "if a &lt; b: &lt;script&gt;" in html


def test_markdown_structure_is_kept():
    html = render_markdown("# T\n\n**b** *i* `c`\n\n- one\n- two\n\n| a | b |\n|--:|---|\n| 1 | 2 |")
    assert {"h1", "strong", "em", "code", "ul", "li", "table", "th", "td"} <= tags(html)
    assert "style=" not in html  # table alignment would be an inline style


def test_sanitizer_drops_what_markdown_never_makes():
    dirty = ('<p onclick="x()">a</p><span class="k" style="color:red">b</span>'
             '<a href="javascript:x()">c</a><script>d</script><img src="https://x/y.png">')
    clean = sanitize(dirty)
    assert "onclick" not in clean and "style" not in clean and "javascript" not in clean
    assert "<script" not in clean and "<img" not in clean
    assert '<span class="k">b</span>' in clean
