"""Portal pages: messages between patients and their care teams."""

from __future__ import annotations

from app.portal.web import router as router
