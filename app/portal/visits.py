"""Portal pages: visit cadence, due reviews and pre-visit summaries."""

from __future__ import annotations

from app.portal.web import router as router
