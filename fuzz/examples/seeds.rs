//! Writes the seed corpus in `fuzz/corpus/<target>/` from real envelopes
//! and op sequences: `cargo run --example seeds` in `fuzz/`. Deterministic,
//! so re-running it changes nothing.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use pigeon_fuzz::frame_codec_input;
use pigeon_fuzz::session::{Anchor, Op, Ops};
use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, Codec, Envelope, ErrorCode, Platform, PROTOCOL_VERSION};
use prost::Message;
use tokio_util::codec::Encoder;

fn envelopes() -> Vec<Envelope> {
    let v = PROTOCOL_VERSION as i32;
    vec![
        Envelope::new(
            1,
            Body::Register(pb::RegisterRequest {
                protocol_version: v,
                username: "alice".into(),
                password: "correct horse battery".into(),
            }),
        ),
        Envelope::new(
            2,
            Body::Login(pb::LoginRequest {
                protocol_version: v,
                username: "alice".into(),
                device_id: "phone-1".into(),
                platform: Platform::Ios as i32,
                credential: Some(Credential::Password("correct horse battery".into())),
                inline_messages: false,
            }),
        ),
        Envelope::new(
            3,
            Body::Login(pb::LoginRequest {
                protocol_version: v,
                username: String::new(),
                device_id: "laptop:2".into(),
                platform: Platform::Cli as i32,
                credential: Some(Credential::Token("ab".repeat(32))),
                inline_messages: true,
            }),
        ),
        Envelope::new(
            4,
            Body::Send(pb::SendRequest {
                group_id: 0,
                to_user_id: 0,
                to_username: "bob".into(),
                client_msg_id: "c-1".into(),
                content_type: "text/plain".into(),
                content: Bytes::from_static(b"hello bob"),
            }),
        ),
        Envelope::new(
            5,
            Body::Pull(pb::PullRequest {
                after_seq: 3,
                limit: 10,
            }),
        ),
        Envelope::new(6, Body::Ack(pb::AckRequest { seq: 7 })),
        Envelope::new(
            7,
            Body::Ping(pb::Ping {
                client_time_ms: 1_700_000_000_000,
            }),
        ),
        Envelope::new(8, Body::Logout(pb::LogoutRequest {})),
        Envelope::new(
            9,
            Body::Pulled(pb::PullResponse {
                messages: vec![pb::Message {
                    seq: 4,
                    msg_id: 1 << 40,
                    from_user_id: 1,
                    from_username: "alice".into(),
                    to_user_id: 2,
                    to_username: "bob".into(),
                    from_device_id: "phone-1".into(),
                    content_type: "text/plain".into(),
                    content: Bytes::from_static(b"hi"),
                    sent_at_ms: 1 << 24,
                    client_msg_id: "c-1".into(),
                    ..Default::default()
                }],
                max_seq: 4,
                has_more: false,
                acked_seq: 3,
            }),
        ),
        Envelope::new(0, Body::Notify(pb::Notify { max_seq: 12, messages: vec![] })),
        Envelope::new(
            10,
            Body::Error(pb::Error::new(ErrorCode::RateLimited, "slow down")),
        ),
        Envelope::default(),
    ]
}

fn frame(envelope: &Envelope) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Codec::default()
        .encode(envelope, &mut buf)
        .expect("seed frames fit");
    buf.to_vec()
}

fn session_seeds() -> Vec<Ops> {
    use Op::*;
    let login = |slot| Login {
        slot,
        fresh: false,
        wrong_device: false,
        revoked: false,
        claim: 0,
    };
    vec![
        // A and B log in, A sends to B, B pulls in pages and acks.
        Ops(vec![
            login(0),
            login(2),
            Send {
                slot: 0,
                to: 1,
                cmid: 0,
                len: 5,
            },
            Send {
                slot: 0,
                to: 4,
                cmid: 1,
                len: 0,
            },
            Pull {
                slot: 2,
                after: Anchor::At(0),
                limit: 1,
            },
            Pull {
                slot: 2,
                after: Anchor::At(1),
                limit: 0,
            },
            Ack {
                slot: 2,
                seq: Anchor::BelowMax(0),
            },
            Sweep,
        ]),
        // A resend, a note to self, a second device, an ack beyond the top.
        Ops(vec![
            login(0),
            login(1),
            Send {
                slot: 0,
                to: 2,
                cmid: 3,
                len: 10,
            },
            Send {
                slot: 0,
                to: 2,
                cmid: 3,
                len: 10,
            },
            Send {
                slot: 1,
                to: 0,
                cmid: 4,
                len: 1,
            },
            Ack {
                slot: 0,
                seq: Anchor::BeyondMax(0),
            },
            Ack {
                slot: 1,
                seq: Anchor::BelowMax(0),
            },
            Pull {
                slot: 0,
                after: Anchor::AboveCursor(0),
                limit: 2,
            },
            Sweep,
        ]),
        // Logout, then tokens of the wrong device, user and a revoked one.
        Ops(vec![
            login(4),
            Send {
                slot: 4,
                to: 0,
                cmid: 0,
                len: 3,
            },
            Logout { slot: 4 },
            Login {
                slot: 4,
                fresh: false,
                wrong_device: false,
                revoked: true,
                claim: 0,
            },
            Login {
                slot: 4,
                fresh: true,
                wrong_device: true,
                revoked: false,
                claim: 0,
            },
            Login {
                slot: 4,
                fresh: false,
                wrong_device: false,
                revoked: false,
                claim: 1,
            },
            Login {
                slot: 4,
                fresh: false,
                wrong_device: false,
                revoked: false,
                claim: 3,
            },
            Pull {
                slot: 4,
                after: Anchor::At(0),
                limit: 0,
            },
        ]),
        // Invalid sends: too large, bad client id, unknown recipients.
        Ops(vec![
            login(0),
            Send {
                slot: 0,
                to: 1,
                cmid: 0,
                len: 79,
            },
            Send {
                slot: 0,
                to: 1,
                cmid: 250,
                len: 1,
            },
            Send {
                slot: 0,
                to: 1,
                cmid: 253,
                len: 1,
            },
            Send {
                slot: 0,
                to: 6,
                cmid: 2,
                len: 1,
            },
            Send {
                slot: 0,
                to: 7,
                cmid: 2,
                len: 1,
            },
        ]),
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let all = envelopes();
    for (i, envelope) in all.iter().enumerate() {
        write(
            &root.join("envelope"),
            &format!("seed-{i:02}"),
            &envelope.encode_to_vec(),
        );
        let wire = frame(envelope);
        write(
            &root.join("frame_codec"),
            &format!("seed-{i:02}"),
            &frame_codec_input(4096, &[], &wire),
        );
    }
    // Several frames in one stream, cut into uneven chunks, and a stream
    // announcing a frame above a small maximum.
    let stream: Vec<u8> = all.iter().flat_map(frame).collect();
    write(
        &root.join("frame_codec"),
        "seed-stream",
        &frame_codec_input(4096, &[1, 7, 3, 0, 64], &stream),
    );
    write(
        &root.join("frame_codec"),
        "seed-too-large",
        &frame_codec_input(16, &[2], &stream),
    );
    for (i, ops) in session_seeds().iter().enumerate() {
        write(
            &root.join("session"),
            &format!("seed-{i:02}"),
            &ops.encode(),
        );
    }
}
