"""Guards that keep a hostile or mistaken input from running code, losing files or passing
off a diverged run as a result: the import allow-list, the run-directory lock, bounded YAML,
disk-full errors and non-finite checks."""
