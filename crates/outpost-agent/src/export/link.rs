//! One MQTT connection, 3.1.1 or 5, behind one small interface: publish with QoS 1 and learn,
//! from the event loop, when the broker acknowledged each publish.
//!
//! A link is never reused after an error: rumqttc would replay its unacknowledged publishes
//! on the next connection, out of step with the outbox, which redelivers them itself. The sink
//! makes a new link instead, so exactly the records it sent are the ones it waits for.

use super::config::MqttConfig;
use rumqttc::{TlsConfiguration, Transport};
use std::sync::Arc;
use std::time::Duration;

/// What the event loop reported.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The broker accepted the connection.
    Connected,
    /// The broker acknowledged a publish; false when it refused it (MQTT 5 reason code).
    Acked(bool),
    /// Anything else (pings, the publishes going out).
    Other,
}

/// A connection (or an attempt at one).
pub enum Link {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
}

/// Host, port and whether TLS is on, from `mqtt://host:port` or `mqtts://host:port`.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!("export.mqtt.url {url:?}: use mqtt://host:port or mqtts://host:port"));
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.strip_prefix('[') {
        // [v6 address] with an optional :port
        Some(v6) => {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("export.mqtt.url {url:?}: unclosed ["))?;
            (h, after.strip_prefix(':'))
        }
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("export.mqtt.url {url:?}: bad port {p:?}"))?,
        None => default_port,
    };
    let host = host.to_string();
    if host.is_empty() || host.contains('/') {
        return Err(format!("export.mqtt.url {url:?}: no host"));
    }
    Ok((host, port, tls))
}

/// The TLS setup for `mqtts://`: the configured CA bundle, or the system's roots.
fn tls_config(cfg: &MqttConfig) -> Result<TlsConfiguration, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("export.mqtt.ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("export.mqtt.ca_file {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("export.mqtt.ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("export.mqtt: no CA certificate to verify the broker with (set ca_file)".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("export.mqtt TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

impl Link {
    /// A new link as `client_id`, with room for `batch` publishes in flight; connects on the
    /// first [`Link::poll`].
    pub fn new(cfg: &MqttConfig, client_id: &str, batch: usize) -> Result<Link, String> {
        let (host, port, tls) = parse_url(&cfg.url)?;
        let transport = if tls { Transport::Tls(tls_config(cfg)?) } else { Transport::Tcp };
        let cap = batch.saturating_add(16);
        let inflight = u16::try_from(batch.clamp(1, 65_000)).unwrap_or(u16::MAX);
        let keep_alive = Duration::from_secs(30);
        match cfg.version {
            4 => {
                let mut o = rumqttc::MqttOptions::new(client_id, host, port);
                o.set_transport(transport).set_keep_alive(keep_alive).set_inflight(inflight);
                o.set_max_packet_size(1 << 20, 64 << 20);
                if let Some(user) = &cfg.username {
                    o.set_credentials(user, cfg.password.clone().unwrap_or_default());
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(o, cap);
                Ok(Link::V4(client, Box::new(eventloop)))
            }
            5 => {
                let mut o = rumqttc::v5::MqttOptions::new(client_id, host, port);
                o.set_transport(transport).set_keep_alive(keep_alive);
                if let Some(user) = &cfg.username {
                    o.set_credentials(user, cfg.password.clone().unwrap_or_default());
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, cap);
                Ok(Link::V5(client, Box::new(eventloop)))
            }
            v => Err(format!("export.mqtt.version {v}: use 4 (MQTT 3.1.1) or 5")),
        }
    }

    /// Queues a QoS 1 publish (sent while [`Link::poll`] runs).
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Link::V4(c, _) => c.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await,
            Link::V5(c, _) => {
                let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    payload_format_indicator: Some(1),
                    content_type: Some("application/json".into()),
                    ..Default::default()
                };
                return c
                    .publish_with_properties(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, payload, props)
                    .await
                    .map_err(|e| e.to_string());
            }
        }
        .map_err(|e| e.to_string())
    }

    /// Drives the connection one step.
    pub async fn poll(&mut self) -> Result<LinkEvent, String> {
        match self {
            Link::V4(_, ev) => match ev.poll().await.map_err(|e| e.to_string())? {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => Ok(LinkEvent::Connected),
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => Ok(LinkEvent::Acked(true)),
                _ => Ok(LinkEvent::Other),
            },
            Link::V5(_, ev) => {
                use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
                match ev.poll().await.map_err(|e| e.to_string())? {
                    rumqttc::v5::Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                        Ok(LinkEvent::Connected)
                    }
                    rumqttc::v5::Event::Incoming(Packet::ConnAck(ack)) => {
                        Err(format!("broker refused the connection: {:?}", ack.code))
                    }
                    rumqttc::v5::Event::Incoming(Packet::PubAck(ack)) => Ok(LinkEvent::Acked(matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ))),
                    _ => Ok(LinkEvent::Other),
                }
            }
        }
    }

    /// Says goodbye to the broker (best effort, bounded).
    pub async fn disconnect(mut self) {
        let sent = match &mut self {
            Link::V4(c, _) => c.disconnect().await.is_ok(),
            Link::V5(c, _) => c.disconnect().await.is_ok(),
        };
        if sent {
            let _ = tokio::time::timeout(Duration::from_secs(1), async { while self.poll().await.is_ok() {} }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls_name_host_port_and_tls() {
        assert_eq!(parse_url("mqtt://127.0.0.1:1883").unwrap(), ("127.0.0.1".into(), 1883, false));
        assert_eq!(parse_url("mqtts://broker.example").unwrap(), ("broker.example".into(), 8883, true));
        assert_eq!(parse_url("mqtt://[::1]:1884/").unwrap(), ("::1".into(), 1884, false));
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("mqtt://x:port").is_err());
        assert!(parse_url("mqtt://").is_err());
        assert_eq!(parse_url("mqtt://[::1]").unwrap(), ("::1".into(), 1883, false));
    }
}
