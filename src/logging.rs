//! The service's and node processes' log: text or JSON lines on stderr,
//! levels from `RUST_LOG`, and what is normal kept out of it.
//!
//! Rules:
//! * rumqttd stays at `warn` unless `RUST_LOG` names it: it logs every
//!   connection at `info`, and reports as a server error each connection
//!   that closes before its CONNECT (the readiness probe, clients the front
//!   door turned away, every relayed connection at shutdown);
//! * a client that sends DISCONNECT and closes its socket is a normal
//!   leave, which rumqttd's router reports as an ERROR ("no-connection id N
//!   is already gone", for the second of the two disconnections it sees):
//!   that event is not written;
//! * rumqttd's spans (one per routed message) are turned off at their call
//!   sites; its events stay, and [`SkipCounter`] counts the ones that say a
//!   subscriber was skipped.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;
use crate::mqtt::broker::SkipCounter;

/// rumqttd's directives (see the module doc).
const BROKER_LOG: &str = "rumqttd=warn,rumqttd::server::broker=off";

/// The log filter for `RUST_LOG` (`info` when unset): rumqttd's directives
/// come first and the operator's after, so `RUST_LOG=debug` still keeps
/// rumqttd quiet; a `RUST_LOG` that names rumqttd is taken as it is.
pub fn log_filter(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        None | Some("") => format!("info,{BROKER_LOG}"),
        Some(filter) if filter.contains("rumqttd") => filter.to_string(),
        Some(filter) => format!("{BROKER_LOG},{filter}"),
    }
}

/// Installs the global subscriber: `format` lines on stderr.
pub fn init(format: LogFormat) {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = EnvFilter::try_new(log_filter(rust_log.as_deref())).unwrap_or_else(|error| {
        eprintln!("warning: RUST_LOG is not a log filter ({error}); logging at info");
        EnvFilter::new(log_filter(None))
    });
    let log = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let no_broker_spans = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target().starts_with("rumqttd"))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(no_broker_spans)
        .with(log.with_filter(NormalLeaves))
        .with(SkipCounter)
        .init();
}

/// Leaves out rumqttd's report of a client's normal leave (module doc).
struct NormalLeaves;

impl<S> Filter<S> for NormalLeaves {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        !is_normal_leave(event)
    }
}

fn is_normal_leave(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    if !meta.target().starts_with("rumqttd::router") {
        return false;
    }
    let mut message = Message::default();
    event.record(&mut message);
    message.0.starts_with("no-connection id ") && message.0.ends_with(" is already gone")
}

/// An event's `message` field, formatted.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_operators_filter_keeps_rumqttd_quiet_unless_it_names_rumqttd() {
        let quiet = "rumqttd=warn,rumqttd::server::broker=off";
        assert_eq!(log_filter(None), format!("info,{quiet}"));
        assert_eq!(log_filter(Some(" ")), format!("info,{quiet}"));
        assert_eq!(log_filter(Some("debug")), format!("{quiet},debug"));
        assert_eq!(log_filter(Some("rumqttd=debug")), "rumqttd=debug");
        for rust_log in [None, Some("debug"), Some("energyguard=trace,info")] {
            let filter = log_filter(rust_log);
            assert!(EnvFilter::try_new(&filter).is_ok(), "{filter}");
        }
    }

    /// Collects the messages of the events it is shown.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Written {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut message = Message::default();
            event.record(&mut message);
            self.0.lock().expect("lock").push(message.0);
        }
    }

    #[test]
    fn a_clients_normal_leave_is_not_written_and_other_broker_errors_are() {
        let written = Written::default();
        let subscriber =
            tracing_subscriber::registry().with(written.clone().with_filter(NormalLeaves));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 7);
            tracing::error!(target: "rumqttd::router::routing", "no space for new connection");
            tracing::error!(target: "energyguard::storage", "no-connection id 7 is already gone");
        });
        assert_eq!(
            *written.0.lock().expect("lock"),
            [
                "no space for new connection",
                "no-connection id 7 is already gone"
            ]
        );
    }
}
