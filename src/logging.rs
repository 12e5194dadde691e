//! Logging set-up for the examples: `tracing` to stderr, filtered by `RUST_LOG`.

/// Installs a stderr subscriber; `RUST_LOG` overrides `default_filter`
/// (e.g. `"info"`). Colours only when stderr is a terminal, so logs piped to
/// a file hold no escape codes. A second call is a no-op, so tests may call
/// it freely.
pub fn init_tracing(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
