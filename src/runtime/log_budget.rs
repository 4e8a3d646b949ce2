//! Bounds on what clients and input can make Meridian log. A log line an outsider can trigger
//! is shortened ([`bounded`]) and rate-limited per call site ([`LogBudget`]), and what was
//! left out is counted in the next line that gets through.

use std::borrow::Cow;
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

/// The most of one input-derived field a log line carries.
pub const FIELD_BYTES: usize = 256;

/// `text` cut to [`FIELD_BYTES`] (on a character boundary), saying how long it was.
pub fn bounded(text: &str) -> Cow<'_, str> {
    if text.len() <= FIELD_BYTES {
        return Cow::Borrowed(text);
    }
    let mut end = FIELD_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

/// At most `per_window` lines in each `window` at one call site.
pub struct LogBudget {
    per_window: u32,
    window: Duration,
    state: Mutex<Option<BudgetState>>,
}

struct BudgetState {
    started: Instant,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const fn new(per_window: u32, window: Duration) -> LogBudget {
        LogBudget {
            per_window,
            window,
            state: Mutex::new(None),
        }
    }

    /// `Some(lines suppressed since the last one allowed)` if this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = guard.get_or_insert(BudgetState {
            started: now,
            used: 0,
            suppressed: 0,
        });
        if now.duration_since(state.started) >= self.window {
            state.started = now;
            state.used = 0;
        }
        if state.used < self.per_window {
            state.used += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed = state.suppressed.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(FIELD_BYTES);
        let cut = bounded(&long);
        assert!(cut.len() < FIELD_BYTES + 32, "{}", cut.len());
        assert!(cut.ends_with(&format!("({} bytes)", long.len())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_refills_each_window_and_counts_what_it_held_back() {
        let budget = LogBudget::new(2, Duration::from_secs(1));
        assert_eq!(budget.allow(), Some(0));
        assert_eq!(budget.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(budget.allow(), None);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(budget.allow(), Some(5));
        assert_eq!(budget.allow(), Some(0));
    }
}
