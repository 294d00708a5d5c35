"""Task records, the stores that keep them, and the ways of running them."""
