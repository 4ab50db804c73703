"""HTML to text: main content with line breaks, without scripts, styles, navigation or boilerplate.

Two maintained extractors made for this job are wrapped behind one function:

* ``resiliparse`` (the default): ``extract_plain_text(main_content=True, preserve_formatting=True)``
  from ChatNoir's Resiliparse, a C++ DOM parser with main-content heuristics; it keeps
  headings, paragraphs, list items (with bullets), table cells and ``<pre>`` code as lines.
* ``trafilatura``: Barbaric's trafilatura with tables and formatting kept; more aggressive on
  boilerplate and much slower.

``benchmarks/clean`` compares both on the sample HTML (recall of the main-content blocks,
share of navigation/footer strings leaked, pages per second); the figures are in
docs/benchmarks.md ("clean").  A page that yields no text (no body, only scripts, an empty shell) is
dropped with reason ``html_no_text``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from etl.core.document import Document

EXTRACTORS = ("resiliparse", "trafilatura")
_LOOKS_LIKE_HTML = re.compile(r"^\s*(?:<!doctype html|<\?xml[^>]*>\s*<!doctype html|<html[\s>])", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class HtmlConfig:
    """The ``clean.html`` section."""

    extractor: str = "resiliparse"
    """``resiliparse`` (default: best recall and about 20x faster here, see benchmarks/clean) or ``trafilatura``."""
    main_content: bool = True
    """Keep only the main content by the extractor's heuristics (drops navigation, headers,
    footers, sidebars on any page; Resiliparse also drops short stand-alone lists).  False:
    keep all visible text except ``skip_elements`` (keeps every list, relies on markup)."""
    skip_elements: tuple[str, ...] = ("nav", "header", "footer", "aside", "form", "[role=navigation]", "[role=banner]",
                                      "[role=contentinfo]", ".navheader", ".navfooter", ".breadcrumb", ".sidebar", ".menu", "#footer", "#header")
    """CSS selectors of boilerplate removed when ``main_content`` is false (resiliparse only)."""
    sniff: bool = True
    """Also treat records whose text starts like an HTML document (``<!DOCTYPE html``, ``<html``)
    as HTML even without ``meta.format = "html"``."""
    min_chars: int = 1
    """Characters of extracted text below which the page is dropped as ``html_no_text``."""

    def __post_init__(self) -> None:
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"clean.html.extractor must be one of {list(EXTRACTORS)}, got {self.extractor!r}")
        if self.min_chars < 1:
            raise ValueError(f"clean.html.min_chars must be >= 1, got {self.min_chars}")


def is_html(doc: Document, sniff: bool = True) -> bool:
    """Whether ``doc`` carries raw HTML (``meta.format == "html"`` or, with ``sniff``, looks like it)."""
    if str(doc.meta.get("format", "")).lower() in ("html", "htm", "xhtml"):
        return True
    return sniff and bool(_LOOKS_LIKE_HTML.match(doc.text[:512]))


def extract_resiliparse(html: str, main_content: bool = True, skip_elements: tuple[str, ...] = ()) -> str:
    """Main text by Resiliparse, one block element per line."""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=main_content, preserve_formatting=True, list_bullets=True, alt_texts=False,
                              skip_elements=None if main_content else list(skip_elements))


def extract_trafilatura(html: str, main_content: bool = True) -> str:
    """Main text by trafilatura (tables and code kept)."""
    import trafilatura

    text = trafilatura.extract(html, include_tables=True, include_comments=False, include_images=False,
                               include_links=False, favor_recall=not main_content, deduplicate=False)
    return text or ""


def html_to_text(html: str, config: HtmlConfig = HtmlConfig()) -> str:
    """Extract the text of ``html`` with the configured extractor ("" when nothing is left)."""
    if config.extractor == "trafilatura":
        return extract_trafilatura(html, config.main_content).strip()
    return extract_resiliparse(html, config.main_content, config.skip_elements).strip()


def strip_html(doc: Document, config: HtmlConfig = HtmlConfig()) -> str | None:
    """Replace an HTML document's text by its extracted text; answer ``html_no_text`` when empty.

    Non-HTML documents pass unchanged.  The page's size is kept in ``meta.html_chars``.
    """
    if not is_html(doc, config.sniff):
        return None
    html = doc.text
    text = html_to_text(html, config) if html.strip() else ""
    doc.meta["html_chars"] = len(html)
    doc.meta["format"] = "text"
    doc.meta["html_extractor"] = config.extractor
    doc.text = text
    if len(text) < config.min_chars:
        return "html_no_text"
    return None
