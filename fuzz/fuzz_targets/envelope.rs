//! Fuzz envelope decoding and the server's pure request checks.
//!
//! Arbitrary bytes → `Envelope::decode`. Checked: no panic; a decoded
//! envelope re-encodes to bytes that decode to the same envelope and
//! re-encode to the same bytes (a fixpoint); the bytes framed with a length
//! prefix give the same result through the codec; and for requests, the
//! server's username and device-id validators accept exactly what
//! `pigeon.proto` documents, platform and error codes map without panics.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pigeon_protocol::pb::login_request::Credential;
use pigeon_protocol::{Body, Codec, Envelope, ErrorCode, Platform};
use pigeon_server::service::accounts::{hash_token, validate_device_id, validate_username};
use prost::Message;
use tokio_util::codec::Decoder;

/// pigeon.proto: "3 to 32 characters of [a-z0-9_.-], starting with a letter or digit".
fn documented_username(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=32).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// pigeon.proto: "1 to 64 bytes of [A-Za-z0-9_.:-]".
fn documented_device_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=64).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.:-".contains(c))
}

fn check_request(body: &Body) {
    match body {
        Body::Register(r) => {
            assert_eq!(
                validate_username(&r.username).is_ok(),
                documented_username(&r.username),
                "username {:?}",
                r.username
            );
        }
        Body::Login(l) => {
            assert_eq!(
                validate_device_id(&l.device_id).is_ok(),
                documented_device_id(&l.device_id),
                "device id {:?}",
                l.device_id
            );
            let platform = Platform::try_from(l.platform);
            assert_eq!(platform.is_ok(), (0..=6).contains(&l.platform));
            if let Ok(p) = platform {
                let _ = p.class();
            }
            if let Some(Credential::Token(t)) = &l.credential {
                let _ = hash_token(t);
            }
        }
        Body::Error(e) => {
            if let Ok(code) = ErrorCode::try_from(e.code) {
                let _ = (code.is_fatal(), code.is_retryable());
                let built = pigeon_protocol::pb::Error::new(code, e.message.clone());
                assert_eq!(built.fatal, code.is_fatal());
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let decoded = Envelope::decode(data);

    // The same bytes as one frame through the codec decode the same way.
    let mut frame = BytesMut::with_capacity(data.len() + 4);
    frame.put_u32(data.len() as u32);
    frame.extend_from_slice(data);
    let framed = Codec::new(data.len()).decode(&mut frame);
    match (&decoded, &framed) {
        (Ok(a), Ok(Some(b))) => assert_eq!(a, b),
        (Err(_), Err(pigeon_protocol::CodecError::Decode(_))) => {}
        other => panic!("codec and Envelope::decode disagree: {other:?}"),
    }

    let Ok(envelope) = decoded else { return };
    let bytes = envelope.encode_to_vec();
    assert_eq!(bytes.len(), envelope.encoded_len());
    let again = Envelope::decode(bytes.as_slice()).expect("a re-encoded envelope decodes");
    assert_eq!(again, envelope);
    assert_eq!(again.encode_to_vec(), bytes, "re-encoding is a fixpoint");
    if let Some(body) = &envelope.body {
        check_request(body);
    }
});
