"""Research tools: training tiny-ee, quality sweeps, corpora (above both bodies)."""
