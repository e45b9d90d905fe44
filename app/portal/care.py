"""Portal pages: shared goals and the care plan."""

from __future__ import annotations

from app.portal.web import router as router
