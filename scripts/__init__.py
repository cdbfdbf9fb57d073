"""Developer tools, run from the repository root as modules (never installed, never imported by
service/ or training/): `scripts.harness` (shared by the benchmarks and the tests),
`scripts.bench.*` (benchmarks and the soak test), `scripts.dev.*` (deploy linter, bootstrap)."""
