"""Generated data: the hierarchical demo dataset (spec → render → dataset on disk) and synthetic JPEGs."""
