//! What a client sends through the front door, packet by packet.
//!
//! Packets are framed and decoded with rumqttd's own MQTT 3.1.1 codec
//! (`rumqttd::protocol::v4`), so the door reads them exactly as the broker
//! behind it will; they are forwarded byte for byte as the client sent them.
//! Two rules apply on the way:
//! * the first packet must be a CONNECT, and it may not take EnergyGuard's
//!   own client id (the broker would drop EnergyGuard's consumer for it);
//! * a PUBLISH on a readings topic enters only once the [`Backlog`] has room
//!   for it: until then nothing more is read from that client.
//!
//! A malformed packet or one over the size limit ends the connection, as the
//! broker itself would end it.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rumqttd::protocol::v4::{self, FixedHeader, PacketType, V4};
use rumqttd::protocol::{self, ConnAck, ConnectReturnCode, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

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
    Protocol(protocol::Error),
    #[error("the first packet was not a CONNECT")]
    NotConnect,
}

/// The answer to a client's CONNECT.
pub enum Admission {
    /// Forward it (and everything after it) to the broker.
    Admit,
    /// Send these bytes (a refusing CONNACK) and close.
    Refuse(BytesMut),
}

/// One client's inbound stream: bytes read but not yet forwarded.
pub struct Inbound {
    rules: Arc<DoorRules>,
    buffer: BytesMut,
}

impl Inbound {
    pub fn new(rules: Arc<DoorRules>) -> Self {
        Self {
            rules,
            buffer: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Reads the client's first packet, which must be a CONNECT, and decides
    /// whether it may go on. The packet stays buffered for [`Self::forward`].
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
        let Packet::Connect(connect, ..) = self.decode(0, &header)? else {
            return Err(FrameError::NotConnect);
        };
        if connect.client_id == self.rules.reserved_client_id {
            tracing::warn!(
                client_id = %connect.client_id,
                "refused an MQTT client using EnergyGuard's own client id"
            );
            return Ok(Admission::Refuse(connack(ConnectReturnCode::NotAuthorized)));
        }
        Ok(Admission::Admit)
    }

    /// Forwards complete packets to `broker` until the client closes, a
    /// packet is malformed, writing fails, or `closing` is signalled.
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

    /// Forwards every complete packet buffered, admitting readings into the
    /// backlog on the way.
    async fn forward_complete(
        &mut self,
        broker: &mut (impl AsyncWrite + Unpin),
        closing: &mut watch::Receiver<bool>,
    ) -> Result<(), FrameError> {
        // Bytes at the front of the buffer that may go, and how many of
        // them are readings already counted in the backlog.
        let mut ready = 0;
        let mut admitted = 0;
        // A bad packet ends the connection after the good ones before it.
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
            match self.readings_size(ready, &header) {
                Ok(None) => {}
                Ok(Some(size)) => {
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
                Err(error) => {
                    bad = Some(error);
                    break;
                }
            }
            ready += header.frame_length();
        }
        self.write_front(broker, &mut ready, &mut admitted).await?;
        bad.map_or(Ok(()), Err)
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

    /// The size to count in the backlog if the packet at `offset` is a
    /// PUBLISH on a readings topic.
    fn readings_size(
        &self,
        offset: usize,
        header: &FixedHeader,
    ) -> Result<Option<usize>, FrameError> {
        if header.packet_type().map_err(FrameError::Protocol)? != PacketType::Publish {
            return Ok(None);
        }
        let Packet::Publish(publish, _) = self.decode(offset, header)? else {
            return Ok(None);
        };
        let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
        Ok(protocol::matches(topic, &self.rules.readings_filter)
            .then(|| message_size(publish.topic.len(), publish.payload.len())))
    }

    /// The header of the packet at `offset` if it is complete in the buffer.
    fn frame_at(&self, offset: usize) -> Result<Option<FixedHeader>, FrameError> {
        match v4::check(self.buffer[offset..].iter(), self.rules.max_packet_bytes) {
            Ok(header) => Ok(Some(header)),
            Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(error) => Err(FrameError::Protocol(error)),
        }
    }

    /// Decodes the packet at `offset` from a copy, leaving the buffer as the
    /// client sent it.
    fn decode(&self, offset: usize, header: &FixedHeader) -> Result<Packet, FrameError> {
        let mut frame = BytesMut::from(&self.buffer[offset..offset + header.frame_length()]);
        V4.read_mut(&mut frame, self.rules.max_packet_bytes)
            .map_err(FrameError::Protocol)
    }

    async fn read_more(&mut self, client: &mut (impl AsyncRead + Unpin)) -> Result<(), FrameError> {
        self.buffer.reserve(READ_CHUNK);
        match client.read_buf(&mut self.buffer).await? {
            0 => Err(FrameError::Closed),
            _ => Ok(()),
        }
    }
}

/// A CONNACK with `code`, encoded.
fn connack(code: ConnectReturnCode) -> BytesMut {
    let mut bytes = BytesMut::new();
    let packet = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    );
    // Encoding a CONNACK with a 3.1.1 return code cannot fail.
    let _ = V4.write(packet, &mut bytes);
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
    use rumqttd::protocol::{Connect, Login, Publish};

    fn rules(capacity: usize) -> Arc<DoorRules> {
        Arc::new(DoorRules {
            readings_filter: "eg/readings/+".into(),
            reserved_client_id: "energyguard".into(),
            max_packet_bytes: 1024,
            backlog: Arc::new(Backlog::new(capacity)),
        })
    }

    fn encode(packet: Packet) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        V4.write(packet, &mut bytes).expect("encode");
        bytes.to_vec()
    }

    fn connect(client_id: &str) -> Vec<u8> {
        let connect = Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_session: true,
        };
        let login = Some(Login {
            username: "u".into(),
            password: "p".into(),
        });
        encode(Packet::Connect(connect, None, None, None, login))
    }

    fn publish(topic: &str, payload: &str) -> Vec<u8> {
        let publish = Publish::new(
            bytes::Bytes::copy_from_slice(topic.as_bytes()),
            bytes::Bytes::copy_from_slice(payload.as_bytes()),
            false,
        );
        encode(Packet::Publish(publish, None))
    }

    #[tokio::test]
    async fn the_reserved_client_id_is_refused_and_others_admitted() {
        let mut door = Inbound::new(rules(1000));
        let Admission::Refuse(answer) = door
            .read_connect(&mut &connect("energyguard")[..])
            .await
            .expect("a CONNECT")
        else {
            panic!("the reserved id was admitted");
        };
        assert_eq!(&answer[..], &[0x20, 2, 0, 5], "CONNACK, not authorized");

        let mut door = Inbound::new(rules(1000));
        let admitted = door.read_connect(&mut &connect("meter-7")[..]).await;
        assert!(matches!(admitted, Ok(Admission::Admit)));

        let mut door = Inbound::new(rules(1000));
        let first = publish("eg/readings/m1", "1");
        let refused = door.read_connect(&mut &first[..]).await;
        assert!(matches!(refused, Err(FrameError::NotConnect)));
    }

    #[tokio::test]
    async fn packets_pass_byte_for_byte_and_readings_are_counted() {
        let door_rules = rules(1000);
        let mut stream = connect("meter");
        stream.extend(publish("eg/readings/m1", "42"));
        stream.extend(publish("eg/other/m1", "not a reading"));
        // Split mid-packet: framing waits for the rest.
        let (head, tail) = stream.split_at(stream.len() - 3);
        let mut door = Inbound::new(door_rules.clone());
        let mut client = AsyncReadExt::chain(head, tail);
        assert!(matches!(
            door.read_connect(&mut client).await,
            Ok(Admission::Admit)
        ));
        let mut broker = Vec::new();
        let (_stop, mut closing) = watch::channel(false);
        let ended = door.forward(&mut client, &mut broker, &mut closing).await;
        assert!(matches!(ended, FrameError::Closed), "{ended}");
        assert_eq!(broker, stream);
        assert_eq!(
            door_rules.backlog.used(),
            message_size("eg/readings/m1".len(), 2),
            "only the reading is counted"
        );
    }

    #[tokio::test]
    async fn a_full_backlog_holds_the_client_until_released() {
        let door_rules = rules(100);
        assert!(door_rules.backlog.try_admit(100));
        let mut stream = connect("meter");
        stream.extend(publish("eg/readings/m1", "42"));
        let mut door = Inbound::new(door_rules.clone());
        let (_stop, mut closing) = watch::channel(false);
        let (mut to_broker, mut broker) = tokio::io::duplex(4096);
        let forwarding = tokio::spawn(async move {
            let mut client = &stream[..];
            door.read_connect(&mut client).await.expect("connect");
            door.forward(&mut client, &mut to_broker, &mut closing)
                .await
        });
        let mut received = vec![0; connect("meter").len()];
        broker.read_exact(&mut received).await.expect("the CONNECT");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !forwarding.is_finished(),
            "the reading went past a full backlog"
        );
        door_rules.backlog.release(100);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), forwarding)
            .await
            .expect("forwarded once released")
            .expect("task");
        assert!(matches!(ended, FrameError::Closed), "{ended}");
        let mut rest = Vec::new();
        broker.read_to_end(&mut rest).await.expect("the reading");
        assert_eq!(rest, publish("eg/readings/m1", "42"));
    }

    #[tokio::test]
    async fn malformed_and_oversized_packets_end_the_connection() {
        let mut door = Inbound::new(rules(1000));
        let mut stream = connect("meter");
        stream.extend(publish("eg/readings/m1", &"x".repeat(2_000)));
        let mut client = &stream[..];
        door.read_connect(&mut client).await.expect("connect");
        let (_stop, mut closing) = watch::channel(false);
        let mut broker = Vec::new();
        let ended = door.forward(&mut client, &mut broker, &mut closing).await;
        assert!(matches!(ended, FrameError::Protocol(_)), "{ended}");
        assert_eq!(
            broker,
            connect("meter"),
            "nothing past the oversized packet"
        );
    }
}
