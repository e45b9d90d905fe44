"""The clinician-AI loop: the review queue, claims, signed decisions, envelope edits and the
alerts inbox (docs/clinician-review.md)."""
