//! How values are written into an HAProxy configuration: single-quoted (no escapes, no
//! environment expansion), so only a quote or a control character cannot be written.

use std::time::Duration;

use super::super::CompileError;

/// `value` as one single-quoted argument; a value HAProxy could not read back is refused.
pub fn quoted(cx: &impl Refuse, field: &str, value: &str) -> Result<String, CompileError> {
    if value.contains('\'') || value.chars().any(char::is_control) {
        return Err(cx.refuse_value(field, value));
    }
    Ok(format!("'{value}'"))
}

/// A duration in HAProxy's units (milliseconds, at least 1).
pub fn time(t: Duration) -> String {
    format!("{}ms", t.as_millis().max(1))
}

/// Who refuses a value, naming the resource.
pub trait Refuse {
    fn refuse_value(&self, field: &str, value: &str) -> CompileError;
}
