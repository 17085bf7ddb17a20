"""Ready-made label sets: one label per line, `#` comment lines and blank lines ignored."""
