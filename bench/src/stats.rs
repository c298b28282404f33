//! Latency percentiles and medians (pure).

use std::time::Duration;

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Latency {
    /// Percentiles of `samples` (sorted in place). All zero when there is none.
    pub fn of(samples: &mut [Duration]) -> Latency {
        samples.sort_unstable();
        Latency {
            count: samples.len(),
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

/// The `p`-th percentile (nearest rank) of sorted `samples`; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: the smallest value with at least p% of the samples at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (the lower middle one for an even count); `None` when empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return None;
    }
    Some(v[(v.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<Duration> = (1..=100).rev().map(ms).collect();
        let l = Latency::of(&mut s);
        assert_eq!(l.count, 100);
        assert_eq!(l.p50, ms(50));
        assert_eq!(l.p99, ms(99));
        assert_eq!(l.max, ms(100));
        assert_eq!(percentile(&s, 0.0), ms(1));
        assert_eq!(percentile(&s, 100.0), ms(100));
        let one = [ms(7)];
        assert_eq!(percentile(&one, 99.0), ms(7));
    }

    #[test]
    fn empty_sets_are_zero_or_none() {
        assert_eq!(Latency::of(&mut []), Latency::default());
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), Some(ms(2)));
        assert_eq!(median(&[ms(4), ms(1), ms(3), ms(2)]), Some(ms(2)));
    }
}
