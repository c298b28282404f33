//! Pure scheduler, orchestrator and rolling updater.
