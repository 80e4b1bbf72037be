"""Results: paper-style tables over seeds, figures, the paper's published numbers, and the `make demo` experiment."""
