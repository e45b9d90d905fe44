"""Patient-clinician loop: shared goals and the versioned care plan."""
