//! What the broker sends a client, relayed packet by packet, with the
//! door's own answers ([`Reply`]) put in between packets: a PUBACK for a
//! publish the door dropped, a SUBACK for a subscription it refused
//! whole, and the failure codes of the filters it took out of a
//! subscription, added to the broker's SUBACK for the rest.
//!
//! Replies are taken before the broker's bytes whenever both are ready: the
//! inbound side queues a patch before the narrowed SUBSCRIBE reaches the
//! broker, so the patch is always in place when the SUBACK comes back.

use std::collections::HashMap;

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::{Packet, SubAck, SubscribeReasonCode};
use rumqttc::mqttbytes::{self, PacketType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::inbound::{Reply, encode};

/// Bytes read from the broker at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Relays until the broker closes, writing fails, or the replies end and
/// the broker is done.
pub async fn relay(
    broker: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
    mut replies: mpsc::Receiver<Reply>,
    max_packet_bytes: usize,
) {
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut patches: HashMap<u16, Vec<usize>> = HashMap::new();
    let mut replies_open = true;
    loop {
        tokio::select! {
            biased;
            reply = replies.recv(), if replies_open => match reply {
                Some(Reply::Packet(bytes)) => {
                    if client.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Reply::Patch { pkid, refused }) => {
                    patches.insert(pkid, refused);
                }
                None => replies_open = false,
            },
            read = broker.read_buf(&mut buffer) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
                if forward_complete(&mut buffer, &mut patches, client, max_packet_bytes)
                    .await
                    .is_err()
                {
                    return;
                }
                buffer.reserve(READ_CHUNK);
            }
        }
    }
}

/// Writes every complete packet in `buffer` to the client, patching the
/// SUBACKs that answer narrowed subscriptions.
async fn forward_complete(
    buffer: &mut BytesMut,
    patches: &mut HashMap<u16, Vec<usize>>,
    client: &mut (impl AsyncWrite + Unpin),
    max_packet_bytes: usize,
) -> std::io::Result<()> {
    let mut ready = 0;
    loop {
        let header = match mqttbytes::check(buffer[ready..].iter(), max_packet_bytes) {
            Ok(header) => header,
            Err(mqttbytes::Error::InsufficientBytes(_)) => break,
            Err(error) => return Err(std::io::Error::other(error.to_string())),
        };
        let length = header.frame_length();
        if !patches.is_empty() && matches!(header.packet_type(), Ok(PacketType::SubAck)) {
            let mut frame = BytesMut::from(&buffer[ready..ready + length]);
            if let Ok(Packet::SubAck(ack)) = Packet::read(&mut frame, max_packet_bytes)
                && let Some(refused) = patches.remove(&ack.pkid)
            {
                client.write_all(&buffer[..ready]).await?;
                client.write_all(&patched(ack, &refused)).await?;
                buffer.advance(ready + length);
                ready = 0;
                continue;
            }
        }
        ready += length;
    }
    client.write_all(&buffer[..ready]).await?;
    buffer.advance(ready);
    Ok(())
}

/// The broker's SUBACK for the filters forwarded, with the failure code
/// put back at each refused position.
fn patched(ack: SubAck, refused: &[usize]) -> BytesMut {
    let mut granted = ack.return_codes.into_iter();
    let total = refused.len() + granted.len();
    let codes = (0..total)
        .map(|i| {
            if refused.contains(&i) {
                SubscribeReasonCode::Failure
            } else {
                granted.next().unwrap_or(SubscribeReasonCode::Failure)
            }
        })
        .collect();
    encode(Packet::SubAck(SubAck::new(ack.pkid, codes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;

    #[test]
    fn refused_filters_get_the_failure_code_in_their_places() {
        let from_broker = SubAck::new(
            7,
            vec![
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Success(QoS::AtMostOnce),
            ],
        );
        let mut bytes = patched(from_broker, &[0, 2]);
        let Ok(Packet::SubAck(ack)) = Packet::read(&mut bytes, 1024) else {
            panic!("a SUBACK");
        };
        assert_eq!(ack.pkid, 7);
        assert_eq!(
            ack.return_codes,
            [
                SubscribeReasonCode::Failure,
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Failure,
                SubscribeReasonCode::Success(QoS::AtMostOnce),
            ]
        );
    }
}
