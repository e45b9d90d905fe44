"""Patient-clinician loop: the visit cadence set by stability, and pre-visit summaries."""
