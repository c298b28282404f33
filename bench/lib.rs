//! meshd benchmarks.
