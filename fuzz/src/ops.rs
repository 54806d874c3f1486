//! The ops of the `session` target and their byte layout: one byte picks
//! the kind (mod 6), then a fixed number of argument bytes, so that a seed
//! can be written from ops ([`Ops::encode`]) and every byte string is some
//! sequence. Seqs are [`Anchor`]s, relative to the state, so random bytes
//! land on the edges (the top, the cursor, just beyond).

use arbitrary::{Arbitrary, Unstructured};

use pigeon_server::store::Seq;

/// Most ops taken from one input.
pub const MAX_OPS: usize = 64;

/// A seq named relative to the state, so that random bytes hit the edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// This value.
    At(u8),
    /// The queue's max_seq minus this (saturating).
    BelowMax(u8),
    /// The device's cursor plus this.
    AboveCursor(u8),
    /// Past the queue's top: max_seq + 1 + this, or u64::MAX for 63.
    BeyondMax(u8),
}

impl Anchor {
    /// Decode from one byte: two bits of kind, six of amount.
    pub fn from_byte(b: u8) -> Anchor {
        let n = b & 63;
        match b >> 6 {
            0 => Anchor::At(n),
            1 => Anchor::BelowMax(n),
            2 => Anchor::AboveCursor(n),
            _ => Anchor::BeyondMax(n),
        }
    }

    /// The byte [`Anchor::from_byte`] reads back as `self`.
    pub fn to_byte(self) -> u8 {
        match self {
            Anchor::At(n) => n & 63,
            Anchor::BelowMax(n) => 64 | (n & 63),
            Anchor::AboveCursor(n) => 128 | (n & 63),
            Anchor::BeyondMax(n) => 192 | (n & 63),
        }
    }

    pub(crate) fn resolve(self, max_seq: Seq, cursor: Seq) -> Seq {
        match self {
            Anchor::At(n) => n as u64,
            Anchor::BelowMax(n) => max_seq.saturating_sub(n as u64),
            Anchor::AboveCursor(n) => cursor + n as u64,
            Anchor::BeyondMax(63) => u64::MAX,
            Anchor::BeyondMax(n) => max_seq + 1 + n as u64,
        }
    }
}

/// One request of a device (a slot: user × device), or the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Log the slot in by token (a new one if `fresh` or none is live; else
    /// the last one, which makes this a reconnect). `wrong_device` presents
    /// it for the slot's other device, `revoked` presents a logged-out token
    /// instead, `claim` picks the username sent along (0: none, 1-3: a user,
    /// 4: nobody). Also a takeover when the slot is online.
    Login {
        slot: u8,
        fresh: bool,
        wrong_device: bool,
        revoked: bool,
        claim: u8,
    },
    /// Revoke the session's token and go offline (the cursor stays).
    Logout { slot: u8 },
    /// Send: `to` 0-2 a user by id, 3-5 by name, 6 an unknown id, 7 an
    /// unknown name; `cmid` below 250 picks one of 8 client ids (resends
    /// dedupe), 250+ is an invalid one; `len` above 64 is too large.
    Send { slot: u8, to: u8, cmid: u8, len: u8 },
    /// Pull after an anchor, limit 0-5 (0: the default).
    Pull { slot: u8, after: Anchor, limit: u8 },
    /// Ack up to an anchor.
    Ack { slot: u8, seq: Anchor },
    /// One background collector sweep.
    Sweep,
}

impl Op {
    /// The bytes [`Op::arbitrary`] reads back as `self` (for seeds).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Login {
                slot,
                fresh,
                wrong_device,
                revoked,
                claim,
            } => {
                let flags = fresh as u8 | (wrong_device as u8) << 1 | (revoked as u8) << 2;
                out.extend_from_slice(&[0, slot, flags, claim]);
            }
            Op::Logout { slot } => out.extend_from_slice(&[1, slot]),
            Op::Send {
                slot,
                to,
                cmid,
                len,
            } => out.extend_from_slice(&[2, slot, to, cmid, len]),
            Op::Pull { slot, after, limit } => {
                out.extend_from_slice(&[3, slot, after.to_byte(), limit])
            }
            Op::Ack { slot, seq } => out.extend_from_slice(&[4, slot, seq.to_byte()]),
            Op::Sweep => out.push(5),
        }
    }
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut byte = || u8::arbitrary(u);
        Ok(match byte()? % 6 {
            0 => {
                let slot = byte()?;
                let flags = byte()?;
                Op::Login {
                    slot,
                    fresh: flags & 1 != 0,
                    wrong_device: flags & 2 != 0,
                    revoked: flags & 4 != 0,
                    claim: byte()?,
                }
            }
            1 => Op::Logout { slot: byte()? },
            2 => Op::Send {
                slot: byte()?,
                to: byte()?,
                cmid: byte()?,
                len: byte()?,
            },
            3 => Op::Pull {
                slot: byte()?,
                after: Anchor::from_byte(byte()?),
                limit: byte()?,
            },
            4 => Op::Ack {
                slot: byte()?,
                seq: Anchor::from_byte(byte()?),
            },
            _ => Op::Sweep,
        })
    }
}

/// A whole input: up to [`MAX_OPS`] ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ops(pub Vec<Op>);

impl<'a> Arbitrary<'a> for Ops {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Ops(ops))
    }
}

impl Ops {
    /// The input bytes for these ops (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for op in &self.0 {
            op.encode(&mut out);
        }
        out
    }
}
