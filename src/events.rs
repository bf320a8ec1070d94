//! The process's recent log events (info and above) in a bounded ring, for
//! the status page: what a person reading the log would have seen last.
//! Off until [`record`] turns it on, so that commands without a page keep
//! nothing.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// How many events are kept; older ones are dropped.
pub const KEPT: usize = 200;

/// One log event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its number: 1 for the first event kept, and so on.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// `ERROR`, `WARN` or `INFO`.
    pub level: Level,
    /// The message, then the event's other fields as `name=value`.
    pub text: String,
}

static RECORDING: AtomicBool = AtomicBool::new(false);
/// The kept events and the number of all events so far.
struct Ring {
    events: VecDeque<Event>,
    count: u64,
}

static RECENT: Mutex<Ring> = Mutex::new(Ring {
    events: VecDeque::new(),
    count: 0,
});

/// Starts keeping events.
pub fn record() {
    RECORDING.store(true, Ordering::Relaxed);
}

/// The kept events, oldest first.
pub fn recent() -> Vec<Event> {
    lock().events.iter().cloned().collect()
}

fn lock() -> std::sync::MutexGuard<'static, Ring> {
    RECENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn push(level: Level, text: String) {
    let mut ring = lock();
    if ring.events.len() == KEPT {
        ring.events.pop_front();
    }
    ring.count += 1;
    let event = Event {
        seq: ring.count,
        unix_ms: unix_ms_now(),
        level,
        text,
    };
    ring.events.push_back(event);
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `tracing` layer that fills the ring (installed by
/// [`crate::logging::init`]; it sees what the log's filter lets through).
pub struct Recorder;

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO || !RECORDING.load(Ordering::Relaxed) {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        push(level, text.message + &text.fields);
    }
}

/// An event's message and its other fields, as the log line shows them.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_info_and_above_up_to_its_size() {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("before recording");
            record();
            for i in 0..KEPT + 5 {
                tracing::info!(n = i, peer = "198.18.0.2:1080", "event");
            }
            tracing::debug!("too verbose");
            tracing::warn!("last");
        });
        let kept = recent();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].text, "event n=6 peer=198.18.0.2:1080");
        assert_eq!(kept[0].seq, 7);
        let last = kept.last().unwrap();
        assert_eq!((last.level, last.text.as_str()), (Level::WARN, "last"));
        assert!(!kept.iter().any(|e| e.text.contains("before")));
    }
}
