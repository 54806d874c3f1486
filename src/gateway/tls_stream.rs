//! The server side of one TLS connection, on rustls' unbuffered API, holding
//! no buffer while the connection is idle.
//!
//! tokio-rustls over a buffered `ServerConnection` keeps rustls' 4 KiB read
//! buffer for the connection's whole life (rustls sizes it before every read
//! and has no call to give it back), which was a quarter of an idle
//! connection's memory. Here the stream owns its three buffers and frees
//! each once it is empty:
//!
//! - `incoming`: bytes read from the socket that are not yet a whole record.
//!   The socket is read only once it is readable, so an idle connection
//!   waits without one.
//! - `plaintext`: decrypted bytes the reader has not taken yet.
//! - `outgoing`: encrypted bytes (records, handshake messages, alerts) not
//!   yet written to the socket.
//!
//! What is left per idle connection is rustls' connection state (keys, the
//! handshake's resumption data) and the `TcpStream`.
//!
//! Anything rustls produces while reading (session tickets after the
//! handshake, a key update, an alert) is queued in `outgoing` and written on
//! the next read or flush, whichever comes first.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

/// How much one socket read asks for.
const READ_CHUNK: usize = 8 * 1024;
/// The most `incoming` may hold: rustls joins a handshake message of up to
/// 64 KiB across records in the caller's buffer, plus one record's header
/// and expansion. Past this the peer is sending something no TLS stack does.
const MAX_INCOMING: usize = 0x1_0000 + 0x4800 + 5;
/// A write stops taking application data while this much encrypted data
/// waits for the socket (backpressure for a peer that does not read).
const OUTGOING_HIGH: usize = 64 * 1024;

/// A server-side TLS connection; `AsyncRead` yields the peer's plaintext,
/// `AsyncWrite` encrypts, `poll_shutdown` sends close_notify.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    plaintext: Vec<u8>,
    plaintext_taken: usize,
    outgoing: Vec<u8>,
    outgoing_written: usize,
    /// The peer sent close_notify or closed its side: reads return end of
    /// stream once `plaintext` is drained.
    read_closed: bool,
    close_notify_queued: bool,
    /// A reader parked for input, woken when a write's processing of
    /// `incoming` produced plaintext or end of stream for it.
    read_waker: Option<Waker>,
}

/// What to do when rustls can take application data.
#[derive(Clone, Copy)]
enum Action<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Where rustls stopped.
#[derive(Debug, PartialEq)]
enum Next {
    /// The handshake needs more input from the peer.
    Handshaking,
    /// Traffic keys are in place; the action (if any) was done.
    Traffic,
    /// close_notify went both ways: nothing more can be sent.
    Closed,
}

/// Run the server side of a TLS handshake on `tcp`.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        plaintext: Vec::new(),
        plaintext_taken: 0,
        outgoing: Vec::new(),
        outgoing_written: 0,
        read_closed: false,
        close_notify_queued: false,
        read_waker: None,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = self.advance(Action::Nothing)?;
            // What the handshake produced goes out before waiting for more.
            ready!(self.poll_write_outgoing(cx))?;
            match next {
                Next::Traffic => return Poll::Ready(Ok(())),
                Next::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Next::Handshaking => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed during the TLS handshake",
                        )));
                    }
                }
            }
        }
    }

    /// Let rustls process everything in `incoming` and emit whatever it
    /// wants sent, until it needs more input or can take application data
    /// (then `action` is done). A TLS error queues rustls' alert, tries to
    /// send it without waiting, and ends the connection.
    fn advance(&mut self, action: Action<'_>) -> io::Result<Next> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let next = match state {
                Err(e) => {
                    self.incoming.drain(..discard);
                    return Err(self.fail(e));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    self.wake_reader();
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    append(&mut self.outgoing, 512, |out| match encode.encode(out) {
                        Ok(n) => Ok(n),
                        Err(EncodeError::InsufficientSize(e)) => Err(Some(e.required_size)),
                        Err(_) => Err(None),
                    })?;
                    None
                }
                // The encoded bytes are in `outgoing`, which is written out
                // before anything sent later: as far as rustls is concerned
                // they are on their way.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Next::Handshaking),
                Ok(ConnectionState::PeerClosed) => {
                    self.read_closed = true;
                    self.wake_reader();
                    None
                }
                Ok(ConnectionState::Closed) => {
                    self.read_closed = true;
                    self.wake_reader();
                    Some(Next::Closed)
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    match action {
                        Action::Nothing => {}
                        Action::Encrypt(data) => {
                            let records = data.len() / (16 * 1024) + 1;
                            append(&mut self.outgoing, data.len() + records * 64, |out| {
                                encrypt_result(traffic.encrypt(data, out))
                            })?;
                        }
                        Action::CloseNotify => {
                            append(&mut self.outgoing, 64, |out| {
                                encrypt_result(traffic.queue_close_notify(out))
                            })?;
                            self.close_notify_queued = true;
                        }
                    }
                    Some(Next::Traffic)
                }
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    return Err(protocol_error("early data is not accepted"))
                }
                Ok(other) => {
                    return Err(protocol_error(format!("unexpected TLS state {other:?}")));
                }
            };
            self.incoming.drain(..discard);
            release(&mut self.incoming);
            if let Some(next) = next {
                return Ok(next);
            }
        }
    }

    /// After a TLS error rustls queues an alert for the peer ahead of the
    /// error; encode it and try once to send it.
    fn fail(&mut self, error: rustls::Error) -> io::Error {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            let Ok(ConnectionState::EncodeTlsData(mut encode)) = state else {
                break;
            };
            let mut alert = [0u8; 64];
            if let Ok(n) = encode.encode(&mut alert) {
                self.outgoing.extend_from_slice(&alert[..n]);
            }
        }
        let pending = &self.outgoing[self.outgoing_written..];
        if !pending.is_empty() {
            let _ = self.tcp.try_write(pending);
        }
        tls_error(error)
    }

    /// Read what the socket has into `incoming`; `Ok(0)` is end of stream.
    ///
    /// Through tokio's `poll_read`, not `try_read`: a read that returns less
    /// than it asked for has drained the socket, and `poll_read` then
    /// clears the readiness itself, so the next fill waits for epoll
    /// instead of making a `recv` that can only fail with EAGAIN (half of
    /// all `recvfrom` calls at load were such, one per request read).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(protocol_error("TLS input above the record size limit")));
        }
        // Readable first: a connection waiting for input holds no buffer.
        ready!(self.tcp.poll_read_ready(cx))?;
        self.incoming
            .reserve(READ_CHUNK.min(MAX_INCOMING - self.incoming.len()));
        let filled = poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.incoming);
        if filled.is_pending() {
            release(&mut self.incoming);
        }
        filled
    }

    /// Write `outgoing` to the socket; freed once all of it is written.
    fn poll_write_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_written < self.outgoing.len() {
            let pending = &self.outgoing[self.outgoing_written..];
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_written += n;
        }
        self.outgoing.clear();
        self.outgoing_written = 0;
        release(&mut self.outgoing);
        Poll::Ready(Ok(()))
    }

    /// Copy decrypted bytes into `buf`; true if there were any.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let available = &self.plaintext[self.plaintext_taken..];
        if available.is_empty() || buf.remaining() == 0 {
            return false;
        }
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.plaintext_taken += n;
        if self.plaintext_taken == self.plaintext.len() {
            self.plaintext.clear();
            self.plaintext_taken = 0;
            release(&mut self.plaintext);
        }
        true
    }

    fn wake_reader(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.take_plaintext(buf) || this.read_closed {
                return Poll::Ready(Ok(()));
            }
            this.advance(Action::Nothing)?;
            // Tickets, key update answers: out without waiting for a write.
            if let Poll::Ready(Err(e)) = this.poll_write_outgoing(cx) {
                return Poll::Ready(Err(e));
            }
            if this.plaintext.len() > this.plaintext_taken || this.read_closed {
                continue;
            }
            match this.poll_fill(cx) {
                Poll::Pending => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                // End of stream without close_notify: the peer went away.
                Poll::Ready(Ok(0)) => this.read_closed = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_notify_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.outgoing.len() - this.outgoing_written >= OUTGOING_HIGH {
            ready!(this.poll_write_outgoing(cx))?;
        }
        let data = &data[..data.len().min(OUTGOING_HIGH)];
        match this.advance(Action::Encrypt(data))? {
            Next::Traffic => Poll::Ready(Ok(data.len())),
            Next::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Next::Handshaking => Poll::Ready(Err(protocol_error("write before the handshake"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_queued {
            // Once close_notify went both ways (`Next::Closed`) there is
            // nothing left to send.
            this.close_notify_queued = true;
            this.advance(Action::CloseNotify)?;
        }
        ready!(this.poll_write_outgoing(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Let `write` fill the end of `out`, growing it to the size it asks for.
/// `write` returns the bytes written or, on error, the size it needs.
fn append(
    out: &mut Vec<u8>,
    mut size: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + size, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(needed)) if needed > size => size = needed,
            Err(_) => {
                out.truncate(start);
                return Err(protocol_error("TLS output could not be encoded"));
            }
        }
    }
}

fn encrypt_result(result: Result<usize, EncryptError>) -> Result<usize, Option<usize>> {
    match result {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(e)) => Err(Some(e.required_size)),
        Err(_) => Err(None),
    }
}

/// Free an empty buffer: even a small one kept per connection adds up
/// over a million idle connections, and an allocation per read or write
/// costs little next to the TLS record it carries.
fn release(buffer: &mut Vec<u8>) {
    if buffer.is_empty() && buffer.capacity() > 0 {
        *buffer = Vec::new();
    }
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn protocol_error(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::pki_types::ServerName;
    use rustls::ClientConfig;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream as ClientStream;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::config::TlsConfig;
    use crate::gateway::tls::ServerTls;

    const WAIT: Duration = Duration::from_secs(10);

    fn client_config() -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.pem");
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = rustls::crypto::ring::default_provider();
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A loopback TCP pair: (server side, client side).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    /// A server stream and a tokio-rustls client stream, handshake done.
    async fn pair() -> (TlsStream, ClientStream<TcpStream>) {
        let (server_tcp, client_tcp) = tcp_pair().await;
        let server_config = ServerTls::load(&TlsConfig::default()).unwrap().config();
        let name = ServerName::try_from("localhost").unwrap();
        let connect = TlsConnector::from(client_config()).connect(name, client_tcp);
        let (server, client) = tokio::time::timeout(WAIT, async {
            tokio::join!(accept(server_tcp, server_config), connect)
        })
        .await
        .expect("handshake ends in time");
        (server.unwrap(), client.unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn assert_holds_no_buffer(stream: &TlsStream) {
        assert_eq!(stream.incoming.capacity(), 0, "incoming kept");
        assert_eq!(stream.plaintext.capacity(), 0, "plaintext kept");
        assert_eq!(stream.outgoing.capacity(), 0, "outgoing kept");
    }

    #[tokio::test]
    async fn data_larger_than_a_record_and_the_write_limit_goes_both_ways_intact() {
        let (mut server, mut client) = pair().await;
        let up = pattern(300_000);
        let down = pattern(200_001);
        let client_side = async {
            client.write_all(&up).await.unwrap();
            client.flush().await.unwrap();
            let mut got = vec![0; down.len()];
            client.read_exact(&mut got).await.unwrap();
            got
        };
        let server_side = async {
            let mut got = vec![0; up.len()];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&down).await.unwrap();
            server.flush().await.unwrap();
            got
        };
        let (client_got, server_got) =
            tokio::time::timeout(WAIT, async { tokio::join!(client_side, server_side) })
                .await
                .unwrap();
        assert!(server_got == up, "the server read what the client wrote");
        assert!(client_got == down, "the client read what the server wrote");
        assert_holds_no_buffer(&server);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer_after_the_handshake_and_each_exchange() {
        let (mut server, mut client) = pair().await;
        // The session tickets went out with the handshake's last flight.
        assert_holds_no_buffer(&server);
        for round in 0..3u8 {
            client.write_all(&[round; 100]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0; 100];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round; 100]);
            server.write_all(&[round + 1; 50]).await.unwrap();
            server.flush().await.unwrap();
            let mut back = [0; 50];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [round + 1; 50]);
            assert_holds_no_buffer(&server);
        }
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_cleanly_in_both_directions() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, server.read_to_end(&mut got))
            .await
            .unwrap()
            .expect("a close_notify is a clean end of stream");
        assert_eq!(got, b"last words");
        // The other direction still works until the server closes it.
        server.write_all(b"goodbye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(WAIT, client.read_to_end(&mut back))
            .await
            .unwrap()
            .expect("the client sees the server's close_notify, not a truncation");
        assert_eq!(back, b"goodbye");
        let refused = server.write_all(b"more").await;
        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_peer_that_vanishes_without_close_notify_is_an_end_of_stream() {
        let (mut server, mut client) = pair().await;
        // The client reads the session tickets first: a socket closed with
        // unread data is reset, not ended.
        server.write_all(b"hello").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut [0; 5]).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        let read = tokio::time::timeout(WAIT, server.read_to_end(&mut got)).await;
        assert!(read.unwrap().is_ok());
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_is_refused_with_an_alert() {
        let (server_tcp, mut client_tcp) = tcp_pair().await;
        let server_config = ServerTls::load(&TlsConfig::default()).unwrap().config();
        client_tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let result = tokio::time::timeout(WAIT, accept(server_tcp, server_config))
            .await
            .unwrap();
        let error = result.err().expect("the handshake fails");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        // A TLS alert record (content type 21) came back before the close.
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, client_tcp.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.first(), Some(&21), "got {answer:?}");
    }

    #[tokio::test]
    async fn a_peer_that_closes_mid_handshake_fails_the_handshake() {
        let (server_tcp, client_tcp) = tcp_pair().await;
        let server_config = ServerTls::load(&TlsConfig::default()).unwrap().config();
        drop(client_tcp);
        let result = tokio::time::timeout(WAIT, accept(server_tcp, server_config))
            .await
            .unwrap();
        assert_eq!(result.err().unwrap().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_gets_backpressure_not_an_unbounded_buffer() {
        let (mut server, _client) = pair().await;
        let chunk = pattern(16 * 1024);
        let mut written = 0usize;
        // Write until a write stalls (the client reads nothing); bounded.
        while written < 256 * 1024 * 1024 {
            let write = tokio::time::timeout(Duration::from_millis(200), async {
                server.write_all(&chunk).await?;
                server.flush().await
            });
            match write.await {
                Ok(result) => result.unwrap(),
                Err(_) => break,
            }
            written += chunk.len();
        }
        assert!(written < 256 * 1024 * 1024, "writes never stalled");
        let held = server.outgoing.len() - server.outgoing_written;
        assert!(held <= OUTGOING_HIGH + 2 * chunk.len(), "{held} bytes held");
    }
}
