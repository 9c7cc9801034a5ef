//! The handoff pipeline on a 1 KiB LLM extraction: a schema of 10
//! properties, a 10-field mapping, JSON out and CSV out. `Table::admit` is
//! what ingress runs (parse, schema, routes, category, transform, format),
//! `Table::render` what each delivery attempt runs; both on one core.
//! `Runner` adds the worker-process round trip the server pays for its
//! limits (this binary doubles as the worker, as `tidegate` does).

use std::process::ExitCode;

use criterion::{criterion_group, Criterion, Throughput};
use serde_json::json;
use tidegate::handoff::{CsvLayout, Format, Route, Runner, Spec, Specs, Table};

// As in the tidegate binary, whose worker processes run these programs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = r#"{
  id: .request_id, name: .person.name, email: .person.email, phone: .person.phone,
  company: .company.name, title: .person.title, country: .company.country,
  score: .confidence, kind: .document_type, summary: .summary
}"#;

fn schema() -> serde_json::Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["request_id", "person", "company", "confidence", "document_type"],
        "properties": {
            "request_id": {"type": "string"},
            "person": {"type": "object", "required": ["name", "email"]},
            "company": {"type": "object"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "document_type": {"enum": ["business_card", "email_signature", "web_form"]},
            "summary": {"type": "string", "maxLength": 2000},
            "model": {"type": "string"},
            "tokens": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "reasoning": {"type": "string"}
        }
    })
}

fn spec(format: Format) -> Spec {
    Spec {
        schema: Some(schema()),
        transform: Some(MAPPING.into()),
        csv: (format == Format::Csv).then(|| CsvLayout {
            columns: [
                "id", "name", "email", "phone", "company", "title", "country", "score", "kind", "summary",
            ]
            .map(String::from)
            .to_vec(),
            header: true,
            delimiter: b',',
        }),
        format,
        category: Some(".document_type".into()),
        // One route that does not match: its predicate is evaluated.
        routes: vec![Route {
            when: ".confidence < 0.5".into(),
            to: "csv".into(),
        }],
    }
}

/// A body of about 1 KiB.
fn body() -> Vec<u8> {
    let b = serde_json::to_vec(&json!({
        "request_id": "req-7d1f2c3a-9b1e-4c55-8f0e-2b6f1b2b9a10",
        "document_type": "business_card",
        "confidence": 0.93,
        "model": "extractor-v4",
        "tokens": 812,
        "tags": ["lead", "emea", "conference"],
        "person": {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000",
                   "title": "Head of Analytical Engines"},
        "company": {"name": "Analytical Engines Ltd", "country": "GB", "size": 120},
        "summary": "Met at the Difference Engine conference; interested in a pilot of the extraction flow for inbound business cards, with a follow-up call next week about pricing and volumes.",
        "reasoning": "The card shows a name, title, company and e-mail in a standard layout; the phone number is printed in the international format; the company name matches the logo text. Confidence is high because every field was read without ambiguity and the e-mail domain matches the company's web address printed below the logo, which was also checked against the conference attendee list and the public company register for the same country, GB."
    }))
    .unwrap();
    assert!((1000..=1100).contains(&b.len()), "body is {} bytes", b.len());
    b
}

fn specs() -> Specs {
    vec![("json".into(), spec(Format::Json)), ("csv".into(), spec(Format::Csv))]
}

fn pipeline(c: &mut Criterion) {
    let table = Table::compile(&specs()).unwrap();
    let body = body();
    let mut g = c.benchmark_group("handoff");
    g.throughput(Throughput::Elements(1));
    for dest in ["json", "csv"] {
        let a = table.admit(dest, &body).unwrap();
        assert!(a.rendered.is_some() && a.routed_from.is_none());
        g.bench_function(format!("admit_1KiB_to_{dest}"), |b| {
            b.iter(|| table.admit(dest, &body).unwrap())
        });
        g.bench_function(format!("render_1KiB_to_{dest}"), |b| {
            b.iter(|| table.render(dest, &body).unwrap())
        });
    }
    g.finish();
}

/// The jq engine alone on the same input, for where the time goes: the
/// 10-field mapping, and a 10-key object of constants (jaq builds an
/// object as a right-nested sum of one-key objects, each sum copying into
/// the smaller one).
fn engine(c: &mut Criterion) {
    let input = tidegate::handoff::jq::from_json(&serde_json::from_slice(&body()).unwrap());
    let mut g = c.benchmark_group("jq");
    g.throughput(Throughput::Elements(1));
    for (name, code) in [
        ("mapping_10_fields", MAPPING),
        ("one_path", ".person.name"),
        ("constant_object_10_keys", "{a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9,j:10}"),
    ] {
        let p = tidegate::handoff::jq::Program::compile(code).unwrap();
        g.bench_function(name, |b| b.iter(|| p.first(input.clone()).unwrap()));
    }
    g.finish();
}

/// The same admit through a worker process, one call at a time: the cost
/// of the sandbox per message at ingress.
fn sandboxed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runner = Runner::new(&specs());
    let body = body();
    rt.block_on(runner.admit("json", &body)).unwrap();
    let mut g = c.benchmark_group("handoff_sandboxed");
    g.throughput(Throughput::Elements(1));
    g.bench_function("admit_1KiB_to_json", |b| {
        b.iter(|| rt.block_on(runner.admit("json", &body)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, pipeline, engine, sandboxed);

fn main() -> ExitCode {
    // The runner starts this same binary as its worker.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == tidegate::handoff::WORKER_ARG)
    {
        return tidegate::handoff::worker_main();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    ExitCode::SUCCESS
}
