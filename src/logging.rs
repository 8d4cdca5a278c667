//! Log setup: tracing-subscriber to stderr (stdout carries command output), text or JSON,
//! filtered by `RUST_LOG` (default `info`); a progress bar on the terminal is lifted around each line.

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::cli::progress_bar::log_writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
