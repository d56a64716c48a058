//! The MQTT side of the command line: `publish` sends CSV readings as a
//! sensor would, `watch` prints alerts as they are published.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Value, json};

use crate::mqtt::connection_options;
use crate::reading::{SensorId, parse_timestamp_number, parse_timestamp_str};

/// How to reach the broker.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// The broker, e.g. mqtt://127.0.0.1:1883 or mqtt://user:pass@host:1883.
    #[arg(
        long = "mqtt",
        env = "ENERGYGUARD_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub url: String,
    /// Topic prefix (mqtt.topic_prefix of the service).
    #[arg(long, default_value = "energyguard")]
    pub topic_prefix: String,
    /// The global `--ca`, for an `mqtts://` broker.
    #[arg(skip)]
    pub ca: Option<PathBuf>,
}

fn client(args: &BrokerArgs, name: &str) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let id = format!("energyguard-{name}-{}", std::process::id());
    let mut options =
        connection_options(&args.url, id, args.ca.as_deref()).map_err(|e| format!("--mqtt {e}"))?;
    options
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(1 << 20, 1 << 20);
    Ok(AsyncClient::new(options, 1_000))
}

/// One CSV line `sensor_id,timestamp,value` as (topic sensor, JSON payload).
fn parse_line(line: &str) -> Result<(SensorId, Value), String> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [sensor, timestamp, value] = fields[..] else {
        return Err("expected sensor_id,timestamp,value".into());
    };
    let sensor = sensor.parse::<SensorId>().map_err(|e| e.to_string())?;
    let timestamp_ms = match timestamp.parse::<f64>() {
        Ok(n) => parse_timestamp_number(n),
        Err(_) => parse_timestamp_str(timestamp),
    }
    .map_err(|e| e.to_string())?;
    let value: f64 = value
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("value {value:?} is not a finite number"))?;
    Ok((
        sensor,
        json!({"timestamp": timestamp_ms as f64 / 1000.0, "value": value}),
    ))
}

/// Publishes every line of `file` (or stdin), QoS 1, and waits until the
/// broker acknowledged them all.
pub async fn publish(file: Option<PathBuf>, args: BrokerArgs) -> ExitCode {
    let (input, total): (Box<dyn BufRead>, Option<u64>) = match &file {
        Some(path) => match std::fs::File::open(path) {
            Ok(f) => {
                let lines = std::fs::read_to_string(path)
                    .map(|t| t.lines().count() as u64)
                    .ok();
                (Box::new(std::io::BufReader::new(f)), lines)
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => (Box::new(std::io::stdin().lock()), None),
    };
    let (client, mut eventloop) = match client(&args, "publish") {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0u64);
    let (failed_tx, mut failed_rx) = tokio::sync::watch::channel(None::<String>);
    tokio::spawn(async move {
        let mut acked = 0u64;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    let _ = acked_tx.send(acked);
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = failed_tx.send(Some(e.to_string()));
                    return;
                }
            }
        }
    });
    let progress = match total.filter(|_| std::io::stderr().is_terminal()) {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} readings {per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::hidden(),
    };
    let mut sent = 0u64;
    let mut bad = 0u64;
    for (number, line) in input.lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("error: reading input: {e}");
                return ExitCode::FAILURE;
            }
        };
        let header = number == 0 && line.trim_start().starts_with("sensor_id");
        if line.trim().is_empty() || header {
            continue;
        }
        match parse_line(&line) {
            Ok((sensor, payload)) => {
                let topic = format!("{}/readings/{sensor}", args.topic_prefix);
                if let Err(e) = client
                    .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                    .await
                {
                    eprintln!("error: publishing: {e}");
                    return ExitCode::FAILURE;
                }
                sent += 1;
                progress.inc(1);
            }
            Err(e) => {
                bad += 1;
                eprintln!("line {}: {e}", number + 1);
            }
        }
    }
    loop {
        if *acked_rx.borrow() >= sent {
            break;
        }
        tokio::select! {
            _ = acked_rx.changed() => {}
            _ = failed_rx.changed() => {
                let reason = failed_rx.borrow().clone().unwrap_or_default();
                eprintln!("error: the broker connection failed after {} of {sent} acknowledgements: {reason}", *acked_rx.borrow());
                return ExitCode::FAILURE;
            }
        }
    }
    progress.finish_and_clear();
    let _ = client.disconnect().await;
    println!(
        "published {sent} readings{}",
        if bad > 0 {
            format!(", {bad} lines refused")
        } else {
            String::new()
        }
    );
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints alerts as they are published (retained ones first), until Ctrl-C.
pub async fn watch(args: BrokerArgs, as_json: bool) -> ExitCode {
    let (client, mut eventloop) = match client(&args, "watch") {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = format!("{}/alerts/+", args.topic_prefix);
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    eprintln!("error: subscribing: {e}");
                    return ExitCode::FAILURE;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let alert: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                if as_json {
                    println!("{alert}");
                } else {
                    let text = |k: &str| {
                        alert[k]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| alert[k].to_string())
                    };
                    println!(
                        "{} {} {} {} value {} peak {} since {}",
                        text("state"),
                        text("sensor_id"),
                        text("kind"),
                        text("threshold"),
                        text("value"),
                        text("peak"),
                        text("started_at")
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {}: {e}", args.url);
                return ExitCode::FAILURE;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines() {
        let (sensor, payload) = parse_line("meter1, 2025-07-05T18:00:00Z, 75.5").expect("valid");
        assert_eq!(sensor.as_str(), "meter1");
        assert_eq!(
            payload,
            json!({"timestamp": 1_751_738_400.0, "value": 75.5})
        );
        let (_, payload) = parse_line("m,1751738400,1").expect("epoch seconds");
        assert_eq!(payload["timestamp"], 1_751_738_400.0);
        for bad in [
            "m,1",
            "bad id,1,1",
            "m,soon,1",
            "m,1,NaN",
            "m,1,x",
            "m,1,2,3",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }
}
