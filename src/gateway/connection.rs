//! One connection's life: TLS handshake with a deadline, then a read loop
//! (frames in, requests dispatched in order) and a write loop (answers in
//! request order, coalesced notifies, kicks) running side by side.
//!
//! ```text
//!  socket ─► read loop ─► handlers ─► service ──► outbound queue (bounded) ─► write loop ─► socket
//!                                          ▲                                  ▲
//!                                    answers may wait               SessionSignal (notify, kick)
//!                                    for the durable flush
//! ```
//!
//! Answers go through a bounded queue in request order; an answer that waits
//! for the store is queued as a future, so sends pipeline and share flushes
//! while still being answered in order. When the queue is full the read loop
//! stops reading: a client that does not read its answers stalls only itself.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::{pb, Body, Codec, CodecError, Envelope, ErrorCode, KickReason};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::answers;
use super::handlers::{self, Flow, Session};
use super::limits::HandshakeSlot;
use super::tls_stream::{self, TlsStream};
use super::Gateway;
use crate::session::{Push, SessionSignal};

type Reader = FramedRead<ReadHalf<TlsStream>, Codec>;
type Writer = FramedWrite<WriteHalf<TlsStream>, Codec>;

/// An answer on its way to the write loop, through [`answers::queue`].
pub enum Outbound {
    /// Ready to write; `close` ends the connection after it.
    Ready { envelope: Envelope, close: bool },
    /// Resolves to the answer once the service is done (e.g. the flush).
    Pending(Pin<Box<dyn Future<Output = Envelope> + Send>>),
}

/// What the outbound queue carries (boxed: one pointer per queued answer).
pub type OutboundItem = Box<Outbound>;

/// Serve one accepted TCP connection to the end.
///
/// Most connections are idle most of the time, and an idle connection's
/// memory is mostly this future, so it is laid out for waiting: the
/// handshake and every handler run boxed (allocated only while they run),
/// and values that are moved on are built where they are used, because a
/// moved-from local still holds its bytes in the future for as long as it
/// is in scope. `connection_future_stays_small` holds the size.
pub async fn run(accepted: Box<Accepted>, gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let _open = gateway.metrics.connection_opened();
    let peer = accepted.peer.ip();
    let Some((read_half, write_half)) = Box::pin(handshake(accepted, &gateway)).await else {
        return;
    };
    let codec = Codec::new(gateway.limits.max_frame_bytes as usize);
    let (outbound, queue) = answers::queue(gateway.limits.outbound_queue);
    let signal = SessionSignal::new();
    // Cancelled when the write loop ends or the server shuts down.
    let closing = shutdown.child_token();
    let (_, registration) = tokio::join!(
        write_loop(
            gateway.clone(),
            framed_writer(write_half, codec),
            queue,
            signal.clone(),
            closing.clone(),
            gateway.timeouts.write,
            shutdown.clone(),
        ),
        read_loop(
            (gateway.clone(), peer, outbound, signal),
            // Start with empty buffers: they grow to the frames seen.
            FramedRead::with_capacity(read_half, codec, 0),
            closing,
        )
    );
    if let Some(registration) = registration {
        gateway.registry.unregister(&registration);
    }
    tracing::debug!("closed");
}

/// An accepted TCP connection, handed to [`run`] boxed: an async fn keeps
/// its arguments in its future for its whole life, and these are needed
/// only until the handshake.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Its place among the handshakes in progress from its address.
    pub handshake: HandshakeSlot,
}

/// TLS under the handshake deadline, then the stream split in two halves
/// (two pointers: the framed reader and writer are built where they are
/// moved into the loops, so this future does not keep a copy of them).
async fn handshake(
    accepted: Box<Accepted>,
    gateway: &Gateway,
) -> Option<(ReadHalf<TlsStream>, WriteHalf<TlsStream>)> {
    let Accepted {
        stream,
        handshake: _slot,
        ..
    } = *accepted;
    let accept = tls_stream::accept(stream, gateway.tls.config());
    let tls = match timeout(gateway.timeouts.handshake, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "tls handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!("tls handshake timed out");
            return None;
        }
    };
    tracing::debug!("connected");
    Some(tokio::io::split(tls))
}

/// The write half framed, with an empty buffer (it grows to the frames
/// written and is freed once flushed).
fn framed_writer(half: WriteHalf<TlsStream>, codec: Codec) -> Writer {
    let mut writer = FramedWrite::new(half, codec);
    *writer.write_buffer_mut() = bytes::BytesMut::new();
    writer
}

/// A boxed handler future: one exists only while a frame is handled.
type Handling<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

/// `session` is what `Session::new` takes: the session is built here, not
/// passed in, because an async fn's arguments stay in its future beside the
/// locals they move into, and the session is the biggest part of it.
async fn read_loop(
    session: (
        Arc<Gateway>,
        IpAddr,
        answers::Sender<OutboundItem>,
        Arc<SessionSignal>,
    ),
    mut frames: Reader,
    closing: CancellationToken,
) -> Option<crate::session::Registration> {
    let (gateway, peer, outbound, signal) = session;
    let mut session = Session::new(gateway, peer, outbound, signal);
    let login_deadline = Instant::now() + session.gateway().timeouts.login;
    let idle = session.gateway().timeouts.idle;
    let mut deadline = login_deadline;
    loop {
        // The frame is scoped to the block, so its bytes are not kept in
        // this future across the handler's await.
        let handling: Handling<'_> = {
            let frame = tokio::select! {
                _ = closing.cancelled() => break,
                frame = timeout_at(deadline, frames.next()) => frame,
            };
            match frame {
                Err(_) if session.is_authenticated() => {
                    tracing::debug!("idle timeout");
                    break;
                }
                Err(_) => {
                    let error =
                        pb::Error::new(ErrorCode::LoginTimeout, "no login within the deadline");
                    Box::pin(session.fatal(error))
                }
                Ok(None) => break,
                Ok(Some(Err(CodecError::FrameTooLarge { len, max }))) => {
                    tracing::debug!(len, max, "frame too large");
                    let message = format!("frame of {len} bytes is above the maximum of {max}");
                    Box::pin(session.fatal(pb::Error::new(ErrorCode::FrameTooLarge, message)))
                }
                Ok(Some(Err(CodecError::Decode(e)))) => {
                    tracing::debug!(error = %e, "undecodable frame");
                    let mut error = pb::Error::new(
                        ErrorCode::InvalidArgument,
                        format!("undecodable frame: {e}"),
                    );
                    error.fatal = true;
                    Box::pin(session.fatal(error))
                }
                Ok(Some(Err(CodecError::Io(e)))) => {
                    tracing::debug!(error = %e, "read failed");
                    break;
                }
                Ok(Some(Ok(envelope))) => {
                    release_if_idle(frames.read_buffer_mut());
                    session.gateway().metrics.frame_in(&envelope);
                    Box::pin(session.dispatch(envelope))
                }
            }
        };
        if handling.await == Flow::Close {
            break;
        }
        deadline = if session.is_authenticated() {
            Instant::now() + idle
        } else {
            login_deadline
        };
    }
    session.into_registration()
}

async fn write_loop(
    gateway: Arc<Gateway>,
    mut sink: Writer,
    mut queue: answers::Receiver<OutboundItem>,
    signal: Arc<SessionSignal>,
    closing: CancellationToken,
    write_timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut notified = 0;
    loop {
        let (envelopes, close) = tokio::select! {
            biased;
            _ = signal.woken() => {
                if let Some(kick) = signal.kicked() {
                    tracing::debug!(reason = ?kick.reason, "kicked");
                    (vec![kick_envelope(kick.reason, kick.message)], true)
                } else {
                    let pushes = pending_pushes(&gateway, &signal, &mut notified);
                    if pushes.is_empty() {
                        continue;
                    }
                    (pushes, false)
                }
            }
            item = queue.recv() => match item.map(|item| *item) {
                Some(Outbound::Ready { envelope, close }) => (vec![envelope], close),
                Some(Outbound::Pending(answer)) => (vec![answer.await], false),
                None if shutdown.is_cancelled() => {
                    let message = "the server is shutting down; reconnect later".to_owned();
                    (vec![kick_envelope(KickReason::ServerShutdown, message)], true)
                }
                None => break,
            },
        };
        let count = envelopes.len();
        let mut failed = false;
        let mut closing_now = close;
        let mut envelopes = envelopes.into_iter().enumerate();
        // The envelope lives only in the closure and the boxed write, so
        // this future does not keep room for one.
        while let Some(writing) = envelopes.next().map(|(i, envelope)| {
            // Any fatal error ends the connection, whichever path produced it.
            closing_now |= matches!(&envelope.body, Some(Body::Error(e)) if e.fatal);
            // A notify raised while this answer was awaited (the sender's
            // own queue grew with its send) goes out in the same flush:
            // `woken()` is ready for it on the next turn, which flushes.
            let more = !queue.is_empty() || signal.notified_seq() > notified;
            let flush = closing_now || (i + 1 == count && !more);
            gateway.metrics.frame_out(&envelope);
            Box::pin(write(&mut sink, envelope, flush, write_timeout))
        }) {
            if writing.await.is_err() {
                failed = true;
                break;
            }
        }
        if failed || closing_now {
            break;
        }
    }
    closing.cancel();
    // Best effort: send close_notify; the peer may already be gone.
    let close = SinkExt::<Envelope>::close(&mut sink);
    let _ = Box::pin(timeout(write_timeout, close)).await;
}

/// The pushes a wake-up brought: the newest queue notify (if above the
/// last one sent) and each large group's newest timeline top, with their
/// inline entries, and the ephemeral events in order.
fn pending_pushes(gateway: &Gateway, signal: &SessionSignal, notified: &mut u64) -> Vec<Envelope> {
    let mut pushes = Vec::new();
    let taken = signal.take(notified);
    let budget = gateway.limits.max_frame_bytes as usize - NOTIFY_FRAME_RESERVE;
    let inline = |entries| handlers::inline_messages(&gateway.messaging, entries, budget);
    if let Some((max_seq, entries)) = taken.notify {
        let messages = inline(entries);
        pushes.push(Envelope::new(
            0,
            Body::Notify(pb::Notify { max_seq, messages }),
        ));
    }
    for (group_id, max_seq, entries) in taken.groups {
        let messages = inline(entries);
        let notify = pb::GroupNotify {
            group_id,
            max_seq,
            messages,
        };
        pushes.push(Envelope::new(0, Body::GroupNotify(notify)));
    }
    for event in taken.events {
        pushes.push(Envelope::new(0, push_body(event)));
    }
    pushes
}

/// Bytes of a Notify or GroupNotify frame kept for everything but its
/// messages.
const NOTIFY_FRAME_RESERVE: usize = 32;

fn push_body(event: Push) -> Body {
    match event {
        Push::ReadReceipt { reader, read_seq } => Body::ReadReceipt(pb::ReadReceipt {
            peer_user_id: reader,
            read_seq,
        }),
        Push::Typing {
            from,
            group,
            typing,
        } => Body::TypingEvent(pb::TypingEvent {
            from_user_id: from,
            group_id: group,
            typing,
        }),
        Push::Presence {
            user,
            online,
            last_seen_ms,
        } => Body::PresenceEvent(pb::PresenceEvent {
            presence: Some(pb::Presence {
                user_id: user,
                visible: true,
                online,
                last_seen_ms,
            }),
        }),
    }
}

fn kick_envelope(reason: KickReason, message: String) -> Envelope {
    Envelope::new(
        0,
        Body::Kick(pb::Kick {
            reason: reason as i32,
            message,
        }),
    )
}

/// Free a buffer once it is empty, so an idle connection holds no read or
/// write buffer (most connections are idle most of the time). A busy one
/// rarely empties its buffer between pipelined frames, and when it does the
/// next allocation is cheap next to the frame's TLS record.
///
/// Whatever its capacity: a `BytesMut` whose every byte was split off or
/// written out has a capacity of 0 and still holds its allocation (the
/// last frame's ~100 bytes and, once split, their 40-byte shared header),
/// ~240 bytes per idle connection as measured (docs/performance.md).
fn release_if_idle(buffer: &mut bytes::BytesMut) {
    if buffer.is_empty() {
        *buffer = bytes::BytesMut::new();
    }
}

/// Write one frame, flushing if asked; a peer that does not take it within
/// the write timeout is dropped.
async fn write(
    sink: &mut Writer,
    envelope: Envelope,
    flush: bool,
    write_timeout: std::time::Duration,
) -> Result<(), ()> {
    let result = timeout(write_timeout, async {
        sink.feed(envelope).await?;
        if flush {
            SinkExt::<Envelope>::flush(sink).await?;
            release_if_idle(sink.write_buffer_mut());
        }
        Ok::<(), CodecError>(())
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "write failed");
            Err(())
        }
        Err(_) => {
            tracing::debug!("peer too slow to read; closing");
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, BufMut, BytesMut};

    use super::release_if_idle;

    #[test]
    fn an_emptied_buffer_lets_its_allocation_go() {
        // Read side: the frame is split off and kept; the buffer, empty and
        // of capacity 0, must not keep the frame's allocation too.
        let mut read = BytesMut::with_capacity(64);
        read.put_slice(&[7; 64]);
        let frame = read.split_to(64).freeze();
        assert_eq!((read.len(), read.capacity()), (0, 0));
        assert!(
            !frame.is_unique(),
            "the buffer shares the frame's allocation"
        );
        release_if_idle(&mut read);
        assert!(frame.is_unique());
        // Write side: written out in full, capacity 0; nothing left to point
        // into the old allocation.
        let mut written = BytesMut::with_capacity(64);
        written.put_slice(&[7; 64]);
        written.advance(64);
        assert_eq!((written.len(), written.capacity()), (0, 0));
        release_if_idle(&mut written);
        assert_eq!(written.as_ptr(), BytesMut::new().as_ptr());
        // A buffer still holding bytes is kept.
        let mut partial = BytesMut::with_capacity(64);
        partial.put_slice(&[7; 10]);
        release_if_idle(&mut partial);
        assert_eq!(partial.len(), 10);
    }
}
