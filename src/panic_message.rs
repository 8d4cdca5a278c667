//! The text of a caught panic's payload, for the threads that report a panic as an error.

use std::any::Any;

/// The panic's message (`panic!` with a literal or a format), or "unknown cause".
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or(payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown cause")
}
