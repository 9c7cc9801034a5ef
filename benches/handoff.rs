//! The handoff pipeline on a 1 KiB LLM extraction: a schema of 10
//! properties, a 10-field mapping, JSON out and CSV out. `Table::admit` is
//! what ingress runs (parse, schema, routes, category, transform, format),
//! `Table::render` what each delivery attempt runs; both on one core.
//! `Runner` adds the worker-process round trip the server pays for its
//! limits (this binary doubles as the worker, as `tidegate` does).

use std::process::ExitCode;

use criterion::{criterion_group, Criterion, Throughput};
use tidegate::handoff::{CsvLayout, Format, Route, Runner, Spec, Specs, Table};

// As in the tidegate binary, whose worker processes run these programs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The same files as `loadtests/handoff.sh` uses.
const MAPPING: &str = include_str!("../loadtests/handoff/mapping.jq");

fn schema() -> serde_json::Value {
    serde_json::from_str(include_str!("../loadtests/handoff/schema.json")).unwrap()
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
        key: None,
        hold_when: None,
        passthrough: false,
    }
}

/// A body of about 1 KiB: an LLM's contact extraction.
fn body() -> Vec<u8> {
    let b = include_bytes!("../loadtests/handoff/extraction-1k.json").to_vec();
    assert!((1000..=1100).contains(&b.len()), "body is {} bytes", b.len());
    b
}

/// The README's fourth example (map, select, string interpolation:
/// compiled), and the same output from a program outside the compiled
/// subset (a variable, `.[]`), which jq runs; on a 1 KiB meeting summary.
const GENERAL: &str = include_str!("../examples/handoff/activity.jq");
const SANDBOXED: &str = include_str!("../loadtests/handoff/activity-sandboxed.jq");
const MEETING: &[u8] = include_bytes!("../loadtests/handoff/meeting-1k.json");

fn specs() -> Specs {
    let meeting = |program: &str| Spec {
        transform: Some(program.into()),
        category: Some(".account".into()),
        passthrough: false,
        ..Spec::passthrough()
    };
    // The mapping forced through jq (a variable is not compiled): the
    // engine's cost, for comparison in the same run.
    let mut via_jq = spec(Format::Json);
    via_jq.transform = Some(format!("{MAPPING} | . as $m | $m"));
    vec![
        ("json".into(), spec(Format::Json)),
        ("csv".into(), spec(Format::Csv)),
        ("json_via_jq".into(), via_jq),
        ("general".into(), meeting(GENERAL)),
        ("sandboxed".into(), meeting(SANDBOXED)),
    ]
}

fn pipeline(c: &mut Criterion) {
    let table = Table::compile(&specs()).unwrap();
    let body = body();
    let mut g = c.benchmark_group("handoff");
    g.throughput(Throughput::Elements(1));
    for dest in ["json", "csv", "json_via_jq", "general", "sandboxed"] {
        let body = if dest == "general" || dest == "sandboxed" {
            MEETING.to_vec()
        } else {
            body.clone()
        };
        let a = table.admit(dest, &body).unwrap();
        assert!(a.rendered.is_some() && a.routed_from.is_none());
        g.bench_function(format!("admit_1KiB_to_{dest}"), |b| {
            b.iter(|| table.admit(dest, &body).unwrap())
        });
        g.bench_function(format!("render_1KiB_to_{dest}"), |b| {
            b.iter(|| table.render(dest, &body, "").unwrap())
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

/// Admits through the runner, one call at a time: the mapping and the
/// general program (compiled: in place) and the sandboxed one (in a worker
/// process: the sandbox's cost per message at ingress, one round trip).
fn sandboxed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runner = Runner::new(&specs());
    let body = body();
    let mut g = c.benchmark_group("handoff_runner");
    g.throughput(Throughput::Elements(1));
    for dest in ["json", "general", "sandboxed"] {
        let body = if dest == "general" || dest == "sandboxed" {
            MEETING.to_vec()
        } else {
            body.clone()
        };
        rt.block_on(runner.admit(dest, &body)).unwrap();
        g.bench_function(format!("admit_1KiB_to_{dest}"), |b| {
            b.iter(|| rt.block_on(runner.admit(dest, &body)).unwrap())
        });
    }
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
