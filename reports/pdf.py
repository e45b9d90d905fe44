"""HTML to PDF with WeasyPrint: text-extractable pages, nothing fetched from the network."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# WeasyPrint and fontTools log every font subset at INFO; a report needs none of that.
for _name in ("weasyprint", "fontTools"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class PdfResourceRefused(Exception):
    """A document asked for a resource outside its base folder (or on the network)."""


def _fetcher(base: Path | None) -> Any:
    from weasyprint.urls import URLFetcher

    class LocalFetcher(URLFetcher):  # type: ignore[misc]
        """data: URLs, and files inside the base folder; never the network."""

        def fetch(self, url: str, headers: Any = None) -> Any:
            parsed = urlparse(url)
            inside = (
                parsed.scheme == "file"
                and base is not None
                and Path(parsed.path).resolve().is_relative_to(base)
            )
            if parsed.scheme != "data" and not inside:
                raise PdfResourceRefused(f"resource refused: {parsed.scheme or 'relative'} URL")
            return super().fetch(url, headers)

    return LocalFetcher(allowed_protocols=("data", "file"), fail_on_errors=False)


def render_pdf(html: str, *, base_url: str | Path | None = None) -> bytes:
    """Render an HTML document (its CSS may use @page rules for page numbers and footers) to
    PDF bytes. Resources load only from `base_url`'s folder or data: URLs."""
    from weasyprint import HTML

    base = Path(base_url).resolve() if base_url is not None else None
    document = HTML(
        string=html,
        base_url=base.as_uri() + "/" if base is not None else None,
        url_fetcher=_fetcher(base),
    )
    pdf = document.write_pdf()
    if pdf is None:  # only when a target is given; kept for the type checker
        raise RuntimeError("WeasyPrint returned no PDF")
    return bytes(pdf)
