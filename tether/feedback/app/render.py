"""Model responses, prompts and guidelines as safe HTML: Markdown with highlighted code.

Model output is hostile input (a response can be written to attack whoever reads it), so three
layers stand between it and the page, each enough for the common case:

1. markdown-it with raw HTML off: ``<script>`` or ``<img onerror=...>`` in a response is shown
   as text.
2. Links only to http(s); any other scheme (``javascript:``, ``data:``, ``file:``) is left as
   plain text. Images are not loaded: ``![alt](url)`` shows as a link, so a response cannot
   report back who read it and when.
3. The final HTML goes through an allow-list sanitizer (nh3, the binding of Rust's ammonia): only
   the tags and attributes that Markdown and Pygments produce survive.

Fenced code with a language (```` ```python ````) is highlighted on the server by Pygments into
spans with class names only: the Content-Security-Policy forbids inline styles, and
``static/code.css`` colours the classes.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

LINK_SCHEMES = {"http", "https"}
_formatter = HtmlFormatter(nowrap=True)  # spans only; markdown-it adds <pre><code>


def _highlight(code: str, language: str, _attrs: str) -> str:
    """Pygments spans for a known language; "" lets markdown-it escape the code itself."""
    if not language:
        return ""
    try:
        lexer = get_lexer_by_name(language)
    except ClassNotFound:
        return ""
    return highlight(code, lexer, _formatter)


def _web_link(url: str) -> bool:
    return urlsplit(url.strip()).scheme.lower() in LINK_SCHEMES


_markdown = MarkdownIt("commonmark", {"html": False, "highlight": _highlight})
_markdown.enable(["table", "strikethrough"])  # common in model answers
_markdown.disable("image")
_markdown.validateLink = _web_link  # a rejected link stays as its Markdown source text

_TAGS = {"p", "br", "hr", "em", "strong", "s", "del", "code", "pre", "span", "a", "blockquote",
         "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
         "table", "thead", "tbody", "tr", "th", "td"}
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "span": {"class"}, "ol": {"start"}}


def sanitize(html: str) -> str:
    """Keep only the allow-listed tags and attributes; links to http(s) only, opened in a new
    tab (the annotator keeps their place) without telling the target where they came from."""
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes=LINK_SCHEMES,
                     link_rel="noopener noreferrer nofollow",
                     set_tag_attribute_values={"a": {"target": "_blank"}})


def render_markdown(text: str | None) -> Markup:
    """Markdown to sanitized HTML (the ``markdown`` template filter)."""
    return Markup(_render(text or ""))


@lru_cache(maxsize=256)
def _render(text: str) -> str:
    # each item is shown to several annotators, and a page is reloaded: highlighting a long answer
    # is slow (benchmarks/RESULTS.md, "Measurements behind design choices")
    return sanitize(_markdown.render(text))
