//! An ordinary MQTT client (rumqttc) playing a sensor or an observer.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};

/// A connected client and the publishes it receives.
pub struct Client {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<Publish>,
    /// Resolves once a DISCONNECT is on the wire.
    gone: oneshot::Receiver<()>,
}

pub async fn connect(port: u16, name: &str, subscribe: &[&str]) -> Client {
    connect_as(port, name, None, subscribe).await
}

/// [`connect`] with a username and password.
pub async fn connect_as(
    port: u16,
    name: &str,
    credentials: Option<(&str, &str)>,
    subscribe: &[&str],
) -> Client {
    let mut options = MqttOptions::new(name, "127.0.0.1", port);
    if let Some((username, password)) = credentials {
        options.set_credentials(username, password);
    }
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1_000);
    let (tx, received) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (gone_tx, gone) = oneshot::channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    let _ = gone_tx.send(());
                    return;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(Event::Incoming(Packet::SubAck(_)))
                | Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    ready.recv().await.expect("connected");
    for topic in subscribe {
        client
            .subscribe(*topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        ready.recv().await.expect("subscribed");
    }
    Client {
        client,
        received,
        gone,
    }
}

impl Client {
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
    }

    /// Publishes at QoS 0: no acknowledgement, outside any in-flight window.
    pub async fn publish_qos0(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtMostOnce, false, payload.into())
            .await
            .expect("publish");
    }

    /// Publishes a retained message (QoS 1).
    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .await
            .expect("publish");
    }

    /// Publishes reading `i` of `sensor`: value `i`, at `t0_ms + i` ms.
    pub async fn publish_reading(&self, sensor: &str, t0_ms: i64, i: i64) {
        let payload = format!(
            r#"{{"timestamp":{},"value":{i}}}"#,
            (t0_ms + i) as f64 / 1000.0
        );
        self.publish(&format!("energyguard/readings/{sensor}"), payload)
            .await;
    }

    /// Leaves as a well-behaved client does: DISCONNECT, then the socket
    /// closes.
    pub async fn disconnect(self) {
        self.client.disconnect().await.expect("disconnect");
        tokio::time::timeout(Duration::from_secs(5), self.gone)
            .await
            .expect("DISCONNECT sent within 5 s")
            .expect("event loop");
    }

    pub async fn next(&mut self) -> Publish {
        tokio::time::timeout(Duration::from_secs(20), self.received.recv())
            .await
            .expect("a message within 20 s")
            .expect("channel open")
    }
}
