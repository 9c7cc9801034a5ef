//! Durable append throughput of the journal with group commit: 1 KiB
//! messages from 1 and from 256 concurrent writers. Each append returns only
//! after its batch is committed and fsync'd. Fsyncs per second and appends
//! per fsync are printed after each group.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidegate::queue::sqlite::Journal;
use tidegate::queue::{now_ms, Appended, Limits, NewMessage, Queue};

const LIMITS: Limits = Limits {
    max_messages: u64::MAX,
    max_bytes: u64::MAX,
    idempotency_window_ms: 86_400_000,
};

fn message(body: &Bytes) -> NewMessage {
    NewMessage {
        dest: "bench".into(),
        method: "POST".into(),
        path: "/v1/events".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.clone(),
        idempotency_key: None,
        wants_reply: false,
        producer: None,
        category: None,
        routed_from: None,
        order_key: None,
        review: None,
        received_at: now_ms(),
    }
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), u64::MAX).unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    let mut group = c.benchmark_group("journal_append_1KiB");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));
    for writers in [1usize, 32, 256] {
        let fsyncs_before = journal.stats().fsyncs.load(Ordering::Relaxed);
        let mut appended = 0u64;
        let mut busy = Duration::ZERO;
        group.bench_function(format!("{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                let per = (iters as usize).div_ceil(writers);
                let start = Instant::now();
                rt.block_on(async {
                    let mut tasks = Vec::with_capacity(writers);
                    for _ in 0..writers {
                        let j = journal.clone();
                        let body = body.clone();
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..per {
                                let r = j.append(std::sync::Arc::new(message(&body)), LIMITS).await.unwrap();
                                assert!(matches!(r, Appended::Stored { .. }));
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
                let elapsed = start.elapsed();
                appended += (per * writers) as u64;
                busy += elapsed;
                // Report per requested iteration, scaled for rounding up.
                elapsed.mul_f64(iters as f64 / (per * writers) as f64)
            })
        });
        let fsyncs = journal.stats().fsyncs.load(Ordering::Relaxed) - fsyncs_before;
        eprintln!(
            "{writers} writers: {:.0} durable appends/s, {:.0} fsyncs/s, {:.1} appends per fsync",
            appended as f64 / busy.as_secs_f64(),
            fsyncs as f64 / busy.as_secs_f64(),
            appended as f64 / fsyncs.max(1) as f64
        );
    }
    group.finish();
    journal.close();
}

criterion_group!(benches, append);
criterion_main!(benches);
