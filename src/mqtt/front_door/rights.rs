//! Who may connect to the embedded broker, and what each may publish and
//! subscribe to. Pure, apart from the password check.
//!
//! | role | may publish | may subscribe |
//! |---|---|---|
//! | `meter` | `P/readings/#` | nothing |
//! | `watcher` | nothing | `P/alerts/#`, `P/deadletter` |
//! | `admin` | `P/readings/#` | anything |
//!
//! An anonymous client, where allowed (no users on loopback, or
//! `mqtt.allow_anonymous`), may do what it could on a broker without users:
//! publish anywhere and subscribe to anything. Nobody publishes on
//! `P/alerts/#` or `P/deadletter`, and no last will may name a topic its
//! client could not publish on: only EnergyGuard itself, through its
//! in-process link, speaks there.

use std::collections::HashMap;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use rumqttc::mqttbytes::v4::ConnectReturnCode;

use crate::config::{MqttRole, MqttUser};

/// Who a connected client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Anonymous,
    User(MqttRole),
}

/// The broker's users and whether anonymous clients are accepted.
#[derive(Debug)]
pub struct Users {
    /// Username → (argon2 hash in PHC form, role).
    by_name: HashMap<String, (String, MqttRole)>,
    anonymous: bool,
}

impl Users {
    /// `anonymous`: whether clients without credentials are accepted.
    pub fn new(users: &[MqttUser], anonymous: bool) -> Self {
        Self {
            by_name: users
                .iter()
                .map(|u| (u.username.clone(), (u.password_hash.clone(), u.role)))
                .collect(),
            anonymous,
        }
    }

    /// The role of a client presenting `login` (username, password), or the
    /// CONNACK code refusing it. Verifying a password costs milliseconds of
    /// CPU on purpose: call it off the async workers.
    pub fn authenticate(&self, login: Option<(&str, &str)>) -> Result<Access, ConnectReturnCode> {
        let Some((username, password)) = login.filter(|(name, _)| !name.is_empty()) else {
            return if self.anonymous {
                Ok(Access::Anonymous)
            } else {
                Err(ConnectReturnCode::NotAuthorized)
            };
        };
        if self.by_name.is_empty() && self.anonymous {
            // No users to check against: a name alone is still anonymous.
            return Ok(Access::Anonymous);
        }
        let (hash, role) = self
            .by_name
            .get(username)
            .ok_or(ConnectReturnCode::BadUserNamePassword)?;
        let hash = PasswordHash::new(hash).map_err(|_| ConnectReturnCode::BadUserNamePassword)?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .map(|()| Access::User(*role))
            .map_err(|_| ConnectReturnCode::BadUserNamePassword)
    }
}

/// The topics rights are given on, under one prefix.
#[derive(Debug, Clone)]
pub struct TopicRights {
    readings: String,
    alerts: String,
    deadletter: String,
}

impl TopicRights {
    pub fn new(prefix: &str) -> Self {
        Self {
            readings: format!("{prefix}/readings/#"),
            alerts: format!("{prefix}/alerts/#"),
            deadletter: format!("{prefix}/deadletter"),
        }
    }

    pub fn may_publish(&self, access: Access, topic: &str) -> bool {
        if filter_within(topic, &self.alerts) || filter_within(topic, &self.deadletter) {
            return false;
        }
        match access {
            Access::Anonymous => true,
            Access::User(role) => role != MqttRole::Watcher && filter_within(topic, &self.readings),
        }
    }

    pub fn may_subscribe(&self, access: Access, filter: &str) -> bool {
        let filter = unshared(filter);
        match access {
            Access::User(MqttRole::Meter) => false,
            Access::User(MqttRole::Watcher) => {
                filter_within(filter, &self.alerts) || filter_within(filter, &self.deadletter)
            }
            Access::User(MqttRole::Admin) | Access::Anonymous => true,
        }
    }
}

/// The filter of a shared subscription (`$share/<group>/<filter>`).
fn unshared(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, inner)| inner)
}

/// Whether every topic `filter` matches is also matched by `allowed` (a
/// topic is a filter without wildcards).
fn filter_within(filter: &str, allowed: &str) -> bool {
    let mut levels = filter.split('/');
    for permitted in allowed.split('/') {
        if permitted == "#" {
            // `a/#` also matches `a` itself, and anything below it.
            return true;
        }
        match levels.next() {
            None => return false,
            Some(level) if permitted == "+" => {
                if level == "#" {
                    return false;
                }
            }
            Some(level) => {
                if level != permitted {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;

    #[test]
    fn filters_are_within_what_is_allowed_or_not() {
        for (filter, allowed, within) in [
            ("eg/readings/m1", "eg/readings/#", true),
            ("eg/readings/a/b", "eg/readings/#", true),
            ("eg/readings", "eg/readings/#", true),
            ("eg/alerts/+", "eg/alerts/#", true),
            ("eg/alerts/#", "eg/alerts/#", true),
            ("eg/#", "eg/alerts/#", false),
            ("#", "eg/alerts/#", false),
            ("+/alerts/m1", "eg/alerts/#", false),
            ("eg/alerts2/m1", "eg/alerts/#", false),
            ("eg/deadletter", "eg/deadletter", true),
            ("eg/deadletter/x", "eg/deadletter", false),
            ("eg/+", "eg/deadletter", false),
            ("eg/x", "eg/+", true),
            ("eg/#", "eg/+", false),
        ] {
            assert_eq!(
                filter_within(filter, allowed),
                within,
                "{filter} in {allowed}"
            );
        }
    }

    #[test]
    fn each_role_has_its_rights_and_nobody_publishes_alerts() {
        let rights = TopicRights::new("eg");
        let (meter, watcher, admin) = (
            Access::User(MqttRole::Meter),
            Access::User(MqttRole::Watcher),
            Access::User(MqttRole::Admin),
        );
        for access in [meter, watcher, admin] {
            for topic in [
                "eg/alerts/m1",
                "eg/deadletter",
                "other/topic",
                "eg/readings_x",
            ] {
                assert!(
                    !rights.may_publish(access, topic),
                    "{access:?} published {topic}"
                );
            }
        }
        for topic in ["eg/alerts/m1", "eg/deadletter"] {
            assert!(!rights.may_publish(Access::Anonymous, topic));
        }
        assert!(rights.may_publish(Access::Anonymous, "other/topic"));
        assert!(rights.may_subscribe(Access::Anonymous, "#"));
        assert!(rights.may_publish(meter, "eg/readings/m1"));
        assert!(rights.may_publish(admin, "eg/readings/m1"));
        assert!(!rights.may_publish(watcher, "eg/readings/m1"));
        assert!(!rights.may_subscribe(meter, "eg/readings/+"));
        assert!(!rights.may_subscribe(meter, "eg/alerts/#"));
        assert!(rights.may_subscribe(watcher, "eg/alerts/#"));
        assert!(rights.may_subscribe(watcher, "eg/deadletter"));
        assert!(rights.may_subscribe(watcher, "$share/g/eg/alerts/m1"));
        assert!(!rights.may_subscribe(watcher, "#"));
        assert!(!rights.may_subscribe(watcher, "eg/readings/+"));
        assert!(!rights.may_subscribe(watcher, "$share/g/#"));
        assert!(rights.may_subscribe(admin, "#"));
    }

    #[test]
    fn passwords_are_checked_and_anonymous_clients_only_where_allowed() {
        let salt = SaltString::encode_b64(b"a fixed test salt").expect("salt");
        let hash = Argon2::default()
            .hash_password(b"s3cret", &salt)
            .expect("hash")
            .to_string();
        let meter = MqttUser {
            username: "meters".into(),
            password_hash: hash,
            role: MqttRole::Meter,
        };
        let users = Users::new(std::slice::from_ref(&meter), false);
        assert_eq!(
            users.authenticate(Some(("meters", "s3cret"))),
            Ok(Access::User(MqttRole::Meter))
        );
        assert_eq!(
            users.authenticate(Some(("meters", "guess"))),
            Err(ConnectReturnCode::BadUserNamePassword)
        );
        assert_eq!(
            users.authenticate(Some(("nobody", "s3cret"))),
            Err(ConnectReturnCode::BadUserNamePassword)
        );
        assert_eq!(
            users.authenticate(None),
            Err(ConnectReturnCode::NotAuthorized)
        );
        let open = Users::new(&[meter], true);
        assert_eq!(open.authenticate(None), Ok(Access::Anonymous));
        assert_eq!(
            open.authenticate(Some(("meters", "guess"))),
            Err(ConnectReturnCode::BadUserNamePassword),
            "a wrong password is wrong even where anonymous clients are welcome"
        );
        let loopback = Users::new(&[], true);
        assert_eq!(
            loopback.authenticate(Some(("any", "thing"))),
            Ok(Access::Anonymous)
        );
    }
}
