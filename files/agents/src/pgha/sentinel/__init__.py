"""pgha-sentinel."""
