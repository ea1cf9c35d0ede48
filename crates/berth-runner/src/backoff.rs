//! How long a runner waits before calling an unreachable or failing server again: exponential
//! from 100 ms up to a cap, with jitter, so the runners of a fleet that lost the server at
//! once do not all come back in the same instant.

use std::time::Duration;

use rand::Rng;

/// The first wait.
const FIRST: Duration = Duration::from_millis(100);
/// The cap unless a lower one is asked for.
const MAX: Duration = Duration::from_secs(5);

/// Exponential backoff with "equal jitter": the `n`th wait is drawn from the upper half of
/// `min(FIRST * 2^n, max)`, so it never falls below half the step and never exceeds the cap.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self::up_to(MAX)
    }

    pub(crate) fn up_to(max: Duration) -> Self {
        Self {
            step: FIRST.min(max),
            max,
        }
    }

    /// Back to the first wait, after a call went through.
    pub(crate) fn reset(&mut self) {
        self.step = FIRST.min(self.max);
    }

    /// The most the next wait can be (for logs).
    pub(crate) fn peek(&self) -> Duration {
        self.step
    }

    /// The next wait, advancing the step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let half = self.step / 2;
        let jitter = rng.random_range(0..=(self.step - half).as_micros() as u64);
        let delay = half + Duration::from_micros(jitter);
        self.step = (self.step * 2).min(self.max);
        delay
    }

    /// Sleeps the next wait.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn each_wait_lies_in_the_upper_half_of_a_doubling_step_up_to_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new();
        let mut step = FIRST;
        for _ in 0..12 {
            let delay = backoff.next_delay_with(&mut rng);
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
            step = (step * 2).min(MAX);
        }
        assert_eq!(backoff.peek(), MAX);
        backoff.reset();
        assert_eq!(backoff.peek(), FIRST);
        // A cap below the first step is the step.
        let mut low = Backoff::up_to(Duration::from_millis(30));
        for _ in 0..5 {
            assert!(low.next_delay_with(&mut rng) <= Duration::from_millis(30));
        }
    }

    #[test]
    fn runners_that_fail_together_do_not_retry_together() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // A fleet of 50 runners, each at its fifth failure (step 1.6 s).
        let waits: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| {
                let mut backoff = Backoff::new();
                for _ in 0..4 {
                    backoff.next_delay_with(&mut rng);
                }
                backoff.next_delay_with(&mut rng)
            })
            .collect();
        assert!(waits.len() > 40, "{waits:?}");
        let spread = *waits.last().unwrap() - *waits.first().unwrap();
        assert!(spread > Duration::from_millis(400), "{spread:?}");
    }
}
