//! Results: named figures per side (pigeon, mosquitto, a baseline),
//! printed as a markdown table with a pigeon / other ratio column and as
//! one JSON line on stdout. Progress goes to stderr.

use serde_json::{json, Map, Value};

use crate::payload::Percentiles;

/// Figures of one side, in the order they were added.
#[derive(Debug, Default, Clone)]
pub struct Figures(pub Vec<(String, f64)>);

impl Figures {
    /// Add one figure; the name carries its unit (`_per_s`, `_ms`, `_kib`).
    pub fn add(&mut self, name: impl Into<String>, value: f64) {
        self.0.push((name.into(), value));
    }

    /// Add `value` to the figure `name` (created at 0 if missing).
    pub fn accumulate(&mut self, name: &str, value: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v += value,
            None => self.add(name, value),
        }
    }

    /// Add the percentiles of a latency histogram under `prefix`.
    pub fn latency(&mut self, prefix: &str, p: &Percentiles) {
        self.add(format!("{prefix}_count"), p.count as f64);
        self.add(format!("{prefix}_p50_ms"), p.p50_ms);
        self.add(format!("{prefix}_p90_ms"), p.p90_ms);
        self.add(format!("{prefix}_p99_ms"), p.p99_ms);
        self.add(format!("{prefix}_p99.9_ms"), p.p999_ms);
        self.add(format!("{prefix}_max_ms"), p.max_ms);
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    fn to_json(&self) -> Value {
        let map: Map<String, Value> = self
            .0
            .iter()
            .map(|(n, v)| (n.clone(), json!(round(*v))))
            .collect();
        Value::Object(map)
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 1000.0).round() / 1000.0
    }
}

/// One workload's outcome.
#[derive(Debug)]
pub struct Outcome {
    /// Subcommand name.
    pub workload: &'static str,
    /// Its parameters, as given.
    pub params: Value,
    /// (side, figures), pigeon first.
    pub sides: Vec<(String, Figures)>,
    /// Caveats worth printing with the numbers.
    pub notes: Vec<String>,
}

impl Outcome {
    /// An outcome without results yet.
    pub fn new(workload: &'static str, params: Value) -> Outcome {
        Outcome {
            workload,
            params,
            sides: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Print the table (with ratios against the first side) and one JSON line.
    pub fn print(&self) {
        println!();
        println!("## {} {}", self.workload, self.params);
        println!();
        let names: Vec<&str> = self.sides.iter().map(|(s, _)| s.as_str()).collect();
        let mut header = format!("| figure | {} |", names.join(" | "));
        let mut rule = format!("|---|{}", "--:|".repeat(names.len()));
        for other in names.iter().skip(1) {
            header.push_str(&format!(" {} / {other} |", names[0]));
            rule.push_str("--:|");
        }
        println!("{header}");
        println!("{rule}");
        let mut rows: Vec<&str> = Vec::new();
        for (_, figures) in &self.sides {
            for (name, _) in &figures.0 {
                if !rows.contains(&name.as_str()) {
                    rows.push(name);
                }
            }
        }
        for row in rows {
            let values: Vec<Option<f64>> = self.sides.iter().map(|(_, f)| f.get(row)).collect();
            let cells: Vec<String> = values
                .iter()
                .map(|v| v.map_or("–".to_owned(), fmt))
                .collect();
            let mut line = format!("| {row} | {} |", cells.join(" | "));
            for other in values.iter().skip(1) {
                let ratio = match (values[0], other) {
                    (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}", a / b),
                    _ => "–".to_owned(),
                };
                line.push_str(&format!(" {ratio} |"));
            }
            println!("{line}");
        }
        for note in &self.notes {
            println!();
            println!("note: {note}");
        }
        println!();
        println!("{}", self.to_json());
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> Value {
        let mut sides = Map::new();
        for (side, figures) in &self.sides {
            sides.insert(side.clone(), figures.to_json());
        }
        let mut ratios = Map::new();
        if let Some(((first, base), rest)) = self.sides.split_first() {
            for (other, figures) in rest {
                let mut r = Map::new();
                for (name, v) in &base.0 {
                    if let Some(o) = figures.get(name).filter(|o| *o != 0.0) {
                        r.insert(name.clone(), json!(round(v / o)));
                    }
                }
                ratios.insert(format!("{first}/{other}"), Value::Object(r));
            }
        }
        json!({
            "workload": self.workload,
            "params": self.params,
            "results": sides,
            "ratios": ratios,
            "notes": self.notes,
        })
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
