//! meshd replicated store: openraft with an on-disk log and snapshots.
