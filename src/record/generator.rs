//! Deterministic generator of realistic log records (used by `data-generator`, the
//! benchmarks and the tests).

use std::io::Write;

use chrono::{Duration, TimeZone, Utc};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

const CAPABILITIES: &[&str] = &[
    "payments",
    "lending",
    "identity",
    "marketing",
    "logistics",
    "insurance",
];
const DOMAINS: &[&str] = &["cards", "accounts", "onboarding", "risk"];
const SERVICES: &[&str] = &["api", "worker", "gateway"];
const APPS: &[&str] = &["web", "mobile"];
const LEVELS: &[(&str, u32)] = &[
    ("info", 60),
    ("debug", 15),
    ("warning", 12),
    ("error", 10),
    ("critical", 3),
];
const WORDS: &[&str] = &[
    "request",
    "processed",
    "user",
    "account",
    "payment",
    "timeout",
    "retry",
    "cache",
    "miss",
    "database",
    "query",
    "completed",
    "failed",
    "token",
    "validated",
    "session",
    "started",
    "order",
    "shipment",
    "created",
    "updated",
    "deleted",
    "connection",
    "pool",
    "exhausted",
    "latency",
    "threshold",
    "exceeded",
    "queue",
    "message",
    "consumed",
    "published",
    "batch",
    "job",
    "scheduled",
    "ação",
    "concluída",
    "usuário",
    "überprüft",
    "データ",
    "処理",
    "完了",
    "🚀",
    "✓",
    "naïve",
    "café",
];
const RESOURCES: &[&str] = &["k8s", "vm", "serverless", "saas", "cloudservice", "vendor"];
const CLOUDS: &[&str] = &["aws", "gcp", "azure", "oci"];
const REGIONS: &[&str] = &[
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "sa-east-1",
    "ap-northeast-1",
];
const LOGGERS: &[&str] = &[
    "com.acme.payments.CardService",
    "com.acme.http.RequestLogger",
    "app.workers.queue",
    "django.request",
    "org.hibernate.SQL",
];
const TAGS: &[&str] = &[
    "prod", "canary", "blue", "green", "pci", "gdpr", "beta", "internal",
];

/// Produces one record after another; the same seed gives the same sequence.
pub struct Generator {
    rng: ChaCha8Rng,
    n: u64,
}

impl Generator {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            n: 0,
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn hex(&mut self, len: usize) -> String {
        const HEX: &[u8] = b"0123456789abcdef";
        (0..len)
            .map(|_| HEX[self.rng.random_range(0..16)] as char)
            .collect()
    }

    fn uuid(&mut self) -> String {
        format!(
            "{}-{}-{}-{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(4),
            self.hex(4),
            self.hex(12)
        )
    }

    fn sentence(&mut self, min: usize, max: usize) -> String {
        let target = self.rng.random_range(min..max);
        let mut s = String::with_capacity(target + 16);
        while s.len() < target {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(self.pick(WORDS));
        }
        s
    }

    fn level(&mut self) -> &'static str {
        let total: u32 = LEVELS.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        for (name, w) in LEVELS {
            if roll < *w {
                return name;
            }
            roll -= w;
        }
        "info"
    }

    fn stack_trace(&mut self) -> String {
        let frames = self.rng.random_range(4..14);
        let mut s = format!("java.lang.IllegalStateException: {}", self.sentence(20, 60));
        for _ in 0..frames {
            let logger = self.pick(LOGGERS);
            let line = self.rng.random_range(10..900);
            s.push_str(&format!(
                "\n\tat {logger}.handle({}.java:{line})",
                logger.rsplit('.').next().unwrap_or("X")
            ));
        }
        s
    }

    /// The next record as a JSON value.
    pub fn next_value(&mut self) -> Value {
        self.n += 1;
        let base = Utc
            .with_ymd_and_hms(2024, 5, 1, 8, 0, 0)
            .single()
            .unwrap_or_default();
        let t =
            base + Duration::milliseconds((self.n * 37) as i64 + self.rng.random_range(0..1000));
        let level = self.level();
        let mut m = Map::new();
        m.insert(
            "time".into(),
            json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        m.insert("level".into(), json!(level));
        for key in ["correlation_id", "session_id", "message_id"] {
            if self.rng.random_bool(0.8) {
                let id = self.uuid();
                m.insert(key.into(), json!(id));
            }
        }
        for key in ["person_id", "user_id", "device_id"] {
            if self.rng.random_bool(0.4) {
                let id = self.hex(24);
                m.insert(key.into(), json!(id));
            }
        }
        let msg = self.sentence(40, 700);
        m.insert("message".into(), json!(msg));
        m.insert("business_capability".into(), json!(self.pick(CAPABILITIES)));
        m.insert("business_domain".into(), json!(self.pick(DOMAINS)));
        m.insert("business_service".into(), json!(self.pick(SERVICES)));
        m.insert("application_service".into(), json!(self.pick(APPS)));
        if self.rng.random_bool(0.3) {
            m.insert("audit".into(), json!(self.rng.random_bool(0.5)));
        }
        m.insert("resource_type".into(), json!(self.pick(RESOURCES)));
        m.insert("cloud_provider".into(), json!(self.pick(CLOUDS)));
        if self.rng.random_bool(0.6) {
            let src = format!("src-{}", self.hex(6));
            m.insert("source_id".into(), json!(src));
        }
        if self.rng.random_bool(0.7) {
            let code = [200, 201, 204, 400, 401, 404, 500, 503][self.rng.random_range(0..8)];
            // Real logs mix types: a number in one record, a string in the next.
            let v = if self.rng.random_bool(0.5) {
                json!(code)
            } else {
                json!(code.to_string())
            };
            m.insert("http_response".into(), v);
        }
        if matches!(level, "error" | "critical") {
            let code = format!("E{}", self.rng.random_range(1000..9999));
            m.insert("error_code".into(), json!(code));
            if self.rng.random_bool(0.7) {
                let st = self.stack_trace();
                m.insert("stack_trace".into(), json!(st));
            }
        }
        if self.rng.random_bool(0.6) {
            let ms = self.rng.random_range(0.1..5000.0f64);
            let v = if self.rng.random_bool(0.5) {
                json!((ms * 1000.0).round() / 1000.0)
            } else {
                json!(format!("{ms:.3}ms"))
            };
            m.insert("duration".into(), v);
        }
        if self.rng.random_bool(0.5) {
            let n = self.rng.random_range(1..4);
            let ips: Vec<String> = (0..n)
                .map(|_| {
                    format!(
                        "10.{}.{}.{}",
                        self.rng.random_range(0..255),
                        self.rng.random_range(0..255),
                        self.rng.random_range(1..255)
                    )
                })
                .collect();
            m.insert("trace_ip".into(), json!(ips));
        }
        let region = self.pick(REGIONS);
        m.insert("region".into(), json!(region));
        let az = format!("{region}{}", ["a", "b", "c"][self.rng.random_range(0..3)]);
        m.insert("az".into(), json!(az));
        if self.rng.random_bool(0.6) {
            let n = self.rng.random_range(0..4);
            let tags: Vec<&str> = (0..n).map(|_| self.pick(TAGS)).collect();
            m.insert("tags".into(), json!(tags));
        }
        if self.rng.random_bool(0.7) {
            let mut args = Map::new();
            for i in 0..self.rng.random_range(1..6) {
                let v = self.sentence(5, 40);
                args.insert(format!("arg{i}"), json!(v));
            }
            m.insert("args".into(), Value::Object(args));
        }
        if self.rng.random_bool(0.2) {
            let tmr = format!("tmr-{}", self.uuid());
            m.insert("transaction_message_reference".into(), json!(tmr));
        }
        if self.rng.random_bool(0.3) {
            m.insert("ttl".into(), json!(self.rng.random_range(1..365)));
        }
        if self.rng.random_bool(0.3) {
            m.insert("auto_index".into(), json!(self.rng.random_bool(0.5)));
        }
        m.insert("logger_name".into(), json!(self.pick(LOGGERS)));
        let thread = format!("worker-{}", self.rng.random_range(0..32));
        m.insert("thread_name".into(), json!(thread));
        if self.rng.random_bool(0.3) {
            m.insert(
                "customer_tier".into(),
                json!(["gold", "silver", "bronze"][self.rng.random_range(0..3)]),
            );
        }
        if self.rng.random_bool(0.2) {
            m.insert("retry".into(), json!(self.rng.random_range(0..5)));
        }
        if self.rng.random_bool(0.1) {
            m.insert(
                "context".into(),
                json!({"pod": format!("pod-{}", self.hex(5)), "labels": {"team": "core"}}),
            );
        }
        Value::Object(m)
    }

    /// Writes the next record as one line of compact JSON (no newline).
    pub fn write_record(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let v = self.next_value();
        serde_json::to_writer(out, &v).map_err(std::io::Error::other)
    }

    /// The next record as compact JSON text.
    pub fn next_line(&mut self) -> String {
        self.next_value().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_for_a_seed() {
        let a: Vec<String> = (0..5)
            .map({
                let mut g = Generator::new(7);
                move |_| g.next_line()
            })
            .collect();
        let b: Vec<String> = (0..5)
            .map({
                let mut g = Generator::new(7);
                move |_| g.next_line()
            })
            .collect();
        assert_eq!(a, b);
        let mut other = Generator::new(8);
        assert_ne!(a[0], other.next_line());
    }

    #[test]
    fn records_decode_and_vary() {
        let mut g = Generator::new(1);
        let mut keys = std::collections::HashSet::new();
        let mut with_stack = 0;
        for _ in 0..2000 {
            let line = g.next_line();
            let log = crate::record::decode_json_line(&line, || "gen".into()).expect("decodes");
            keys.insert(log.partition_key("unknown"));
            with_stack += usize::from(log.stack_trace.is_some());
        }
        assert!(keys.len() > 50, "{}", keys.len());
        assert!(with_stack > 50);
    }
}
