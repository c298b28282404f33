//! Health checks: what to run, and a small state machine that turns results into a status.
//! meshd drives the loop (every `interval`) and reports the changes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;
use crate::image::ImageHealthcheck;
use crate::runtime::Runtime;

/// docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;

/// The command of a health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthCmd {
    /// `CMD`: run these arguments directly.
    Exec(Vec<String>),
    /// `CMD-SHELL`: run this through `/bin/sh -c`.
    Shell(String),
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What to run; exit 0 means healthy.
    pub cmd: HealthCmd,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive failures that make the container unhealthy (at least 1).
    pub retries: u32,
    /// Time after start during which failures do not count.
    pub start_period: Duration,
}

impl HealthCheck {
    /// The check an image defines, with docker's defaults for what it leaves out; `None` for
    /// no test or `["NONE"]`.
    pub fn from_image(h: &ImageHealthcheck) -> Option<HealthCheck> {
        let cmd = match h.test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => {
                HealthCmd::Exec(rest.to_vec())
            }
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
                HealthCmd::Shell(rest.join(" "))
            }
            _ => return None,
        };
        Some(HealthCheck {
            cmd,
            interval: h.interval.unwrap_or(DEFAULT_INTERVAL),
            timeout: h.timeout.unwrap_or(DEFAULT_TIMEOUT),
            retries: h.retries.unwrap_or(DEFAULT_RETRIES).max(1),
            start_period: h.start_period.unwrap_or_default(),
        })
    }

    /// The argv to exec.
    pub fn argv(&self) -> Vec<String> {
        match &self.cmd {
            HealthCmd::Exec(a) => a.clone(),
            HealthCmd::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

/// A container's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    /// No check has passed yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

/// The health state machine (pure: the caller says what happened and when).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    status: HealthStatus,
    failing_streak: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState::new()
    }
}

impl HealthState {
    /// A container that just started.
    pub fn new() -> HealthState {
        HealthState {
            status: HealthStatus::Starting,
            failing_streak: 0,
        }
    }

    /// The status now.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Consecutive failures counted so far.
    pub fn failing_streak(&self) -> u32 {
        self.failing_streak
    }

    /// Records one check's result, `since_start` after the container started; returns the
    /// new status if it changed. A pass makes the container healthy; failures within the
    /// start period do not count (while it is still starting); `retries` counted failures
    /// in a row make it unhealthy.
    pub fn record(
        &mut self,
        passed: bool,
        since_start: Duration,
        check: &HealthCheck,
    ) -> Option<HealthStatus> {
        let before = self.status;
        if passed {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else if self.status == HealthStatus::Starting && since_start < check.start_period {
            // Still in its start period: does not count.
        } else {
            self.failing_streak += 1;
            if self.failing_streak >= check.retries.max(1) {
                self.status = HealthStatus::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthProbe {
    /// Whether it passed (exit code 0 within the timeout).
    pub passed: bool,
    /// The exit code, if it finished.
    pub exit_code: Option<i32>,
    /// What it printed (stdout then stderr), or why it could not run.
    pub output: String,
}

/// Runs one check in container `id` with `exec`. Timeouts and exec errors are failures.
pub async fn run_health_check<R: Runtime + ?Sized>(
    runtime: &R,
    id: &str,
    check: &HealthCheck,
) -> HealthProbe {
    match runtime.exec(id, &check.argv(), check.timeout).await {
        Ok(r) => HealthProbe {
            passed: r.exit_code == 0,
            exit_code: Some(r.exit_code),
            output: format!("{}{}", r.stdout, r.stderr),
        },
        Err(RuntimeError::ExecTimeout { timeout, .. }) => HealthProbe {
            passed: false,
            exit_code: None,
            output: format!("health check timed out after {timeout:?}"),
        },
        Err(e) => HealthProbe {
            passed: false,
            exit_code: None,
            output: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period: u64) -> HealthCheck {
        HealthCheck {
            cmd: HealthCmd::Shell("true".into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_secs(start_period),
        }
    }

    #[test]
    fn first_pass_makes_it_healthy() {
        let c = check(3, 0);
        let mut h = HealthState::new();
        assert_eq!(h.status(), HealthStatus::Starting);
        assert_eq!(
            h.record(true, Duration::from_secs(1), &c),
            Some(HealthStatus::Healthy)
        );
        assert_eq!(h.record(true, Duration::from_secs(2), &c), None);
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy() {
        let c = check(3, 0);
        let mut h = HealthState::new();
        h.record(true, Duration::from_secs(1), &c);
        assert_eq!(h.record(false, Duration::from_secs(2), &c), None);
        assert_eq!(h.record(false, Duration::from_secs(3), &c), None);
        assert_eq!(h.failing_streak(), 2);
        assert_eq!(
            h.record(false, Duration::from_secs(4), &c),
            Some(HealthStatus::Unhealthy)
        );
        // A pass heals and resets the streak.
        assert_eq!(
            h.record(true, Duration::from_secs(5), &c),
            Some(HealthStatus::Healthy)
        );
        assert_eq!(h.failing_streak(), 0);
        assert_eq!(h.record(false, Duration::from_secs(6), &c), None);
        assert_eq!(h.record(true, Duration::from_secs(7), &c), None);
        assert_eq!(h.failing_streak(), 0);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let c = check(1, 10);
        let mut h = HealthState::new();
        for s in 0..10 {
            assert_eq!(h.record(false, Duration::from_secs(s), &c), None);
        }
        assert_eq!(h.failing_streak(), 0);
        assert_eq!(h.status(), HealthStatus::Starting);
        assert_eq!(
            h.record(false, Duration::from_secs(10), &c),
            Some(HealthStatus::Unhealthy)
        );
    }

    #[test]
    fn unhealthy_without_ever_passing() {
        let c = check(2, 0);
        let mut h = HealthState::new();
        assert_eq!(h.record(false, Duration::from_secs(1), &c), None);
        assert_eq!(
            h.record(false, Duration::from_secs(2), &c),
            Some(HealthStatus::Unhealthy)
        );
    }

    #[test]
    fn image_healthchecks_convert_with_defaults() {
        let h = ImageHealthcheck {
            test: vec!["CMD-SHELL".into(), "wget -qO- localhost".into()],
            retries: Some(0),
            ..ImageHealthcheck::default()
        };
        let c = HealthCheck::from_image(&h).unwrap();
        assert_eq!(c.argv(), ["/bin/sh", "-c", "wget -qO- localhost"]);
        assert_eq!(c.retries, 1);
        assert_eq!(c.interval, Duration::from_secs(30));
        let none = ImageHealthcheck {
            test: vec!["NONE".into()],
            ..ImageHealthcheck::default()
        };
        assert!(HealthCheck::from_image(&none).is_none());
        let exec = ImageHealthcheck {
            test: vec!["CMD".into(), "/check".into(), "-v".into()],
            ..ImageHealthcheck::default()
        };
        assert_eq!(
            HealthCheck::from_image(&exec).unwrap().argv(),
            ["/check", "-v"]
        );
    }
}
