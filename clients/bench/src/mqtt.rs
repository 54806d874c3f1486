//! The mosquitto side: the few MQTT 3.1.1 packets the comparison needs
//! (CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH QoS 0/1, PUBACK, PINGREQ/
//! PINGRESP, DISCONNECT) over the same tokio-rustls dialer as pigeon. Small
//! enough to read in one sitting, and it keeps a whole MQTT client library
//! (and its event loop's costs) out of the measurement.
//!
//! ```text
//! fixed header: | type(4) flags(4) | remaining length (1-4 bytes, 7 bits each) |
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::WriteHalf;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at};
use tokio_util::codec::{Decoder, Encoder, Framed, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::net::{Dialer, Handshake, Tls};
use crate::payload::Recorder;

/// Limit for CONNACK, SUBACK, and a send window slot.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The keepalive told to the broker, seconds; we ping at half of it.
const KEEPALIVE_SECS: u16 = 60;
/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 1024 * 1024;

/// One MQTT control packet (only the kinds the bench uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// Client → broker: open a session.
    Connect {
        /// Client identifier (also the persistent session's key).
        client_id: String,
        /// Start fresh (true) or resume the stored session (false).
        clean_session: bool,
        /// Seconds.
        keepalive: u16,
    },
    /// Broker → client: the answer to CONNECT.
    ConnAck {
        /// The broker had a stored session.
        session_present: bool,
        /// 0 = accepted.
        code: u8,
    },
    /// Either way: a message. `packet_id` is 0 for QoS 0.
    Publish {
        /// 0 or 1 here.
        qos: u8,
        /// Present when qos > 0.
        packet_id: u16,
        /// Topic name.
        topic: String,
        /// Body.
        payload: Bytes,
    },
    /// Acknowledge a QoS 1 PUBLISH.
    PubAck {
        /// The PUBLISH's id.
        packet_id: u16,
    },
    /// Client → broker: subscribe to one topic filter.
    Subscribe {
        /// Non-zero id.
        packet_id: u16,
        /// The filter.
        topic: String,
        /// Maximum QoS wanted.
        qos: u8,
    },
    /// Broker → client: the answer to SUBSCRIBE.
    SubAck {
        /// The SUBSCRIBE's id.
        packet_id: u16,
        /// Granted QoS per filter, or 0x80 for failure.
        codes: Vec<u8>,
    },
    /// Keepalive request.
    PingReq,
    /// Keepalive answer.
    PingResp,
    /// Client → broker: clean close.
    Disconnect,
    /// A packet type the bench does not use.
    Other(u8),
}

/// The MQTT 3.1.1 packet codec.
#[derive(Debug, Default, Clone, Copy)]
pub struct MqttCodec;

fn put_str(dst: &mut BytesMut, s: &str) {
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

fn get_str(src: &mut Bytes) -> Result<String> {
    if src.remaining() < 2 {
        bail!("truncated string length");
    }
    let len = src.get_u16() as usize;
    if src.remaining() < len {
        bail!("truncated string");
    }
    Ok(String::from_utf8(src.split_to(len).to_vec())?)
}

impl Encoder<Packet> for MqttCodec {
    type Error = anyhow::Error;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<()> {
        let mut body = BytesMut::new();
        let first = match packet {
            Packet::Connect {
                client_id,
                clean_session,
                keepalive,
            } => {
                put_str(&mut body, "MQTT");
                body.put_u8(4); // protocol level 3.1.1
                body.put_u8(if clean_session { 0x02 } else { 0x00 });
                body.put_u16(keepalive);
                put_str(&mut body, &client_id);
                0x10
            }
            Packet::Publish {
                qos,
                packet_id,
                topic,
                payload,
            } => {
                put_str(&mut body, &topic);
                if qos > 0 {
                    body.put_u16(packet_id);
                }
                body.put_slice(&payload);
                0x30 | (qos << 1)
            }
            Packet::PubAck { packet_id } => {
                body.put_u16(packet_id);
                0x40
            }
            Packet::Subscribe {
                packet_id,
                topic,
                qos,
            } => {
                body.put_u16(packet_id);
                put_str(&mut body, &topic);
                body.put_u8(qos);
                0x82
            }
            Packet::PingReq => 0xC0,
            Packet::Disconnect => 0xE0,
            other => bail!("the bench never sends {other:?}"),
        };
        dst.put_u8(first);
        let mut len = body.len();
        // Remaining length: 7 bits per byte, high bit = more bytes follow.
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            dst.put_u8(byte);
            if len == 0 {
                break;
            }
        }
        dst.put_slice(&body);
        Ok(())
    }
}

impl Decoder for MqttCodec {
    type Item = Packet;
    type Error = anyhow::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>> {
        let mut len = 0usize;
        let mut header = 1;
        // At most 4 length bytes.
        loop {
            let Some(&byte) = src.get(header) else {
                return Ok(None);
            };
            len |= ((byte & 0x7F) as usize) << (7 * (header - 1));
            header += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if header > 4 {
                bail!("remaining length longer than 4 bytes");
            }
        }
        if len > MAX_PACKET {
            bail!("packet of {len} bytes is above {MAX_PACKET}");
        }
        if src.len() < header + len {
            src.reserve(header + len - src.len());
            return Ok(None);
        }
        let first = src[0];
        src.advance(header);
        let mut body = src.split_to(len).freeze();
        let need = |body: &Bytes, n: usize| {
            if body.remaining() < n {
                Err(anyhow!("truncated packet 0x{first:02x}"))
            } else {
                Ok(())
            }
        };
        let packet = match first >> 4 {
            2 => {
                need(&body, 2)?;
                Packet::ConnAck {
                    session_present: body.get_u8() & 1 == 1,
                    code: body.get_u8(),
                }
            }
            3 => {
                let qos = (first >> 1) & 0x03;
                let topic = get_str(&mut body)?;
                let packet_id = if qos > 0 {
                    need(&body, 2)?;
                    body.get_u16()
                } else {
                    0
                };
                Packet::Publish {
                    qos,
                    packet_id,
                    topic,
                    payload: body,
                }
            }
            4 => {
                need(&body, 2)?;
                Packet::PubAck {
                    packet_id: body.get_u16(),
                }
            }
            9 => {
                need(&body, 2)?;
                Packet::SubAck {
                    packet_id: body.get_u16(),
                    codes: body.to_vec(),
                }
            }
            13 => Packet::PingResp,
            kind => Packet::Other(kind),
        };
        Ok(Some(packet))
    }
}

/// An MQTT connection.
pub type Conn = Framed<Tls, MqttCodec>;

/// The topic of receiver `i`'s inbox.
pub fn inbox(i: usize) -> String {
    format!("pigeon-bench/inbox/{i}")
}

/// Read packets until one matches `want` (others ignored), under a deadline.
async fn wait_for(conn: &mut Conn, what: &str, want: impl Fn(&Packet) -> bool) -> Result<Packet> {
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    // Bounded by the deadline.
    loop {
        let packet = timeout_at(deadline, conn.next())
            .await
            .map_err(|_| anyhow!("no {what} in {REPLY_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("the broker closed the connection before {what}"))??;
        if want(&packet) {
            return Ok(packet);
        }
    }
}

/// Connect and open a session; returns the connection, whether the broker
/// had a stored session, and the handshake kind.
pub async fn connect(
    dialer: &Dialer,
    broker: SocketAddr,
    client_id: String,
    clean_session: bool,
) -> Result<(Conn, bool, Handshake)> {
    let (tls, handshake) = dialer.tls(broker).await?;
    let mut conn = Framed::new(tls, MqttCodec);
    let hello = Packet::Connect {
        client_id,
        clean_session,
        keepalive: KEEPALIVE_SECS,
    };
    timeout(REPLY_TIMEOUT, conn.send(hello))
        .await
        .map_err(|_| anyhow!("CONNECT write timed out"))??;
    match wait_for(&mut conn, "CONNACK", |p| {
        matches!(p, Packet::ConnAck { .. })
    })
    .await?
    {
        Packet::ConnAck {
            code: 0,
            session_present,
        } => Ok((conn, session_present, handshake)),
        other => bail!("connection refused: {other:?}"),
    }
}

/// Subscribe to `topic` at QoS 1 and wait for the grant.
pub async fn subscribe(conn: &mut Conn, topic: String) -> Result<()> {
    let sub = Packet::Subscribe {
        packet_id: 1,
        topic,
        qos: 1,
    };
    timeout(REPLY_TIMEOUT, conn.send(sub))
        .await
        .map_err(|_| anyhow!("SUBSCRIBE write timed out"))??;
    match wait_for(conn, "SUBACK", |p| matches!(p, Packet::SubAck { .. })).await? {
        Packet::SubAck { codes, .. } if codes.first().is_some_and(|&c| c <= 1) => Ok(()),
        other => bail!("subscription refused: {other:?}"),
    }
}

/// Close cleanly (DISCONNECT keeps a persistent session on the broker).
pub async fn disconnect(mut conn: Conn) -> Result<()> {
    timeout(REPLY_TIMEOUT, conn.send(Packet::Disconnect))
        .await
        .map_err(|_| anyhow!("DISCONNECT write timed out"))??;
    Ok(())
}

/// A publishing connection: QoS 1 PUBLISHes up to a window of unacked
/// ones; a reader task takes the PUBACKs.
pub struct Sender {
    sink: FramedWrite<WriteHalf<Tls>, MqttCodec>,
    window: Arc<Semaphore>,
    window_size: u32,
    next_id: u16,
    issued: u64,
    acked: Arc<AtomicU64>,
    reader: JoinHandle<Result<()>>,
    stop: CancellationToken,
}

impl Sender {
    /// Split a connected session into a sender.
    pub fn start(conn: Conn, window: u32) -> Sender {
        let parts = conn.into_parts();
        let (read, write) = tokio::io::split(parts.io);
        let mut source = FramedRead::new(read, MqttCodec);
        let window_size = window.clamp(1, 60_000);
        let permits = Arc::new(Semaphore::new(window_size as usize));
        let acked = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let reader = tokio::spawn({
            let (permits, acked, stop) = (permits.clone(), acked.clone(), stop.clone());
            async move {
                // Bounded: ends when the stream ends or the sender stops it.
                loop {
                    let packet = tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        packet = source.next() => packet,
                    };
                    let Some(packet) = packet else {
                        bail!("the broker closed a publishing connection");
                    };
                    if let Packet::PubAck { .. } = packet? {
                        acked.fetch_add(1, Ordering::Relaxed);
                        permits.add_permits(1);
                    }
                }
            }
        });
        Sender {
            sink: FramedWrite::new(write, MqttCodec),
            window: permits,
            window_size,
            next_id: 0,
            issued: 0,
            acked,
            reader,
            stop,
        }
    }

    /// Publish `payload` to `topic` at QoS 1 once the window has room.
    pub async fn send(&mut self, topic: String, payload: Bytes) -> Result<()> {
        let permit = timeout(REPLY_TIMEOUT, self.window.acquire())
            .await
            .map_err(|_| anyhow!("no PUBACK in {REPLY_TIMEOUT:?}"))?
            .expect("the window semaphore is never closed");
        permit.forget();
        // Ids 1..=65535; the window is far below that, so none is reused
        // while still unacknowledged.
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let publish = Packet::Publish {
            qos: 1,
            packet_id: self.next_id,
            topic,
            payload,
        };
        timeout(REPLY_TIMEOUT, self.sink.send(publish))
            .await
            .map_err(|_| anyhow!("PUBLISH write timed out"))??;
        self.issued += 1;
        Ok(())
    }

    /// Wait (until `deadline`) for every PUBACK; returns how many came.
    pub async fn finish(mut self, deadline: Instant) -> Result<u64> {
        let all = timeout_at(deadline.into(), self.window.acquire_many(self.window_size)).await;
        self.stop.cancel();
        let read = self.reader.await?;
        let acked = self.acked.load(Ordering::Relaxed);
        // Best effort: the broker drops the connection either way.
        let _ = timeout(Duration::from_secs(1), self.sink.send(Packet::Disconnect)).await;
        if all.is_err() {
            read?;
            bail!(
                "{} of {} publishes unacknowledged",
                self.issued - acked,
                self.issued
            );
        }
        Ok(acked)
    }
}

/// Read a subscribed connection: PUBACK each QoS 1 PUBLISH, hand each body
/// to `recorder`, ping at half the keepalive; stops like a pigeon receiver.
pub async fn receive(
    mut conn: Conn,
    recorder: &mut Recorder,
    until: crate::pigeon::ReceiveUntil,
) -> Result<()> {
    let beat = Duration::from_secs(u64::from(KEEPALIVE_SECS / 2));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let deadline = tokio::time::Instant::from_std(until.deadline);
    let done = |r: &Recorder| until.bodies.is_some_and(|n| r.received >= n);
    // Bounded by the deadline, the stop token and the stream's end.
    while !done(recorder) {
        let packet = tokio::select! {
            _ = until.stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = heartbeat.tick() => {
                conn.send(Packet::PingReq).await?;
                continue;
            }
            packet = conn.next() => packet,
        };
        let packet =
            packet.ok_or_else(|| anyhow!("the broker closed a receiving connection"))??;
        if let Packet::Publish {
            qos,
            packet_id,
            payload,
            ..
        } = packet
        {
            recorder.on_body(&payload);
            if qos > 0 {
                conn.feed(Packet::PubAck { packet_id }).await?;
                // Flush only when nothing else is buffered, like a broker would.
                if conn.read_buffer().is_empty() {
                    conn.flush().await?;
                }
            }
        }
    }
    // Flush the last PUBACKs, then close cleanly so the session is kept.
    timeout(REPLY_TIMEOUT, conn.flush())
        .await
        .map_err(|_| anyhow!("PUBACK flush timed out"))??;
    disconnect(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(packet: Packet) -> Packet {
        let mut buf = BytesMut::new();
        MqttCodec.encode(packet, &mut buf).unwrap();
        // Decode byte by byte: every split point must work.
        let mut src = BytesMut::new();
        let mut out = None;
        for b in buf.iter() {
            assert!(out.is_none(), "decoded before the last byte");
            src.put_u8(*b);
            out = MqttCodec.decode(&mut src).unwrap();
        }
        out.expect("a whole packet")
    }

    #[test]
    fn publish_round_trips_with_long_remaining_length() {
        let payload = Bytes::from(vec![7u8; 20_000]);
        let p = Packet::Publish {
            qos: 1,
            packet_id: 513,
            topic: inbox(3),
            payload,
        };
        assert_eq!(round_trip(p.clone()), p);
    }

    #[test]
    fn puback_round_trips() {
        let p = Packet::PubAck { packet_id: 65535 };
        assert_eq!(round_trip(p.clone()), p);
    }

    #[test]
    fn connect_has_the_3_1_1_header() {
        let mut buf = BytesMut::new();
        let hello = Packet::Connect {
            client_id: "c".into(),
            clean_session: false,
            keepalive: 60,
        };
        MqttCodec.encode(hello, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60, 0, 1, b'c']
        );
    }
}
