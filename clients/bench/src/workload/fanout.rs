//! Workload (5): group fan-out. `members` receivers are online (default
//! 1,000); one more member sends `messages` (default 100) to the group as
//! fast as a window of unanswered sends allows; every receiver must get
//! every message exactly once. Figures: deliveries per second (receivers ×
//! messages over the time from the first send to the last delivery), the
//! time to the last delivery, send → receive latency, server CPU and RSS.
//!
//! pigeon: a group created for the run. Above the server's
//! `messaging.large_group_threshold` (default 500, so a 1,000-member group
//! is large) a send is one timeline entry and online members get a
//! GroupNotify and pull the timeline; at or below it, a send writes one
//! entry per member's queue and members pull their inbox. mosquitto: one
//! shared topic, QoS 1, persistent sessions (`clean_session = false`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::pb;
use pigeon_protocol::{Body, Envelope};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{AnyReceiver, Ctx, Meter, Role, Side};
use crate::payload::{Percentiles, Recorder};
use crate::pigeon::{self, ReceiveUntil, Session};
use crate::report::{Figures, Outcome};
use crate::{mqtt, payload};

/// The MQTT topic every fan-out subscriber shares.
const TOPIC: &str = "pigeon-bench/fanout";

/// Parameters of the fan-out workload.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Online receivers in the group (the sender is one more member).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Messages the sender sends to the group.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Message body bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Unanswered sends at once.
    #[arg(long, default_value_t = 8)]
    pub window: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub secs: f64,
}

/// The receivers connected and (MQTT) subscribed, and what sends to them.
enum Sending {
    Pigeon { sender: pigeon::Sender, group: u64 },
    Mqtt(mqtt::Sender),
}

async fn setup(
    ctx: &Ctx,
    side: Side,
    args: &FanoutArgs,
    f: &mut Figures,
) -> Result<(Vec<Receiver>, Sending)> {
    match side {
        Side::Pigeon => {
            let members = ctx.accounts("bfm", args.members, f).await?;
            let sender = ctx.accounts("bfs", 1, f).await?;
            let receivers = ctx.pigeon_sessions(&members, Role::Receiver).await?;
            let mut owner = ctx.pigeon_sessions(&sender, Role::Sender).await?.remove(0);
            // A login on a wiped data dir re-registers: take the ids now.
            let members = ctx.accounts("bfm", args.members, f).await?;
            let create = Body::GroupCreate(pb::GroupCreateRequest {
                name: format!("fanout {}", ctx.run_tag),
                member_user_ids: members.iter().map(|m| m.id).collect(),
                member_usernames: Vec::new(),
            });
            let info = match pigeon::request(&mut owner.frames, 1, create).await? {
                Body::Group(g) => g.group.ok_or_else(|| anyhow!("no group in the answer"))?,
                other => bail!("group create: {other:?}"),
            };
            f.add("large_group", f64::from(u8::from(info.large)));
            let receivers = receivers
                .into_iter()
                .map(|s| Receiver::Pigeon(s, info.group_id))
                .collect();
            let tag = format!("{}-fanout", ctx.run_tag);
            let sender = pigeon::Sender::start(owner.frames, args.window, tag);
            Ok((
                receivers,
                Sending::Pigeon {
                    sender,
                    group: info.group_id,
                },
            ))
        }
        Side::Mosquitto => {
            let conns: Vec<Result<mqtt::Conn>> =
                futures_util::stream::iter((0..args.members).map(|i| async move {
                    let id = format!("pb-f{i}");
                    // Drop whatever an earlier run left in the stored session,
                    // then open a persistent one.
                    drop(mqtt::connect(&ctx.dialer, ctx.mqtt, id.clone(), true).await?);
                    let (mut conn, _, _) = mqtt::connect(&ctx.dialer, ctx.mqtt, id, false).await?;
                    mqtt::subscribe(&mut conn, TOPIC.into()).await?;
                    Ok(conn)
                }))
                .buffered(ctx.connect_concurrency.max(1))
                .collect()
                .await;
            let receivers = conns
                .into_iter()
                .map(|c| c.map(|c| Receiver::Mqtt(AnyReceiver::Mqtt(c))))
                .collect::<Result<_>>()?;
            let (conn, _, _) = mqtt::connect(&ctx.dialer, ctx.mqtt, "pb-fs".into(), true).await?;
            Ok((
                receivers,
                Sending::Mqtt(mqtt::Sender::start(conn, args.window)),
            ))
        }
    }
}

/// One online member.
enum Receiver {
    Pigeon(Session, u64),
    Mqtt(AnyReceiver),
}

impl Receiver {
    async fn run(self, mut recorder: Recorder, until: ReceiveUntil) -> Result<Recorder> {
        match self {
            Receiver::Pigeon(session, group) => {
                receive_group(session, group, &mut recorder, until).await?;
                Ok(recorder)
            }
            Receiver::Mqtt(r) => r.run(recorder, until).await,
        }
    }
}

/// Receive the group's chat messages until `until`: inbox pulls on Notify
/// (a small group fans out into queues), timeline pulls on GroupNotify (a
/// large group), unless the notify carries the entries inline and they
/// continue the cursor; those are acknowledged within `ACK_DELAY` (an Ack
/// for the inbox, a GroupPull for the timeline). One request in flight at
/// a time, as a phone would.
async fn receive_group(
    session: Session,
    group: u64,
    recorder: &mut Recorder,
    until: ReceiveUntil,
) -> Result<()> {
    let Session {
        mut frames, login, ..
    } = session;
    let (mut inbox_cursor, mut inbox_max) = (login.acked_seq, login.max_seq);
    let (mut timeline_cursor, mut timeline_max) = (0u64, 0u64);
    // What the server was told: pulls' after_seq and acks.
    let (mut inbox_told, mut timeline_told) = (inbox_cursor, 0u64);
    let mut ack_due: Option<tokio::time::Instant> = None;
    let mut next_id = 2u64;
    let mut waiting = false;
    let deadline = tokio::time::Instant::from_std(until.deadline);
    let beat = Duration::from_millis(u64::from(login.heartbeat_interval_ms.max(1000)));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let done = |r: &Recorder| until.bodies.is_some_and(|n| r.received >= n);
    let mine = |m: &pb::Message| m.group_id == group && m.kind == pb::MessageKind::Chat as i32;
    // Bounded by the deadline, the stop token and the stream's end.
    while !done(recorder) {
        let acking = !waiting && ack_due.is_some_and(|due| due <= tokio::time::Instant::now());
        if acking {
            ack_due = None;
        }
        if !waiting {
            let request = if acking && inbox_cursor > inbox_told {
                Some(Body::Ack(pb::AckRequest { seq: inbox_cursor }))
            } else if acking && timeline_cursor > timeline_told {
                Some(Body::GroupPull(pb::GroupPullRequest {
                    group_id: group,
                    after_seq: timeline_cursor,
                    limit: 1000,
                }))
            } else if inbox_max > inbox_cursor {
                Some(Body::Pull(pb::PullRequest {
                    after_seq: inbox_cursor,
                    limit: 1000,
                }))
            } else if timeline_max > timeline_cursor {
                Some(Body::GroupPull(pb::GroupPullRequest {
                    group_id: group,
                    after_seq: timeline_cursor,
                    limit: 1000,
                }))
            } else {
                None
            };
            if let Some(body) = request {
                match &body {
                    Body::Pull(p) => inbox_told = inbox_told.max(p.after_seq),
                    Body::Ack(a) => inbox_told = inbox_told.max(a.seq),
                    Body::GroupPull(p) => timeline_told = timeline_told.max(p.after_seq),
                    _ => {}
                }
                frames.send(Envelope::new(next_id, body)).await?;
                next_id += 1;
                waiting = true;
            }
        }
        let untold = inbox_cursor > inbox_told || timeline_cursor > timeline_told;
        if untold && ack_due.is_none() {
            ack_due = Some(tokio::time::Instant::now() + pigeon::ACK_DELAY);
        }
        let ack_at = ack_due.filter(|_| !waiting);
        let frame = tokio::select! {
            _ = until.stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = heartbeat.tick() => {
                let ping = Body::Ping(pb::Ping { client_time_ms: 0 });
                frames.send(Envelope::new(next_id, ping)).await?;
                next_id += 1;
                continue;
            }
            _ = tokio::time::sleep_until(ack_at.unwrap_or(deadline)), if ack_at.is_some() => continue,
            frame = frames.next() => frame,
        };
        let frame = frame.ok_or_else(|| anyhow!("the server closed a receiving connection"))??;
        match frame.body {
            Some(Body::Notify(n)) => {
                inbox_max = inbox_max.max(n.max_seq);
                if !waiting {
                    inbox_cursor = pigeon::take_inline(inbox_cursor, &n.messages, &mine, recorder);
                }
            }
            Some(Body::GroupNotify(n)) if n.group_id == group => {
                timeline_max = timeline_max.max(n.max_seq);
                // A cursor of 0 has not read the timeline's start yet.
                if !waiting && timeline_cursor > 0 {
                    timeline_cursor =
                        pigeon::take_inline(timeline_cursor, &n.messages, &mine, recorder);
                }
            }
            Some(Body::Acked(_)) => waiting = false,
            Some(Body::GroupNotify(_)) | Some(Body::Pong(_)) => {}
            Some(Body::Pulled(page)) => {
                waiting = false;
                for message in page.messages.iter().filter(|m| mine(m)) {
                    recorder.on_body(&message.content);
                }
                if let Some(last) = page.messages.last() {
                    inbox_cursor = inbox_cursor.max(last.seq);
                } else {
                    inbox_cursor = inbox_cursor.max(page.max_seq);
                }
            }
            Some(Body::GroupPulled(page)) => {
                waiting = false;
                for message in page.messages.iter().filter(|m| mine(m)) {
                    recorder.on_body(&message.content);
                }
                if let Some(last) = page.messages.last() {
                    timeline_cursor = timeline_cursor.max(last.seq);
                } else {
                    timeline_cursor = timeline_cursor.max(page.max_seq);
                }
            }
            Some(Body::Kick(k)) => bail!("kicked: {}", k.message),
            Some(Body::Error(e)) => bail!("error on a receiving connection: {}", e.message),
            other => bail!("unexpected frame on a receiving connection: {other:?}"),
        }
    }
    Ok(())
}

async fn run(ctx: &Ctx, side: Side, args: &FanoutArgs) -> Result<Figures> {
    let mut f = Figures::default();
    let (receivers, sending) = setup(ctx, side, args, &mut f).await?;
    let meter = Meter::start(ctx.pid(side))?;
    let started = Instant::now();
    let deadline = ctx.deadline(Duration::from_secs_f64(args.secs));
    let stop = CancellationToken::new();
    let delivered = super::counter();
    let tasks: Vec<_> = receivers
        .into_iter()
        .map(|r| {
            let until = ReceiveUntil {
                stop: stop.clone(),
                deadline,
                bodies: Some(args.messages),
            };
            let recorder = Recorder::counting(true, started, &delivered);
            tokio::spawn(async move {
                let record = r.run(recorder, until).await?;
                anyhow::Ok((record, Instant::now()))
            })
        })
        .collect();
    let (messages, size) = (args.messages, args.size);
    let answered = match sending {
        Sending::Pigeon { mut sender, group } => {
            for n in 0..messages {
                sender
                    .send_group(group, payload::make(size, Instant::now(), 0, n))
                    .await?;
            }
            let (answered, refused) = sender.finish(deadline).await?;
            if refused > 0 {
                bail!("{refused} group sends refused");
            }
            answered
        }
        Sending::Mqtt(mut sender) => {
            for n in 0..messages {
                sender
                    .send(TOPIC.into(), payload::make(size, Instant::now(), 0, n))
                    .await?;
            }
            sender.finish(deadline).await?
        }
    };
    let sent_s = started.elapsed().as_secs_f64();
    let mut all = Recorder::new(false);
    let mut last = started;
    let mut short = 0usize;
    let mut duplicates = 0u64;
    for task in tasks {
        let (record, done) = task.await??;
        if record.distinct() != Some(messages as usize) {
            short += 1;
        }
        duplicates += record.duplicates;
        last = last.max(done);
        all.merge(record);
    }
    stop.cancel();
    let total_s = (last - started).as_secs_f64();
    meter.finish(&mut f, Some(("deliveries", all.delivered)))?;
    f.add("receivers", args.members as f64);
    f.add("messages_answered", answered as f64);
    f.add("send_all_s", sent_s);
    f.add("last_delivery_s", total_s);
    f.add("delivered", all.delivered as f64);
    f.add("deliveries_per_s", all.delivered as f64 / total_s.max(1e-9));
    f.add("duplicates", duplicates as f64);
    f.add("receivers_short", short as f64);
    f.latency("send_to_receive", &Percentiles::of(&all.latency()));
    Ok(f)
}

/// Fan-out on every side, side by side.
pub async fn fanout(ctx: &Ctx, sides: &[Side], args: &FanoutArgs) -> Result<Outcome> {
    let mut out = Outcome::new(
        "fanout",
        json!({"members": args.members, "messages": args.messages, "size": args.size, "window": args.window}),
    );
    for &side in sides {
        eprintln!("[fanout] {}", side.name());
        out.sides
            .push((side.name().into(), run(ctx, side, args).await?));
    }
    out.notes.push(
        "deliveries_per_s = receivers x messages over the time from the first send to the last delivery; pigeon: durable (fsync) sends to a group created for the run (large above the server's large_group_threshold: one timeline entry per send, members pull on GroupNotify); mosquitto: one shared topic, QoS 1".into(),
    );
    Ok(out)
}
