"""Building blocks of the served models: projections, norms, rotary, paged attention."""
