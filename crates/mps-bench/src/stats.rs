//! Measuring: a lock-free latency histogram, server CPU and memory from `/proc`, and the report.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Nanoseconds since the Unix epoch (the clock both publisher and subscribers read).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Sub-buckets per power of two: values are kept to within 1/128 (under 0.8%).
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-linear histogram of `u64` values that many tasks record into at once.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn index(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as usize + 1) << SUB_BITS) + ((value >> shift) as usize - SUB)
}

/// The middle of the values that fall into bucket `index`.
fn value_at(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = (index >> SUB_BITS) - 1;
    let mantissa = (index & (SUB - 1)) + SUB;
    ((mantissa as u64) << shift) + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn record(&self, value: u64) {
        self.buckets[index(value)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return value_at(i).min(self.max());
            }
        }
        self.max()
    }
}

/// CPU ticks per second of `/proc/PID/stat`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU time and resident memory of a set of processes, added up.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

/// utime+stime (seconds) and VmRSS (KiB) of one process.
pub fn sample_pid(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("reading /proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        cpu_s: (utime + stime) as f64 / clock_ticks(),
        rss_kib,
    })
}

/// The sum over `pids`; `None` when no pid was given.
pub fn sample(pids: &[u32]) -> anyhow::Result<Option<ProcSample>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = ProcSample::default();
    for &pid in pids {
        let s = sample_pid(pid)?;
        total.cpu_s += s.cpu_s;
        total.rss_kib += s.rss_kib;
    }
    Ok(Some(total))
}

/// This process's own CPU seconds (the load generator's share of the machine).
pub fn own_cpu_s() -> f64 {
    sample_pid(std::process::id())
        .map(|s| s.cpu_s)
        .unwrap_or(0.0)
}

/// What a run found: named figures in order, printed as a table or as one JSON object.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, Value, &'static str)>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(mode: &str) -> Report {
        let mut report = Report::default();
        report.text("mode", mode);
        report
    }

    pub fn text(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.rows
            .push((key.to_owned(), Value::String(value.into()), ""));
        self
    }

    pub fn int(&mut self, key: &str, value: u64, unit: &'static str) -> &mut Self {
        self.rows.push((key.to_owned(), Value::from(value), unit));
        self
    }

    pub fn num(&mut self, key: &str, value: f64, unit: &'static str) -> &mut Self {
        let rounded = if value.is_finite() {
            (value * 1000.0).round() / 1000.0
        } else {
            0.0
        };
        self.rows.push((key.to_owned(), Value::from(rounded), unit));
        self
    }

    /// A line printed under the table (in JSON: `notes`).
    pub fn note(&mut self, note: impl Into<String>) -> &mut Self {
        self.notes.push(note.into());
        self
    }

    /// Latency percentiles of `hist` (recorded in ns), as milliseconds `PREFIX_p50_ms`...
    pub fn latency(&mut self, prefix: &str, hist: &Histogram) -> &mut Self {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            self.num(
                &format!("{prefix}_{name}_ms"),
                hist.quantile(q) as f64 / 1e6,
                "ms",
            );
        }
        self.num(&format!("{prefix}_max_ms"), hist.max() as f64 / 1e6, "ms")
    }

    /// Server CPU and memory: `before` (nothing connected), `connected`, `after`, with the CPU
    /// spent between `cpu_from` and `cpu_to` divided over `work` units (`per`).
    pub fn server(
        &mut self,
        before: Option<ProcSample>,
        connected: Option<ProcSample>,
        after: Option<ProcSample>,
        cpu: Option<(ProcSample, ProcSample)>,
        work: u64,
        per: &str,
    ) -> &mut Self {
        if let Some((from, to)) = cpu {
            let spent = (to.cpu_s - from.cpu_s).max(0.0);
            self.num("server_cpu_s", spent, "s");
            if work > 0 {
                self.num(
                    &format!("server_cpu_us_per_{per}"),
                    spent * 1e6 / work as f64,
                    "µs",
                );
            }
        }
        for (key, sample) in [
            ("server_rss_before_kib", before),
            ("server_rss_connected_kib", connected),
            ("server_rss_after_kib", after),
        ] {
            if let Some(s) = sample {
                self.int(key, s.rss_kib, "KiB");
            }
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.rows
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v)
    }

    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        for (key, value, _) in &self.rows {
            map.insert(key.clone(), value.clone());
        }
        if !self.notes.is_empty() {
            map.insert("notes".into(), Value::from(self.notes.clone()));
        }
        Value::Object(map)
    }

    pub fn to_table(&self) -> String {
        let width = self.rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value, unit) in &self.rows {
            let shown = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_u64() => group(n.as_u64().unwrap_or(0)),
                other => other.to_string(),
            };
            let _ = writeln!(out, "{key:<width$}  {shown} {unit}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
        } else {
            print!("{}", self.to_table());
        }
    }
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_close() {
        let mut last = 0;
        for v in (0..2_000_000u64)
            .step_by(37)
            .chain([u64::MAX / 3, u64::MAX])
        {
            let i = index(v);
            assert!(i < BUCKETS);
            assert!(i >= last, "index falls at {v}");
            last = i;
            let back = value_at(i);
            let error = back.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(error <= 1.0 / 128.0, "{v} came back as {back}");
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.01, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.01, "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn reads_this_process() {
        let s = sample_pid(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }

    #[test]
    fn groups_digits() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }
}
