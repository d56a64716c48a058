//! What can be checked of docker/ without a Docker engine: the compose file
//! parses with the expected services, volumes and ports, Prometheus and
//! Grafana find the shipped rules and dashboard; the Dockerfile runs
//! the binary `cargo build --release` produces; and every `ENERGYGUARD_*`
//! variable either file sets is a real configuration key, loaded through
//! the project's own config loader.

// figment's `Jail` closures return `figment::Error`, which is large.
#![allow(clippy::result_large_err)]

use std::path::Path;

use energyguard::config::{API_TOKEN_ENV, Config};
use figment::Jail;
use yaml_rust2::{Yaml, YamlLoader};

fn docker_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in docker_file("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

/// `ENV A=1 B=2` pairs of every ENV instruction.
fn dockerfile_env() -> Vec<(String, String)> {
    dockerfile_instructions()
        .into_iter()
        .filter(|(keyword, _)| keyword == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn compose() -> Yaml {
    YamlLoader::load_from_str(&docker_file("compose.yaml"))
        .expect("compose.yaml is YAML")
        .into_iter()
        .next()
        .expect("one document")
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Loads the configuration with `vars` set (and nothing else of ours).
fn load_with(vars: &[(String, String)]) -> Result<Config, String> {
    let mut outcome = Err("not run".to_string());
    Jail::expect_with(|jail| {
        for (name, value) in vars {
            jail.set_env(name, value);
        }
        outcome = Config::load(None).map_err(|e| e.to_string());
        Ok(())
    });
    outcome
}

#[test]
fn the_compose_file_has_the_broker_the_service_their_volumes_and_ports() {
    let compose = compose();
    let services = &compose["services"];
    let broker = &services["mosquitto"];
    let service = &services["energyguard"];
    assert!(
        broker["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("eclipse-mosquitto:"))
    );
    assert_eq!(strings(&broker["ports"]), ["1883:1883"]);
    assert_eq!(strings(&service["ports"]), ["5000:5000"]);
    for s in [broker, service] {
        assert_eq!(s["restart"].as_str(), Some("unless-stopped"));
    }
    assert_eq!(service["build"]["context"].as_str(), Some(".."));
    assert_eq!(
        service["build"]["dockerfile"].as_str(),
        Some("docker/Dockerfile")
    );
    assert_eq!(strings(&service["depends_on"]), ["mosquitto"]);

    let volumes = compose["volumes"].as_hash().expect("named volumes");
    let named: Vec<&str> = volumes.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(
        named,
        [
            "mosquitto-data",
            "energyguard-data",
            "prometheus-data",
            "grafana-data"
        ]
    );
    assert!(strings(&broker["volumes"]).contains(&"mosquitto-data:/mosquitto/data".to_string()));
    assert!(strings(&service["volumes"]).contains(&"energyguard-data:/data".to_string()));
    for mount in [
        "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro",
        "./mosquitto.passwd:/mosquitto/config/passwd:ro",
        "./mosquitto.acl:/mosquitto/config/acl:ro",
    ] {
        assert!(
            strings(&broker["volumes"]).contains(&mount.to_string()),
            "{mount}"
        );
    }
    let conf = docker_file("mosquitto.conf");
    for line in [
        "allow_anonymous false",
        "password_file /mosquitto/config/passwd",
        "acl_file /mosquitto/config/acl",
    ] {
        assert!(conf.lines().any(|l| l.trim() == line), "{line} in {conf}");
    }
    assert!(
        conf.lines().any(|l| l.trim() == "persistence true"),
        "{conf}"
    );
    assert!(
        conf.lines()
            .any(|l| l.trim() == "persistence_location /mosquitto/data/")
    );
}

/// Prometheus and Grafana run beside the service, on loopback only, with
/// the repository's own rules and dashboard mounted where their
/// configuration looks for them.
#[test]
fn the_compose_file_runs_prometheus_with_the_rules_and_grafana_with_the_dashboard() {
    let compose = compose();
    let prometheus = &compose["services"]["prometheus"];
    let grafana = &compose["services"]["grafana"];
    assert!(
        prometheus["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("prom/prometheus:v"))
    );
    assert!(
        grafana["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("grafana/grafana-oss:"))
    );
    assert_eq!(strings(&prometheus["ports"]), ["127.0.0.1:9090:9090"]);
    assert_eq!(strings(&grafana["ports"]), ["127.0.0.1:3000:3000"]);
    assert_eq!(strings(&prometheus["depends_on"]), ["energyguard"]);

    // prometheus.yml names the rules relative to itself; compose mounts
    // both so that the relative path holds inside the container.
    let command = strings(&prometheus["command"]);
    assert!(command.contains(&"--config.file=/etc/prometheus/docker/prometheus.yml".to_string()));
    let config = YamlLoader::load_from_str(&docker_file("prometheus.yml")).expect("YAML");
    let rules = config[0]["rule_files"][0].as_str().expect("a rule file");
    assert_eq!(rules, "../docs/observability/alert-rules.yml");
    let mounts = strings(&prometheus["volumes"]);
    assert!(
        mounts.contains(&"./prometheus.yml:/etc/prometheus/docker/prometheus.yml:ro".to_string())
    );
    assert!(mounts.contains(&format!(
        "{rules}:/etc/prometheus/docs/observability/alert-rules.yml:ro"
    )));
    assert_eq!(
        config[0]["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(),
        Some("energyguard:5000")
    );

    // Grafana: the data source, and the dashboard where the provider reads.
    let mounts = strings(&grafana["volumes"]);
    let provider = YamlLoader::load_from_str(&docker_file("grafana/dashboards.yml")).expect("YAML");
    let folder = provider[0]["providers"][0]["options"]["path"]
        .as_str()
        .expect("a path");
    assert!(mounts.contains(&format!(
        "../docs/observability/grafana-dashboard.json:{folder}/energyguard.json:ro"
    )));
    let sources = YamlLoader::load_from_str(&docker_file("grafana/datasources.yml")).expect("YAML");
    assert_eq!(
        sources[0]["datasources"][0]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    let password = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
        .as_str()
        .expect("the admin password");
    assert!(
        password.starts_with("${GRAFANA_ADMIN_PASSWORD:?"),
        "{password}"
    );
    // Every file a mount names exists.
    for service in [prometheus, grafana] {
        for mount in strings(&service["volumes"]) {
            let source = mount.split(':').next().expect("a source");
            if source.starts_with('.') {
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("docker")
                    .join(source);
                assert!(path.is_file(), "{}", path.display());
            }
        }
    }
}

#[test]
fn every_compose_variable_is_a_config_key_and_they_load_together() {
    let compose = compose();
    let environment = compose["services"]["energyguard"]["environment"]
        .as_hash()
        .expect("an environment map");
    let mut vars = Vec::new();
    for (name, value) in environment {
        let (name, value) = (
            name.as_str().expect("name"),
            value.as_str().expect("a string value"),
        );
        assert!(name.starts_with("ENERGYGUARD_"), "{name}");
        if name == API_TOKEN_ENV || name == "ENERGYGUARD_MQTT__PASSWORD" {
            assert!(
                value.starts_with("${ENERGYGUARD_"),
                "secrets must come from the operator's environment, not the file: {value}"
            );
            continue;
        }
        vars.push((name.to_string(), value.to_string()));
    }
    // Unknown keys are errors for the loader, so this fails on any variable
    // that is not a config key.
    let config = load_with(&vars).expect("the compose environment loads");
    assert!(!config.mqtt.embedded);
    assert_eq!(config.mqtt.url.as_deref(), Some("mqtt://mosquitto:1883"));
    assert_eq!(config.mqtt.batch_messages, 1000);
    assert_eq!(config.mqtt.username.as_deref(), Some("energyguard"));
    // The check has teeth: an unknown key is refused by the same loader.
    let typo = [("ENERGYGUARD_MQTT__EMBEDED".to_string(), "false".to_string())];
    assert!(load_with(&typo).is_err());
}

#[test]
fn the_dockerfile_runs_the_release_binary_as_a_non_root_user_with_its_variables() {
    let instructions = dockerfile_instructions();
    let find = |keyword: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, rest)| rest.as_str())
            .collect()
    };
    let binary = Path::new(env!("CARGO_BIN_EXE_energyguard"))
        .file_name()
        .and_then(|n| n.to_str())
        .expect("binary name");
    assert_eq!(find("ENTRYPOINT"), [format!("[\"{binary}\"]")]);
    assert_eq!(find("CMD"), ["[\"serve\"]"]);
    let from: Vec<&str> = find("FROM");
    assert_eq!(from.len(), 2, "multi-stage: {from:?}");
    assert!(from[0].starts_with("rust:") && from[0].ends_with("AS build"));
    assert!(from[1].starts_with("debian:") && from[1].contains("slim"));
    assert!(
        find("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release"))
    );
    assert!(find("COPY").iter().any(|c| {
        c.contains(&format!("target/release/{binary}"))
            && c.contains(&format!("/usr/local/bin/{binary}"))
    }));
    let user = find("USER");
    assert!(
        user.len() == 1 && user[0] != "root" && user[0] != "0",
        "{user:?}"
    );
    assert_eq!(find("VOLUME"), ["/data"]);
    assert_eq!(find("EXPOSE"), ["5000 1883"]);
    assert!(
        find("HEALTHCHECK")
            .iter()
            .any(|h| h.contains("http://127.0.0.1:5000/healthz"))
    );

    let mut env = dockerfile_env();
    assert_eq!(env.len(), 3, "{env:?}");
    assert!(env.iter().all(|(name, _)| name.starts_with("ENERGYGUARD_")));
    let refused = load_with(&env).expect_err("no anonymous broker on a public address");
    assert!(refused.contains("mqtt.listen"), "{refused}");
    // Broker users from the environment, as docs/operations.md shows.
    env.push((
        "ENERGYGUARD_MQTT__USERS".into(),
        format!(r#"[{{username="meters", password_hash="{HASH}", role="meter"}}]"#),
    ));
    let config = load_with(&env).expect("the Dockerfile environment with users loads");
    assert_eq!(config.data_dir, Path::new("/data"));
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:5000");
    assert_eq!(config.mqtt.listen.to_string(), "0.0.0.0:1883");
    assert_eq!(config.mqtt.users[0].username, "meters");
}

/// An argon2 hash of "meter-password", as `energyguard hash-password`
/// prints it.
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$Ols4ap6srzwW1EYsKLYHAg$05Tz3S1B18swZ5S200P8jDCKCI3fMuFTz4NJvn8b234";
