"""Scrape benchmarks and the in-VM comparison; results and method in docs/performance.md."""
