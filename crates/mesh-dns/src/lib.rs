//! The embedded DNS resolver of every task.
