"""The benchmarks' own checks: what their measuring code computes (make test runs them after tests/)."""
