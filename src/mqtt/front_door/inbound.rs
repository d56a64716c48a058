//! What a client sends through the front door, packet by packet.
//!
//! Packets are framed and decoded with rumqtt's MQTT 3.1.1 codec
//! (`rumqttc::mqttbytes`, the one rumqttd's own clients use); packets that
//! pass go to the broker byte for byte as the client sent them. The rules:
//! * the first packet must be a CONNECT; its credentials decide the client's
//!   access ([`Users`]); EnergyGuard's own client id is refused, and so is a
//!   last will on a topic the client may not publish on. The CONNECT goes on
//!   with the broker's private credentials in place of the client's, so the
//!   broker accepts only what came through the door;
//! * a PUBLISH on a topic the role may not publish on is dropped (a QoS 1
//!   one acknowledged by the door, so the client does not resend it forever;
//!   a QoS 2 one ends the connection); a SUBSCRIBE goes on with the filters
//!   the role may have, the others answered with the failure code;
//! * a PUBLISH on a readings topic enters only once the [`Backlog`] has room
//!   for it: until then nothing more is read from that client.
//!
//! A malformed packet or one over the size limit ends the connection after
//! the complete packets before it, as the broker itself would end it.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Login, Packet, PubAck, SubAck, Subscribe, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{self, FixedHeader, PacketType, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};

use super::rights::{Access, TopicRights, Users};
use crate::config::MqttRole;
use crate::mqtt::backlog::{Backlog, message_size};
use crate::mqtt::signalled;

/// Bytes read from a client at a time.
const READ_CHUNK: usize = 64 * 1024;

/// What the door enforces, shared by every connection.
#[derive(Debug)]
pub struct DoorRules {
    /// The filter the readings consumer subscribes with: publishes matching
    /// it are counted in the backlog.
    pub readings_filter: String,
    /// EnergyGuard's own client id, which no client may take.
    pub reserved_client_id: String,
    /// The largest packet accepted (the broker's payload limit and headers).
    pub max_packet_bytes: usize,
    pub backlog: Arc<Backlog>,
    pub users: Users,
    pub rights: TopicRights,
    /// The broker's own credentials (username, password), put in every
    /// CONNECT that passes.
    pub broker_login: (String, String),
    /// Password checks running at once at most: each costs milliseconds of
    /// CPU on purpose, and a flood of CONNECTs must not take every core.
    pub checks: Semaphore,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the client closed the connection")]
    Closed,
    #[error("the service is stopping")]
    Stopping,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed MQTT: {0}")]
    Protocol(mqttbytes::Error),
    #[error("the first packet was not a CONNECT")]
    NotConnect,
    #[error("a QoS 2 publish on a topic the client may not publish on")]
    RefusedQos2,
}

/// What the door itself sends a client, between the broker's packets.
#[derive(Debug)]
pub enum Reply {
    /// An encoded packet (a PUBACK for a dropped publish, a SUBACK).
    Packet(BytesMut),
    /// The broker's SUBACK for `pkid` answers only the filters forwarded:
    /// the failure code goes at each of `refused` (positions in the
    /// client's SUBSCRIBE).
    Patch { pkid: u16, refused: Vec<usize> },
}

/// The answer to a client's CONNECT.
pub enum Admission {
    /// Forward it, as `connect` (the same CONNECT with the broker's own
    /// credentials), and everything after it.
    Admit { connect: BytesMut, access: Access },
    /// Send these bytes (a refusing CONNACK) and close.
    Refuse(BytesMut),
}

/// One client's inbound stream: bytes read but not yet forwarded.
pub struct Inbound {
    rules: Arc<DoorRules>,
    buffer: BytesMut,
    access: Access,
    replies: mpsc::Sender<Reply>,
}

impl Inbound {
    pub fn new(rules: Arc<DoorRules>, replies: mpsc::Sender<Reply>) -> Self {
        Self {
            rules,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            access: Access::User(MqttRole::Meter),
            replies,
        }
    }

    /// Reads the client's first packet, which must be a CONNECT, and decides
    /// whether it may go on. On admission the rewritten CONNECT is what the
    /// broker must see first.
    pub async fn read_connect(
        &mut self,
        client: &mut (impl AsyncRead + Unpin),
    ) -> Result<Admission, FrameError> {
        let header = loop {
            if let Some(header) = self.frame_at(0)? {
                break header;
            }
            self.read_more(client).await?;
        };
        if header.packet_type().map_err(FrameError::Protocol)? != PacketType::Connect {
            return Err(FrameError::NotConnect);
        }
        let Packet::Connect(mut connect) = self.decode(0, &header)? else {
            return Err(FrameError::NotConnect);
        };
        self.buffer.advance(header.frame_length());
        let refuse = |code| {
            metrics::counter!("energyguard_mqtt_refused_total", "packet" => "connect").increment(1);
            Ok(Admission::Refuse(encode(Packet::ConnAck(ConnAck::new(
                code, false,
            )))))
        };
        if connect.client_id == self.rules.reserved_client_id {
            tracing::warn!(client_id = %connect.client_id, "refused an MQTT client using EnergyGuard's own client id");
            return refuse(ConnectReturnCode::NotAuthorized);
        }
        let login = connect.login.take();
        let access = match self.authenticate(login).await {
            Ok(access) => access,
            Err(code) => {
                tracing::warn!(client_id = %connect.client_id, ?code, "refused an MQTT client's credentials");
                return refuse(code);
            }
        };
        if let Some(will) = &connect.last_will
            && !self.rules.rights.may_publish(access, &will.topic)
        {
            tracing::warn!(client_id = %connect.client_id, topic = %will.topic, "refused an MQTT last will on a topic its client may not publish on");
            return refuse(ConnectReturnCode::NotAuthorized);
        }
        let (username, password) = &self.rules.broker_login;
        connect.login = Some(Login::new(username, password));
        self.access = access;
        Ok(Admission::Admit {
            connect: encode(Packet::Connect(connect)),
            access,
        })
    }

    /// Checks credentials off the async workers, a few at a time.
    async fn authenticate(&self, login: Option<Login>) -> Result<Access, ConnectReturnCode> {
        let _turn = self
            .rules
            .checks
            .acquire()
            .await
            .map_err(|_| ConnectReturnCode::ServiceUnavailable)?;
        let rules = self.rules.clone();
        tokio::task::spawn_blocking(move || {
            let login = login
                .as_ref()
                .map(|l| (l.username.as_str(), l.password.as_str()));
            rules.users.authenticate(login)
        })
        .await
        .unwrap_or(Err(ConnectReturnCode::ServiceUnavailable))
    }

    /// Forwards complete packets to `broker` until the client closes, a
    /// packet is malformed or refused beyond answering, writing fails, or
    /// `closing` is signalled.
    pub async fn forward(
        &mut self,
        client: &mut (impl AsyncRead + Unpin),
        broker: &mut (impl AsyncWrite + Unpin),
        closing: &mut watch::Receiver<bool>,
    ) -> FrameError {
        loop {
            if let Err(error) = self.forward_complete(broker, closing).await {
                return error;
            }
            let read = tokio::select! {
                read = self.read_more(client) => read,
                _ = signalled(closing) => Err(FrameError::Stopping),
            };
            if let Err(error) = read {
                return error;
            }
        }
    }

    /// Forwards every complete packet buffered: those that pass as they
    /// are, in runs; refused ones answered or rewritten; readings admitted
    /// into the backlog on the way.
    async fn forward_complete(
        &mut self,
        broker: &mut (impl AsyncWrite + Unpin),
        closing: &mut watch::Receiver<bool>,
    ) -> Result<(), FrameError> {
        // Bytes at the front of the buffer that may go as they are, and how
        // many of them are readings already counted in the backlog.
        let mut ready = 0;
        let mut admitted = 0;
        let mut bad = None;
        loop {
            let header = match self.frame_at(ready) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(error) => {
                    bad = Some(error);
                    break;
                }
            };
            let verdict = match self.judge(ready, &header) {
                Ok(verdict) => verdict,
                Err(error) => {
                    bad = Some(error);
                    break;
                }
            };
            match verdict {
                Verdict::Pass => {}
                Verdict::Reading(size) => {
                    if !self.rules.backlog.try_admit(size) {
                        // Let what may go go, then wait for room.
                        self.write_front(broker, &mut ready, &mut admitted).await?;
                        tokio::select! {
                            () = self.rules.backlog.admit(size) => {}
                            _ = signalled(closing) => return Err(FrameError::Stopping),
                        }
                    }
                    admitted += size;
                }
                Verdict::Replace { instead, reply } => {
                    self.write_front(broker, &mut ready, &mut admitted).await?;
                    if let Some(reply) = reply {
                        // Sent before the rewritten packet, so a patch is in
                        // place before the broker can answer.
                        self.replies
                            .send(reply)
                            .await
                            .map_err(|_| FrameError::Closed)?;
                    }
                    if let Some(instead) = instead {
                        broker.write_all(&instead).await?;
                    }
                    self.buffer.advance(header.frame_length());
                    continue;
                }
                Verdict::End(error) => {
                    bad = Some(error);
                    break;
                }
            }
            ready += header.frame_length();
        }
        self.write_front(broker, &mut ready, &mut admitted).await?;
        bad.map_or(Ok(()), Err)
    }

    /// What to do with the packet at `offset`.
    fn judge(&self, offset: usize, header: &FixedHeader) -> Result<Verdict, FrameError> {
        let kind = header.packet_type().map_err(FrameError::Protocol)?;
        if !matches!(kind, PacketType::Publish | PacketType::Subscribe) {
            return Ok(Verdict::Pass);
        }
        Ok(match self.decode(offset, header)? {
            Packet::Publish(publish) => {
                if !self.rules.rights.may_publish(self.access, &publish.topic) {
                    count_refusal("publish");
                    match publish.qos {
                        QoS::AtMostOnce => Verdict::drop(None),
                        QoS::AtLeastOnce => Verdict::drop(Some(Reply::Packet(encode(
                            Packet::PubAck(PubAck::new(publish.pkid)),
                        )))),
                        QoS::ExactlyOnce => Verdict::End(FrameError::RefusedQos2),
                    }
                } else if rumqttd::protocol::matches(&publish.topic, &self.rules.readings_filter) {
                    Verdict::Reading(message_size(publish.topic.len(), publish.payload.len()))
                } else {
                    Verdict::Pass
                }
            }
            Packet::Subscribe(subscribe) => self.judge_subscribe(subscribe),
            _ => Verdict::Pass,
        })
    }

    /// Keeps the filters the role may have; answers the others with the
    /// failure code.
    fn judge_subscribe(&self, subscribe: Subscribe) -> Verdict {
        let (allowed, refused): (Vec<_>, Vec<_>) = subscribe
            .filters
            .into_iter()
            .enumerate()
            .partition(|(_, f)| self.rules.rights.may_subscribe(self.access, &f.path));
        if refused.is_empty() {
            return Verdict::Pass;
        }
        count_refusal("subscribe");
        let refused: Vec<usize> = refused.into_iter().map(|(i, _)| i).collect();
        if allowed.is_empty() {
            let codes = vec![SubscribeReasonCode::Failure; refused.len()];
            let answer = encode(Packet::SubAck(SubAck::new(subscribe.pkid, codes)));
            return Verdict::drop(Some(Reply::Packet(answer)));
        }
        let narrowed = Subscribe {
            pkid: subscribe.pkid,
            filters: allowed.into_iter().map(|(_, f)| f).collect(),
        };
        Verdict::Replace {
            instead: Some(encode(Packet::Subscribe(narrowed))),
            reply: Some(Reply::Patch {
                pkid: subscribe.pkid,
                refused,
            }),
        }
    }

    /// Writes the first `ready` bytes to the broker and drops them from the
    /// buffer. Readings that were admitted but could not be written leave
    /// the backlog again.
    async fn write_front(
        &mut self,
        broker: &mut (impl AsyncWrite + Unpin),
        ready: &mut usize,
        admitted: &mut usize,
    ) -> Result<(), FrameError> {
        if *ready == 0 {
            return Ok(());
        }
        let written = broker.write_all(&self.buffer[..*ready]).await;
        if written.is_err() {
            self.rules.backlog.release(*admitted);
        }
        written?;
        self.buffer.advance(*ready);
        (*ready, *admitted) = (0, 0);
        Ok(())
    }

    /// The header of the packet at `offset` if it is complete in the buffer.
    fn frame_at(&self, offset: usize) -> Result<Option<FixedHeader>, FrameError> {
        match mqttbytes::check(self.buffer[offset..].iter(), self.rules.max_packet_bytes) {
            Ok(header) => Ok(Some(header)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(error) => Err(FrameError::Protocol(error)),
        }
    }

    /// Decodes the packet at `offset` from a copy, leaving the buffer as the
    /// client sent it.
    fn decode(&self, offset: usize, header: &FixedHeader) -> Result<Packet, FrameError> {
        let mut frame = BytesMut::from(&self.buffer[offset..offset + header.frame_length()]);
        Packet::read(&mut frame, self.rules.max_packet_bytes).map_err(FrameError::Protocol)
    }

    async fn read_more(&mut self, client: &mut (impl AsyncRead + Unpin)) -> Result<(), FrameError> {
        self.buffer.reserve(READ_CHUNK);
        match client.read_buf(&mut self.buffer).await? {
            0 => Err(FrameError::Closed),
            _ => Ok(()),
        }
    }
}

/// What becomes of one packet.
enum Verdict {
    /// Forwarded as it is.
    Pass,
    /// A reading of this size: forwarded once the backlog has room.
    Reading(usize),
    /// Not forwarded as it is: `instead` goes to the broker and `reply` to
    /// the client, either possibly nothing.
    Replace {
        instead: Option<BytesMut>,
        reply: Option<Reply>,
    },
    /// Ends the connection.
    End(FrameError),
}

impl Verdict {
    fn drop(reply: Option<Reply>) -> Self {
        Self::Replace {
            instead: None,
            reply,
        }
    }
}

fn count_refusal(packet: &'static str) {
    metrics::counter!("energyguard_mqtt_refused_total", "packet" => packet).increment(1);
}

/// A packet, encoded. Only packets the door builds itself from decoded
/// ones are encoded, and they fit the limits they were decoded under.
pub fn encode(packet: Packet) -> BytesMut {
    let mut bytes = BytesMut::new();
    let _ = packet.write(&mut bytes, usize::MAX);
    bytes
}

/// Writes a refusal and closes.
pub async fn refuse(client: &mut (impl AsyncWrite + Unpin), connack: &[u8]) {
    let _ = client.write_all(connack).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttUser;
    use argon2::password_hash::SaltString;
    use argon2::{Argon2, PasswordHasher};
    use rumqttc::mqttbytes::v4::{Connect, LastWill, Publish, SubscribeFilter};
    use std::time::Duration;

    const PASSWORD: &str = "meter-password";

    fn rules(capacity: usize, role: MqttRole) -> Arc<DoorRules> {
        let salt = SaltString::encode_b64(b"a fixed test salt").expect("salt");
        let hash = Argon2::default()
            .hash_password(PASSWORD.as_bytes(), &salt)
            .expect("hash")
            .to_string();
        let user = MqttUser {
            username: "user".into(),
            password_hash: hash,
            role,
        };
        Arc::new(DoorRules {
            readings_filter: "eg/readings/+".into(),
            reserved_client_id: "energyguard".into(),
            max_packet_bytes: 1024,
            backlog: Arc::new(Backlog::new(capacity, Arc::default())),
            users: Users::new(&[user], false),
            rights: TopicRights::new("eg"),
            broker_login: ("door".into(), "secret".into()),
            checks: Semaphore::new(1),
        })
    }

    fn door(rules: Arc<DoorRules>) -> (Inbound, mpsc::Receiver<Reply>) {
        let (replies, answered) = mpsc::channel(8);
        (Inbound::new(rules, replies), answered)
    }

    fn connect_as(client_id: &str, password: &str, will: Option<&str>) -> Vec<u8> {
        let mut connect = Connect::new(client_id);
        connect.login = Some(Login::new("user", password));
        connect.last_will = will.map(|topic| LastWill::new(topic, "gone", QoS::AtLeastOnce, true));
        encode(Packet::Connect(connect)).to_vec()
    }

    fn connect(client_id: &str) -> Vec<u8> {
        connect_as(client_id, PASSWORD, None)
    }

    fn publish(topic: &str, payload: &str, qos: QoS) -> Vec<u8> {
        let mut publish = Publish::new(topic, qos, payload.as_bytes());
        publish.pkid = if qos == QoS::AtMostOnce { 0 } else { 9 };
        encode(Packet::Publish(publish)).to_vec()
    }

    async fn admitted(door: &mut Inbound, stream: &mut (impl AsyncRead + Unpin)) -> BytesMut {
        match door.read_connect(stream).await {
            Ok(Admission::Admit { connect, .. }) => connect,
            Ok(Admission::Refuse(answer)) => panic!("refused: {answer:?}"),
            Err(error) => panic!("{error}"),
        }
    }

    async fn refusal(rules: Arc<DoorRules>, stream: Vec<u8>) -> Vec<u8> {
        match door(rules).0.read_connect(&mut &stream[..]).await {
            Ok(Admission::Refuse(answer)) => answer.to_vec(),
            Ok(Admission::Admit { .. }) => panic!("admitted"),
            Err(error) => panic!("{error}"),
        }
    }

    #[tokio::test]
    async fn connects_are_checked_and_pass_with_the_brokers_credentials() {
        let not_authorized = [0x20, 2, 0, 5];
        let bad_password = [0x20, 2, 0, 4];
        let meter = || rules(1000, MqttRole::Meter);
        assert_eq!(
            refusal(meter(), connect("energyguard")).await,
            not_authorized
        );
        assert_eq!(
            refusal(meter(), connect_as("m1", "guess", None)).await,
            bad_password
        );
        assert_eq!(
            refusal(meter(), connect_as("m1", PASSWORD, Some("eg/alerts/m1"))).await,
            not_authorized,
            "a last will may not forge an alert"
        );
        let anonymous = encode(Packet::Connect(Connect::new("m1"))).to_vec();
        assert_eq!(refusal(meter(), anonymous).await, not_authorized);

        let (mut door, _) = door(meter());
        let mut passed = admitted(&mut door, &mut &connect("m1")[..]).await;
        let Ok(Packet::Connect(seen)) = Packet::read(&mut passed, 1024) else {
            panic!("a CONNECT");
        };
        assert_eq!(seen.client_id, "m1");
        assert_eq!(seen.login, Some(Login::new("door", "secret")));
        let first = publish("eg/readings/m1", "1", QoS::AtMostOnce);
        let refused = door.read_connect(&mut &first[..]).await;
        assert!(matches!(refused, Err(FrameError::NotConnect)));
    }

    #[tokio::test]
    async fn packets_pass_byte_for_byte_and_readings_are_counted() {
        let door_rules = rules(1000, MqttRole::Meter);
        let mut stream = connect("meter");
        let after_connect = stream.len();
        stream.extend(publish("eg/readings/m1", "42", QoS::AtLeastOnce));
        stream.extend(publish("eg/readings/m2", "43", QoS::AtMostOnce));
        // Split mid-packet: framing waits for the rest.
        let (head, tail) = stream.split_at(stream.len() - 3);
        let (mut door, _) = door(door_rules.clone());
        let mut client = AsyncReadExt::chain(head, tail);
        admitted(&mut door, &mut client).await;
        let mut broker = Vec::new();
        let (_stop, mut closing) = watch::channel(false);
        let ended = door.forward(&mut client, &mut broker, &mut closing).await;
        assert!(matches!(ended, FrameError::Closed), "{ended}");
        assert_eq!(broker, stream[after_connect..]);
        assert_eq!(
            door_rules.backlog.used(),
            2 * message_size("eg/readings/m1".len(), 2)
        );
    }

    #[tokio::test]
    async fn refused_publishes_are_dropped_and_acknowledged_by_the_door() {
        let (mut door, mut answered) = door(rules(1000, MqttRole::Meter));
        let mut stream = connect("meter");
        stream.extend(publish("eg/alerts/m1", "forged", QoS::AtLeastOnce));
        stream.extend(publish("eg/deadletter", "forged", QoS::AtMostOnce));
        stream.extend(publish("eg/readings/m1", "1", QoS::AtMostOnce));
        let mut client = &stream[..];
        admitted(&mut door, &mut client).await;
        let (_stop, mut closing) = watch::channel(false);
        let mut broker = Vec::new();
        door.forward(&mut client, &mut broker, &mut closing).await;
        assert_eq!(broker, publish("eg/readings/m1", "1", QoS::AtMostOnce));
        let Some(Reply::Packet(mut ack)) = answered.recv().await else {
            panic!("a PUBACK from the door");
        };
        assert!(matches!(Packet::read(&mut ack, 64), Ok(Packet::PubAck(a)) if a.pkid == 9));
        assert!(answered.try_recv().is_err(), "nothing for the QoS 0 one");
    }

    #[tokio::test]
    async fn subscriptions_keep_only_the_filters_the_role_may_have() {
        let (mut door, mut answered) = door(rules(1000, MqttRole::Watcher));
        let mut stream = connect("watcher");
        let subscribe = Subscribe::new_many([
            SubscribeFilter::new("#".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("eg/alerts/+".into(), QoS::AtLeastOnce),
        ]);
        stream.extend(encode(Packet::Subscribe(subscribe.clone())).to_vec());
        let mut client = &stream[..];
        admitted(&mut door, &mut client).await;
        let (_stop, mut closing) = watch::channel(false);
        let mut broker = Vec::new();
        door.forward(&mut client, &mut broker, &mut closing).await;
        let Ok(Packet::Subscribe(narrowed)) = Packet::read(&mut BytesMut::from(&broker[..]), 1024)
        else {
            panic!("a SUBSCRIBE for the broker");
        };
        assert_eq!(narrowed.pkid, subscribe.pkid);
        assert_eq!(narrowed.filters, subscribe.filters[1..]);
        let Some(Reply::Patch { pkid, refused }) = answered.recv().await else {
            panic!("a patch for the SUBACK");
        };
        assert_eq!((pkid, refused), (subscribe.pkid, vec![0]));
    }

    #[tokio::test]
    async fn a_full_backlog_holds_the_client_until_released() {
        let door_rules = rules(100, MqttRole::Meter);
        assert!(door_rules.backlog.try_admit(100));
        let mut stream = connect("meter");
        stream.extend(publish("eg/readings/m1", "42", QoS::AtMostOnce));
        let (mut door, _answers) = door(door_rules.clone());
        let (_stop, mut closing) = watch::channel(false);
        let (mut to_broker, mut broker) = tokio::io::duplex(4096);
        let forwarding = tokio::spawn(async move {
            let mut client = &stream[..];
            admitted(&mut door, &mut client).await;
            door.forward(&mut client, &mut to_broker, &mut closing)
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !forwarding.is_finished(),
            "the reading went past a full backlog"
        );
        door_rules.backlog.release(100);
        let ended = tokio::time::timeout(Duration::from_secs(5), forwarding)
            .await
            .expect("forwarded once released")
            .expect("task");
        assert!(matches!(ended, FrameError::Closed), "{ended}");
        let mut rest = Vec::new();
        broker.read_to_end(&mut rest).await.expect("the reading");
        assert_eq!(rest, publish("eg/readings/m1", "42", QoS::AtMostOnce));
    }

    #[tokio::test]
    async fn malformed_and_oversized_packets_end_the_connection() {
        let (mut door, _) = door(rules(1000, MqttRole::Meter));
        let mut stream = connect("meter");
        let good = publish("eg/readings/m1", "1", QoS::AtMostOnce);
        stream.extend(&good);
        stream.extend(publish(
            "eg/readings/m1",
            &"x".repeat(2_000),
            QoS::AtMostOnce,
        ));
        let mut client = &stream[..];
        admitted(&mut door, &mut client).await;
        let (_stop, mut closing) = watch::channel(false);
        let mut broker = Vec::new();
        let ended = door.forward(&mut client, &mut broker, &mut closing).await;
        assert!(matches!(ended, FrameError::Protocol(_)), "{ended}");
        assert_eq!(broker, good, "nothing past the oversized packet");
    }
}
