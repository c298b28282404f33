//! meshd integration tests on the lab.
