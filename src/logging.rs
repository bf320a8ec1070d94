//! Log output on stderr: `RUST_LOG` or `-v` choose what; colour only for a
//! person at a terminal; under systemd, lines the journal reads as they are
//! meant (a `<N>` syslog priority in front, no timestamp of our own); and
//! the recent events for the status page ([`crate::events`]).

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::events::Recorder;

/// Colour in log lines only for a person at a terminal: not into pipes,
/// files or journald, and never with `NO_COLOR` set to anything non-empty
/// (<https://no-color.org>).
fn log_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Whether stderr is the stream systemd connected to the journal: it names
/// that stream's device and inode in `JOURNAL_STREAM` (systemd.exec(5)), so
/// a redirection in the unit's command line is told apart.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    stderr.is_ok_and(|m| m.dev().to_string() == dev && m.ino().to_string() == ino)
}

/// The syslog priority the journal reads from a `<N>` line prefix.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A line format with the event's syslog priority in front.
struct Journal<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the log output for `-v` given `verbose` times.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 0);
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let _ = if stderr_is_journal(journal_stream.as_deref()) {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_target(verbose > 0)
            .with_ansi(false);
        builder
            .with_ansi(false)
            .event_format(Journal(format))
            .finish()
            .with(Recorder)
            .try_init()
    } else {
        builder
            .with_ansi(log_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .finish()
            .with(Recorder)
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some(OsStr::new(""))));
        assert!(!log_colour(true, Some(OsStr::new("1"))));
        assert!(!log_colour(false, None));
    }

    #[test]
    fn journal_priorities_and_stream() {
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::TRACE), 7);
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("0:0")));
    }
}
