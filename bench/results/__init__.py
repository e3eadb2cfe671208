"""The results reporter: the README's tables and robustness figure from `make demo` runs at several seeds."""
