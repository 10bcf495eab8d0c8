//! The server's own log on standard error: human lines or JSON lines (`log_format`), filtered by `RUST_LOG` when
//! it is set, else by `log_level`. A line written inside a request carries the fields of the request's span (its
//! id, API, method, path, and model and worker once known); a worker's lines carry its model, version and
//! worker id.

use tracing_subscriber::{fmt::format::FmtSpan, EnvFilter};

use crate::obs_config::{LogFormat, ObsConfig};

/// The filter: `RUST_LOG` when it is set (and valid), else `log_level`.
#[must_use]
pub fn filter(config: &ObsConfig) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level))
}

/// Installs the process's log as `config` says.
///
/// # Errors
/// When a log is installed already.
pub fn init(config: &ObsConfig) -> Result<(), tracing_subscriber::util::TryInitError> {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let stderr = std::io::stderr;
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter(config))
            .with_writer(stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .try_init(),
        LogFormat::Json => json(filter(config), stderr).try_init(),
    }
}

/// The JSON subscriber writing to `writer`: one object per line with `timestamp`, `level`, `target`, `fields`,
/// and `span` and `spans` (the fields of the spans the line was written in).
pub fn json<W>(filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_span_events(FmtSpan::NONE)
        .with_env_filter(filter)
        .with_writer(writer)
        .finish()
}
