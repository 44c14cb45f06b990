"""Ray actor classes: the generator worker and the QA feature worker."""
