//! `energyguard bench` end to end with a tiny workload: every figure of
//! results.json is a real number and every plot is a PNG that decodes.
//! (No timing is asserted: these machines are shared and noisy.)

use std::process::Command;

use serde_json::Value;

/// Every number in `value`, with its path.
fn numbers(value: &Value, path: String, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Number(n) => out.push((path, n.as_f64().unwrap_or(f64::NAN))),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                numbers(item, format!("{path}[{i}]"), out);
            }
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                numbers(field, format!("{path}.{name}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn a_tiny_bench_writes_every_figure_and_three_plots() {
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_energyguard"))
        .args(["bench", "--readings", "200", "--out"])
        .arg(out.path())
        .env_remove("ENERGYGUARD_URL")
        .output()
        .expect("run energyguard bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("consistent (2 copies)"), "{stdout}");

    let text = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let results: Value = serde_json::from_str(&text).expect("JSON");
    let strategies = results["strategies"].as_array().expect("strategies");
    let names: Vec<&str> = strategies
        .iter()
        .map(|s| s["strategy"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["full", "consistent"]);
    for strategy in strategies {
        for (section, fields) in [
            (
                "write",
                &[
                    "http_single_p50_ms",
                    "http_single_p99_ms",
                    "http_single_per_s",
                    "http_batch_readings_per_s",
                    "mqtt_readings_per_s",
                    "mqtt_10_per_message_readings_per_s",
                ][..],
            ),
            (
                "read",
                &[
                    "point_p50_ms",
                    "point_per_s",
                    "history_day_ms",
                    "history_all_ms",
                ][..],
            ),
            ("fail", &["fail_node_ms"][..]),
        ] {
            for field in fields {
                let figure = strategy[section][field].as_f64();
                assert!(
                    figure.is_some_and(|f| f > 0.0 && f.is_finite()),
                    "{section}.{field} = {:?}",
                    strategy[section][field]
                );
            }
        }
        assert_eq!(strategy["read"]["history_day_points"], 86_400);
        assert_eq!(strategy["read"]["history_all_points"], 100_000);
        let recoveries = strategy["recover"].as_array().expect("recover");
        assert_eq!(recoveries.len(), 3, "three outage sizes");
        assert!(recoveries.iter().all(|r| r["missed"].as_u64() > Some(0)));
    }
    for limit in ["http_empty_handler_per_s", "broker_raw_messages_per_s"] {
        assert!(results["limits"][limit].as_f64() > Some(0.0), "{limit}");
    }
    assert!(results["rebalance"]["ms"].as_f64() > Some(0.0));
    let nodes = &results["node_processes"];
    for figure in [
        "batch_readings_per_s",
        "batch_ratio_to_in_process",
        "kill_to_down_ms",
        "restart_to_up_ms",
    ] {
        assert!(nodes[figure].as_f64() > Some(0.0), "{figure}: {nodes}");
    }
    assert!(
        nodes["recovery"]["missed"].as_u64() > Some(0),
        "the node process missed readings and got them back: {nodes}"
    );
    // `.ci/run` installs mosquitto, so there the external comparison runs.
    if std::path::Path::new("/usr/sbin/mosquitto").is_file() {
        let external = &results["external_broker"];
        for figure in ["raw_messages_per_s", "mqtt_readings_per_s"] {
            assert!(
                external[figure].as_f64() > Some(0.0),
                "{figure}: {external}"
            );
        }
    }
    assert!(results["machine"]["cpus"].as_u64() >= Some(1));
    assert_eq!(results["parameters"]["readings"], 200);
    let mut all = Vec::new();
    numbers(&results, String::new(), &mut all);
    let bad: Vec<_> = all
        .iter()
        .filter(|(_, n)| !n.is_finite() || *n < 0.0)
        .collect();
    assert!(bad.is_empty(), "not real figures: {bad:?}");

    for plot in ["operation_time.png", "throughput.png", "recovery.png"] {
        let file = std::fs::File::open(out.path().join(plot)).expect(plot);
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .expect("a PNG header");
        let mut pixels = vec![0; reader.output_buffer_size().expect("a frame size")];
        let frame = reader.next_frame(&mut pixels).expect("a PNG frame");
        assert_eq!((frame.width, frame.height), (960, 540), "{plot}");
        let first = &pixels[..3];
        assert!(
            pixels.chunks(3).any(|pixel| pixel != first),
            "{plot} is not blank"
        );
    }
}
