"""Patient-clinician loop: threaded messages between a patient and their care team."""
