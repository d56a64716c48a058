//! Configuration (`config/default.toml` documents every key): typed, layered with figment, validated at start.
//!
//! Layers, later wins: built-in defaults, `config/default.toml` if present,
//! the file given with `--config`, then `ENERGYGUARD_*` environment variables
//! with `__` for nesting (`ENERGYGUARD_HTTP__LISTEN=127.0.0.1:8080`). Unknown
//! keys are errors, so a typo fails at start instead of being ignored. Only
//! the composition root reads a [`Config`]; the library takes typed values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

use crate::replication::{Placement, ReplicationSettings, StrategyKind};
use crate::storage::NodeId;
use crate::storage::sqlite::Synchronous;

/// `mqtt.batch_messages` at most: an external broker's consumer queues a
/// batch's acks in its client's request queue, beside whatever else waits
/// there.
const MAX_BATCH_MESSAGES: usize = crate::mqtt::external::REQUEST_QUEUE / 2;

/// Environment variables that share the prefix but are not config keys:
/// the admin token, the CLI's own (`ENERGYGUARD_URL`, `_TOKEN`, `_CA`,
/// `_MQTT_URL`) and the compose file's broker password, which an operator
/// exports in the shell that may also start the service.
const NOT_CONFIG_KEYS: [&str; 6] = [
    "api_token",
    "url",
    "token",
    "ca",
    "mqtt_url",
    "mqtt_password",
];
/// String keys whose environment values must be taken verbatim: figment's
/// `Env` parses every value, so `ENERGYGUARD_MQTT__CLIENT_ID=007` would
/// arrive as the integer 7.
const VERBATIM_KEYS: [&str; 8] = [
    "data_dir",
    "mqtt.url",
    "mqtt.username",
    "mqtt.password",
    "mqtt.topic_prefix",
    "mqtt.client_id",
    "mqtt.share_group",
    "cluster.secret",
];
/// The variable that adds one admin token.
pub const API_TOKEN_ENV: &str = "ENERGYGUARD_API_TOKEN";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where node databases, cluster state and the generated token live.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub replication: ReplicationConfig,
    pub cluster: ClusterConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Connections at most; more are refused at once.
    pub max_connections: usize,
    /// How long SIGTERM waits for requests in flight (`10s`, `1m`).
    pub shutdown_grace: String,
    /// Both set: the API speaks HTTPS (PEM files).
    #[serde(deserialize_with = "optional_text")]
    pub tls_cert: Option<String>,
    #[serde(deserialize_with = "optional_text")]
    pub tls_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub embedded: bool,
    pub listen: SocketAddr,
    /// The broker to consume from; defaults to `listen` when embedded.
    #[serde(deserialize_with = "optional_text")]
    pub url: Option<String>,
    /// Credentials for the broker at `url`; they win over any in the URL.
    #[serde(deserialize_with = "optional_text")]
    pub username: Option<String>,
    #[serde(deserialize_with = "optional_text")]
    pub password: Option<String>,
    pub topic_prefix: String,
    pub client_id: String,
    pub share_group: String,
    /// The embedded broker's in-memory window per subscription, in MiB.
    /// Publishers are held back once EnergyGuard is half of it behind.
    pub broker_memory_mb: usize,
    /// Largest MQTT message accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Messages stored (and acknowledged) together at most.
    pub batch_messages: usize,
    /// Client connections to the embedded broker at most; more are refused
    /// at once.
    pub max_connections: usize,
    /// Accept clients without credentials on a non-loopback `listen`.
    pub allow_anonymous: bool,
    /// The embedded broker's users. With none, only anonymous clients, and
    /// only while the broker listens on loopback or `allow_anonymous` is set.
    pub users: Vec<MqttUser>,
    /// Where the embedded broker also speaks MQTT over TLS (e.g.
    /// `0.0.0.0:8883`), with `tls_cert` and `tls_key` (PEM files).
    #[serde(deserialize_with = "optional_text")]
    pub tls_listen: Option<String>,
    #[serde(deserialize_with = "optional_text")]
    pub tls_cert: Option<String>,
    #[serde(deserialize_with = "optional_text")]
    pub tls_key: Option<String>,
    /// An extra CA (PEM) to trust for an external `mqtts://` broker.
    #[serde(deserialize_with = "optional_text")]
    pub ca_file: Option<String>,
}

impl MqttConfig {
    /// `tls_listen` as an address, if set.
    pub fn tls_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.tls_listen
            .as_deref()
            .map(|text| {
                text.parse()
                    .map_err(|e| ConfigError::invalid("mqtt.tls_listen", format!("{text:?}: {e}")))
            })
            .transpose()
    }
}

/// A user of the embedded broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUser {
    pub username: String,
    /// An argon2 hash in PHC form, as `energyguard hash-password` prints.
    pub password_hash: String,
    pub role: MqttRole,
}

/// What a broker user may do (the topic rights are in
/// `mqtt::front_door::rights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttRole {
    /// Publishes readings.
    Meter,
    /// Subscribes to alerts and dead letters.
    Watcher,
    /// Publishes readings and subscribes to anything.
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    pub strategy: StrategyKind,
    pub nodes: Vec<NodeConfig>,
    pub replication_factor: usize,
    pub virtual_nodes: u32,
    pub write_quorum: usize,
}

/// Where one storage node lives: `"node1"` (a file in `data_dir`),
/// `{ id, path }` (its own directory, e.g. its own disk) or `{ id, url }`
/// (a node process, `energyguard node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    pub location: NodeLocation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLocation {
    DataDir,
    Dir(PathBuf),
    Process(String),
}

impl NodeConfig {
    /// A node in `data_dir`.
    pub fn in_data_dir(id: NodeId) -> Self {
        Self {
            id,
            location: NodeLocation::DataDir,
        }
    }
}

/// The two forms a node takes in TOML or JSON.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NodeForm {
    Id(NodeId),
    Table(NodeTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTable {
    id: NodeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

impl Serialize for NodeConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let id = self.id.clone();
        let form = match &self.location {
            NodeLocation::DataDir => NodeForm::Id(id),
            NodeLocation::Dir(path) => NodeForm::Table(NodeTable {
                id,
                path: Some(path.clone()),
                url: None,
            }),
            NodeLocation::Process(url) => NodeForm::Table(NodeTable {
                id,
                path: None,
                url: Some(url.clone()),
            }),
        };
        form.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for NodeConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = NodeForm::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "a node is an id (\"node1\"), { id, path } or { id, url } with a valid id",
            )
        })?;
        let (id, location) = match form {
            NodeForm::Id(id) => (id, NodeLocation::DataDir),
            NodeForm::Table(NodeTable { id, path, url }) => match (path, url) {
                (None, None) => (id, NodeLocation::DataDir),
                (Some(path), None) => (id, NodeLocation::Dir(path)),
                (None, Some(url)) => (id, NodeLocation::Process(url)),
                (Some(_), Some(_)) => {
                    return Err(serde::de::Error::custom(format!(
                        "node {id} has both a path and a url: a node lives in one place"
                    )));
                }
            },
        };
        Ok(Self { id, location })
    }
}

/// `[cluster]`: how the service and its node processes trust and watch
/// each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Shared with every node process; required once a node has a `url`.
    pub secret: String,
    /// A node silent this long is down (`3s`, `500ms`).
    pub failure_timeout: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            secret: String::new(),
            failure_timeout: "3s".into(),
        }
    }
}

/// `cluster.secret` at least this long.
const MIN_SECRET_CHARS: usize = 16;

impl ClusterConfig {
    pub fn failure_timeout(&self) -> Result<std::time::Duration, ConfigError> {
        let ms = crate::history::parse_duration("cluster.failure_timeout", &self.failure_timeout)
            .map_err(|e| ConfigError::invalid("cluster.failure_timeout", e.reason))?;
        if !(100..=600_000).contains(&ms) {
            return Err(ConfigError::invalid(
                "cluster.failure_timeout",
                "must be between 100ms and 10m",
            ));
        }
        Ok(std::time::Duration::from_millis(ms as u64))
    }

    /// The secret, checked: what a node process and a service with node
    /// processes need.
    pub fn checked_secret(&self) -> Result<&str, ConfigError> {
        let secret = self.secret.as_str();
        if secret.chars().count() < MIN_SECRET_CHARS || secret.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "cluster.secret",
                format!(
                    "must be at least {MIN_SECRET_CHARS} characters without spaces \
                     (also ENERGYGUARD_CLUSTER__SECRET)"
                ),
            ));
        }
        Ok(secret)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `full` (default): a commit survives power loss. `normal`: it survives
    /// a crash of the process (kill -9) but not of the machine.
    pub synchronous: Synchronous,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    pub role: Role,
}

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            http: HttpConfig::default(),
            mqtt: MqttConfig::default(),
            replication: ReplicationConfig::default(),
            cluster: ClusterConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            max_body_bytes: 16 * 1024 * 1024,
            max_connections: 1_024,
            shutdown_grace: "10s".into(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            url: None,
            username: None,
            password: None,
            topic_prefix: "energyguard".into(),
            client_id: "energyguard".into(),
            share_group: String::new(),
            broker_memory_mb: 512,
            max_payload_bytes: 1024 * 1024,
            batch_messages: 1_000,
            max_connections: 1_024,
            allow_anonymous: false,
            users: Vec::new(),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            ca_file: None,
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        let defaults = ReplicationSettings::default();
        Self {
            strategy: defaults.strategy,
            nodes: ["node1", "node2", "node3"]
                .iter()
                .map(|n| {
                    NodeConfig::in_data_dir(
                        n.parse()
                            .unwrap_or_else(|_| unreachable!("valid literal node id")),
                    )
                })
                .collect(),
            replication_factor: defaults.replication_factor,
            virtual_nodes: defaults.virtual_nodes,
            write_quorum: defaults.write_quorum,
        }
    }
}

impl HttpConfig {
    /// `shutdown_grace` as a duration.
    pub fn shutdown_grace(&self) -> Result<std::time::Duration, ConfigError> {
        crate::history::parse_duration("http.shutdown_grace", &self.shutdown_grace)
            .map(|ms| std::time::Duration::from_millis(ms as u64))
            .map_err(|e| ConfigError::invalid("http.shutdown_grace", e.reason))
    }
}

impl ReplicationConfig {
    /// The node ids, in the order configured.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    pub fn settings(&self) -> ReplicationSettings {
        ReplicationSettings {
            strategy: self.strategy,
            replication_factor: self.replication_factor,
            virtual_nodes: self.virtual_nodes,
            write_quorum: self.write_quorum,
        }
    }
}

/// A configuration that could not be loaded, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Loads the layers, each over the one before: the defaults,
    /// `config/default.toml` (if present), `file`, then `ENERGYGUARD_*`
    /// variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let shipped = Path::new("config/default.toml");
        if shipped.is_file() {
            figment = figment.merge(Toml::file_exact(shipped));
        }
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::invalid(
                    "--config",
                    format!("{} is not a readable file", file.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed("ENERGYGUARD_")
                .ignore(&NOT_CONFIG_KEYS)
                .split("__"),
        );
        for key in VERBATIM_KEYS {
            let name = format!("ENERGYGUARD_{}", key.replace('.', "__").to_uppercase());
            if let Ok(raw) = std::env::var(&name) {
                figment = figment.merge(Serialized::default(key, raw));
            }
        }
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Broker users: names unique, hashes argon2, and nobody anonymous on
    /// a public address unless asked for (mosquitto 2's rule).
    fn validate_mqtt_users(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, user) in self.mqtt.users.iter().enumerate() {
            if user.username.is_empty() || !names.insert(user.username.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("mqtt.users[{i}].username"),
                    "must be non-empty and unique",
                ));
            }
            if let Err(error) = argon2::PasswordHash::new(&user.password_hash) {
                return Err(ConfigError::invalid(
                    &format!("mqtt.users[{i}].password_hash"),
                    format!(
                        "is not a password hash ({error}); make one with `energyguard hash-password`"
                    ),
                ));
            }
        }
        let tls_listen = self.mqtt.tls_listen()?;
        if tls_listen.is_some() && (self.mqtt.tls_cert.is_none() || self.mqtt.tls_key.is_none()) {
            return Err(ConfigError::invalid(
                "mqtt.tls_listen",
                "needs mqtt.tls_cert and mqtt.tls_key",
            ));
        }
        let public = [
            ("mqtt.listen", Some(self.mqtt.listen)),
            ("mqtt.tls_listen", tls_listen),
        ]
        .into_iter()
        .find_map(|(key, address)| address.filter(|a| !a.ip().is_loopback()).map(|a| (key, a)));
        if let Some((key, address)) = public
            && self.mqtt.embedded
            && self.mqtt.users.is_empty()
            && !self.mqtt.allow_anonymous
        {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "{address} is not a loopback address and no broker users are configured: \
                     add [[mqtt.users]] (see `energyguard hash-password`), or set \
                     mqtt.allow_anonymous = true to let anyone who reaches it publish"
                ),
            ));
        }
        Ok(())
    }

    /// Node places: URLs that parse, a secret once any node is a process,
    /// and a failure timeout in range.
    fn validate_nodes(&self) -> Result<(), ConfigError> {
        self.cluster.failure_timeout()?;
        let mut processes = 0;
        for (i, node) in self.replication.nodes.iter().enumerate() {
            if let NodeLocation::Process(url) = &node.location {
                processes += 1;
                let parsed = url::Url::parse(url).ok();
                let usable = parsed.as_ref().is_some_and(|u| {
                    u.scheme() == "http" && u.host().is_some() && u.port().is_some()
                });
                if !usable {
                    return Err(ConfigError::invalid(
                        &format!("replication.nodes[{i}].url"),
                        format!("{url:?} is not like http://10.0.0.3:5100"),
                    ));
                }
            }
        }
        if processes > 0 {
            self.cluster.checked_secret()?;
        }
        Ok(())
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Placement::new(self.replication.settings(), self.replication.node_ids())
            .map_err(|e| ConfigError::invalid(&format!("replication.{}", e.field), e.reason))?;
        self.validate_nodes()?;
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::invalid(
                "http.max_connections",
                "must be at least 1",
            ));
        }
        self.http.shutdown_grace()?;
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(ConfigError::invalid(
                "http.tls_cert",
                "http.tls_cert and http.tls_key are set together or not at all",
            ));
        }
        let prefix = &self.mqtt.topic_prefix;
        if prefix.is_empty()
            || prefix.contains(['+', '#'])
            || prefix.starts_with('/')
            || prefix.ends_with('/')
        {
            return Err(ConfigError::invalid(
                "mqtt.topic_prefix",
                "must be non-empty, without wildcards (+, #) or leading/trailing '/'",
            ));
        }
        if self.mqtt.client_id.is_empty() {
            return Err(ConfigError::invalid("mqtt.client_id", "must not be empty"));
        }
        if self.mqtt.broker_memory_mb < 16 {
            return Err(ConfigError::invalid(
                "mqtt.broker_memory_mb",
                "must be at least 16",
            ));
        }
        if self.mqtt.max_payload_bytes < 1024 {
            return Err(ConfigError::invalid(
                "mqtt.max_payload_bytes",
                "must be at least 1024",
            ));
        }
        if !(1..=MAX_BATCH_MESSAGES).contains(&self.mqtt.batch_messages) {
            return Err(ConfigError::invalid(
                "mqtt.batch_messages",
                format!("must be between 1 and {MAX_BATCH_MESSAGES}"),
            ));
        }
        if self.mqtt.max_connections == 0 {
            return Err(ConfigError::invalid(
                "mqtt.max_connections",
                "must be at least 1",
            ));
        }
        self.validate_mqtt_users()?;
        for (i, token) in self.auth.tokens.iter().enumerate() {
            if token.token.chars().count() < crate::http::auth::MIN_TOKEN_CHARS {
                return Err(ConfigError::invalid(
                    &format!("auth.tokens[{i}].token"),
                    format!(
                        "must have at least {} characters",
                        crate::http::auth::MIN_TOKEN_CHARS
                    ),
                ));
            }
        }
        if !self.mqtt.embedded && self.mqtt.url.is_none() {
            return Err(ConfigError::invalid(
                "mqtt.url",
                "is required when mqtt.embedded is false",
            ));
        }
        if self.mqtt.password.is_some() && self.mqtt.username.is_none() {
            return Err(ConfigError::invalid(
                "mqtt.password",
                "needs mqtt.username as well",
            ));
        }
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.token.len() < 16 || t.token.chars().any(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    &format!("auth.tokens[{i}].token"),
                    "must be at least 16 characters without spaces",
                ));
            }
        }
        Ok(())
    }
}

/// `url = ""` in a file means "not set".
fn optional_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

#[cfg(test)]
// figment's `Jail` (a sandboxed working directory and environment) makes its
// closures return `figment::Error`, which is large; that is its API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    /// Loads inside a `Jail`, whose working directory and environment are the test's own.
    fn load(file: Option<&str>) -> Result<Config, ConfigError> {
        Config::load(file.map(Path::new))
    }

    #[test]
    fn defaults_match_the_spec() {
        Jail::expect_with(|_| {
            let c = load(None).expect("defaults load");
            assert_eq!(c.http.listen.to_string(), "127.0.0.1:5000");
            assert_eq!(c.mqtt.listen.to_string(), "127.0.0.1:1883");
            assert!(c.mqtt.embedded);
            assert_eq!(c.replication.strategy, StrategyKind::Consistent);
            assert_eq!(
                (c.replication.replication_factor, c.replication.write_quorum),
                (2, 1)
            );
            assert_eq!(c.replication.nodes.len(), 3);
            assert!(c.auth.tokens.is_empty(), "no default credential");
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order_and_env_nests_with_double_underscores() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(
                "config/default.toml",
                "data_dir = \"from-default\"\n[http]\nlisten = \"127.0.0.1:1\"",
            )?;
            jail.create_file(
                "mine.toml",
                "[http]\nlisten = \"127.0.0.1:2\"\n[replication]\nstrategy = \"full\"",
            )?;
            jail.set_env("ENERGYGUARD_HTTP__LISTEN", "127.0.0.1:3");
            jail.set_env("ENERGYGUARD_MQTT__CLIENT_ID", "007");
            jail.set_env("ENERGYGUARD_API_TOKEN", "123456");
            for (cli_or_shell, value) in [
                ("ENERGYGUARD_URL", "http://elsewhere"),
                ("ENERGYGUARD_TOKEN", "a-client-token-0123456789"),
                ("ENERGYGUARD_CA", "ca.pem"),
                ("ENERGYGUARD_MQTT_URL", "mqtt://elsewhere"),
                ("ENERGYGUARD_MQTT_PASSWORD", "for-compose"),
            ] {
                jail.set_env(cli_or_shell, value);
            }
            let c = load(Some("mine.toml")).expect("loads");
            assert_eq!(c.data_dir, PathBuf::from("from-default"));
            assert_eq!(c.http.listen.to_string(), "127.0.0.1:3");
            assert_eq!(c.replication.strategy, StrategyKind::Full);
            assert_eq!(c.mqtt.client_id, "007", "digits stay a string");
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[replication]\nstrategy = \"ring\"", "replication.strategy"),
            (
                "[replication]\nreplication_factor = 5",
                "replication.replication_factor",
            ),
            (
                "[replication]\nwrite_quorum = 3",
                "replication.write_quorum",
            ),
            ("[htp]\nlisten = \"x\"", "htp"),
            ("[http]\nlisten = \"nowhere\"", "http.listen"),
            ("[mqtt]\ntopic_prefix = \"a/#\"", "mqtt.topic_prefix"),
            ("[mqtt]\nbatch_messages = 5001", "mqtt.batch_messages"),
            ("[mqtt]\nbatch_messages = 0", "mqtt.batch_messages"),
            (
                "[[auth.tokens]]\ntoken = \"short\"\nrole = \"admin\"",
                "auth.tokens[0].token",
            ),
            (
                "[[auth.tokens]]\ntoken = \"long-enough-token-1234\"\nrole = \"root\"",
                "role",
            ),
        ];
        for (toml, key) in cases {
            Jail::expect_with(|jail| {
                jail.create_file("bad.toml", toml)?;
                let err = load(Some("bad.toml")).expect_err(toml).to_string();
                assert!(
                    err.contains(key),
                    "{toml:?} gave {err:?}, which does not name {key}"
                );
                Ok(())
            });
        }
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        Jail::expect_with(|_| {
            let err = load(Some("absent.toml")).expect_err("missing file");
            assert!(err.to_string().contains("--config"));
            Ok(())
        });
    }

    #[test]
    fn the_shipped_default_file_parses_and_equals_the_defaults() {
        let shipped = include_str!("../config/default.toml");
        let parsed: Config = Figment::from(Toml::string(shipped))
            .extract()
            .expect("shipped file parses");
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&parsed).expect("json"),
            serde_json::to_value(&defaults).expect("json")
        );
    }
}
