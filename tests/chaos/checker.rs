//! The checker of the crash test: reads every client's log of sends
//! (answered, unknown) and deliveries, and counts the anomalies a message
//! server must never show.

use std::collections::{BTreeMap, HashMap, HashSet};

/// What a client did and saw.
#[derive(Debug, Default, Clone)]
pub struct ClientLog {
    /// The user this client logs in as.
    pub user: String,
    /// Sends whose answer arrived: (recipient, message number).
    pub answered: Vec<(String, u64)>,
    /// Sends whose outcome is unknown (the connection died, the server
    /// refused with a retryable error): (recipient, message number).
    pub unknown: Vec<(String, u64)>,
    /// Deliveries to this user's device in delivery order: (seq, sender,
    /// recipient, message number).
    pub delivered: Vec<Delivery>,
}

/// One message as a device received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The device's queue position.
    pub seq: u64,
    /// Who sent it.
    pub from: String,
    /// Who it was sent to.
    pub to: String,
    /// The sender's message number (unique per sender).
    pub n: u64,
}

/// Counts of each anomaly; a correct server has all zero.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Answered sends, counted once per queue they belong in (sender and
    /// recipient).
    pub checked: u64,
    /// Answered but missing from a queue it belongs in.
    pub lost: u64,
    /// Delivered but never sent.
    pub unexpected: u64,
    /// Delivered out of the order one sender sent to one recipient.
    pub reordered: u64,
    /// A device's seqs not 1, 2, 3, … in delivery order.
    pub seq_gaps_or_rewinds: u64,
    /// The same message delivered twice to one device.
    pub duplicates: u64,
    /// Unknown-outcome sends that were delivered (allowed).
    pub unknown_delivered: u64,
    /// Unknown-outcome sends delivered to one device but missing from the
    /// other queue they belong in: a device was shown a message the server
    /// later forgot (read before it was durable, then lost). Reported, not
    /// part of [`Report::is_clean`]: its harm shows as the anomalies above
    /// when the forgotten message's seq is given to another one.
    pub phantoms: u64,
}

impl Report {
    /// True when nothing anomalous was seen.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.reordered == 0
            && self.seq_gaps_or_rewinds == 0
            && self.duplicates == 0
    }
}

/// Check every log against every other.
pub fn check(logs: &[ClientLog]) -> Report {
    let mut report = Report::default();
    // Every send attempted, by (sender, n) → recipient.
    let mut attempted: HashMap<(&str, u64), &str> = HashMap::new();
    let mut unknown: HashSet<(&str, u64)> = HashSet::new();
    for log in logs {
        for (to, n) in &log.answered {
            attempted.insert((log.user.as_str(), *n), to.as_str());
        }
        for (to, n) in &log.unknown {
            attempted.insert((log.user.as_str(), *n), to.as_str());
            unknown.insert((log.user.as_str(), *n));
        }
    }
    let mut unknown_seen: HashSet<(&str, u64)> = HashSet::new();
    for log in logs {
        check_device(log, &attempted, &mut report);
        for d in &log.delivered {
            if unknown.contains(&(d.from.as_str(), d.n)) {
                unknown_seen.insert((d.from.as_str(), d.n));
            }
        }
    }
    report.unknown_delivered = unknown_seen.len() as u64;
    // Lost: each answered send must be in the recipient's and the sender's queue.
    let delivered: HashMap<&str, HashSet<(&str, u64)>> = logs
        .iter()
        .map(|log| {
            let set = log
                .delivered
                .iter()
                .map(|d| (d.from.as_str(), d.n))
                .collect();
            (log.user.as_str(), set)
        })
        .collect();
    for log in logs {
        for (to, n) in &log.unknown {
            let present = [to.as_str(), log.user.as_str()].map(|holder| {
                delivered
                    .get(holder)
                    .is_some_and(|set| set.contains(&(log.user.as_str(), *n)))
            });
            if present[0] != present[1] {
                report.phantoms += 1;
            }
        }
        for (to, n) in &log.answered {
            for holder in [to.as_str(), log.user.as_str()] {
                report.checked += 1;
                let present = delivered
                    .get(holder)
                    .is_some_and(|set| set.contains(&(log.user.as_str(), *n)));
                if !present {
                    report.lost += 1;
                }
            }
        }
    }
    report
}

fn check_device(log: &ClientLog, attempted: &HashMap<(&str, u64), &str>, report: &mut Report) {
    let mut seen = HashSet::new();
    let mut last_n: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (i, d) in log.delivered.iter().enumerate() {
        if d.seq != i as u64 + 1 {
            report.seq_gaps_or_rewinds += 1;
        }
        if !seen.insert((d.from.as_str(), d.n)) {
            report.duplicates += 1;
            continue;
        }
        match attempted.get(&(d.from.as_str(), d.n)) {
            Some(to) if *to == d.to => {}
            _ => report.unexpected += 1,
        }
        let last = last_n.entry((d.from.as_str(), d.to.as_str())).or_default();
        if d.n <= *last {
            report.reordered += 1;
        }
        *last = d.n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64, from: &str, to: &str, n: u64) -> Delivery {
        Delivery {
            seq,
            from: from.into(),
            to: to.into(),
            n,
        }
    }

    fn logs() -> Vec<ClientLog> {
        let a = ClientLog {
            user: "a".into(),
            answered: vec![("b".into(), 1), ("b".into(), 2)],
            unknown: vec![("b".into(), 3)],
            delivered: vec![delivery(1, "a", "b", 1), delivery(2, "a", "b", 2)],
        };
        let b = ClientLog {
            user: "b".into(),
            delivered: vec![delivery(1, "a", "b", 1), delivery(2, "a", "b", 2)],
            ..Default::default()
        };
        vec![a, b]
    }

    #[test]
    fn a_correct_history_is_clean() {
        let report = check(&logs());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.checked, 4);
    }

    #[test]
    fn each_anomaly_is_counted() {
        let mut l = logs();
        l[1].delivered.remove(1); // lost at b
        assert_eq!(check(&l).lost, 1);
        let mut l = logs();
        l[1].delivered.swap(0, 1);
        let r = check(&l);
        assert_eq!((r.reordered, r.seq_gaps_or_rewinds), (1, 2));
        let mut l = logs();
        l[1].delivered.push(delivery(3, "a", "b", 2));
        assert_eq!(check(&l).duplicates, 1);
        let mut l = logs();
        l[1].delivered.push(delivery(3, "a", "b", 9));
        assert_eq!(check(&l).unexpected, 1);
        let mut l = logs();
        l[1].delivered.push(delivery(3, "a", "b", 3));
        let r = check(&l);
        assert!(r.is_clean());
        assert_eq!((r.unknown_delivered, r.phantoms), (1, 1));
        l[0].delivered.push(delivery(3, "a", "b", 3));
        assert_eq!(check(&l).phantoms, 0);
    }
}
