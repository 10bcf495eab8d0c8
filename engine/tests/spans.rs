//! The engine's tracing spans, as a small layer installed as this test binary's global subscriber records them:
//! a worker runs inside a `worker` span (INFO) naming its model, version, id and device, and its log lines sit in
//! it; a request carries a `queued` span (DEBUG), a child of the caller's span, that follows from the `batch` span
//! (DEBUG) it ran in and holds its queue time, inference time and batch size. Spans of requests and batches at
//! DEBUG are what keeps them free at the default `info` filter, so their level is checked too.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::OnceLock,
};

use ferroserve_engine::{backend::FakeStep, Device, ModelOptions};
use parking_lot::Mutex;
use support::{answer, assert_own_rows, echo, options, policy, start, submit_all, FOREVER};
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    Event, Level, Subscriber,
};
use tracing_subscriber::{
    layer::{Context, SubscriberExt},
    registry::LookupSpan,
    Layer,
};

/// Requests per batch: the delay never ends, so every batch is exactly this size.
const BATCH: u16 = 4;

/// One span as the layer saw it; `parent` and `follows` are indexes into [`Recorded::spans`].
#[derive(Debug, Clone)]
struct SpanSeen {
    name: &'static str,
    level: Level,
    parent: Option<usize>,
    fields: BTreeMap<&'static str, String>,
    follows: Vec<usize>,
}

/// One event: its message and the spans it sat in, innermost first.
#[derive(Debug, Clone)]
struct EventSeen {
    message: String,
    scope: Vec<usize>,
}

#[derive(Debug, Default)]
struct Recorded {
    spans: Vec<SpanSeen>,
    events: Vec<EventSeen>,
}

/// A span's index in [`Recorded::spans`], kept in its extensions: the registry reuses the ids of closed spans.
struct Index(usize);

/// The layer: records every span, field value, `follows_from` link and event.
struct Recorder(&'static Mutex<Recorded>);

/// Field values as text: strings as they are, anything else as its `Debug` (numbers as digits).
struct Fields<'a>(&'a mut BTreeMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

fn index_of<S: Subscriber + for<'a> LookupSpan<'a>>(ctx: &Context<'_, S>, id: &Id) -> Option<usize> {
    ctx.span(id)?.extensions().get::<Index>().map(|i| i.0)
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("the registry knows a new span");
        let parent = span.parent().and_then(|p| p.extensions().get::<Index>().map(|i| i.0));
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let (name, level) = (attrs.metadata().name(), *attrs.metadata().level());
        let mut recorded = self.0.lock();
        span.extensions_mut().insert(Index(recorded.spans.len()));
        recorded.spans.push(SpanSeen { name, level, parent, fields, follows: Vec::new() });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(i) = index_of(&ctx, id) {
            values.record(&mut Fields(&mut self.0.lock().spans[i].fields));
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        if let (Some(i), Some(from)) = (index_of(&ctx, id), index_of(&ctx, follows)) {
            self.0.lock().spans[i].follows.push(from);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let scope = ctx.event_scope(event).map_or_else(Vec::new, |scope| {
            scope.filter_map(|span| span.extensions().get::<Index>().map(|i| i.0)).collect()
        });
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        self.0.lock().events.push(EventSeen { message, scope });
    }
}

/// What the layer has recorded, installing it on first use; tests tell their spans apart by model name.
fn recorded() -> &'static Mutex<Recorded> {
    static RECORDED: OnceLock<&'static Mutex<Recorded>> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorded: &'static Mutex<Recorded> = Box::leak(Box::default());
        let subscriber = tracing_subscriber::registry().with(Recorder(recorded));
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of this binary");
        recorded
    })
}

/// One worker, batches of exactly [`BATCH`], under the model name `name`.
fn named(name: &str) -> ModelOptions {
    ModelOptions { name: name.into(), ..options(1, policy(usize::from(BATCH), FOREVER)) }
}

/// The `worker` span that span `at` sits in, if any.
fn worker_of(spans: &[SpanSeen], at: usize) -> Option<&SpanSeen> {
    let mut next = Some(at);
    while let Some(i) = next {
        if spans[i].name == "worker" {
            return Some(&spans[i]);
        }
        next = spans[i].parent;
    }
    None
}

/// Whether span `span` is named `name` and belongs to the model `model`.
fn is(span: &SpanSeen, name: &str, model: &str) -> bool {
    span.name == name && span.fields.get("model").is_some_and(|m| m == model)
}

#[test]
fn each_request_span_is_the_callers_child_follows_its_batch_and_holds_its_times() {
    let recorded = recorded();
    let model = start(&echo(), named("spans-batch"));
    let caller = tracing::info_span!("caller", test = "spans-batch");
    assert_own_rows(caller.in_scope(|| submit_all(&model, 0..BATCH)));

    let spans = recorded.lock().spans.clone();
    let caller_at = spans.iter().position(|s| s.name == "caller" && s.fields["test"] == "spans-batch").expect("caller");
    let requests: Vec<_> = spans.iter().filter(|s| is(s, "queued", "spans-batch")).collect();
    assert_eq!(requests.len(), usize::from(BATCH), "one span per request: {requests:?}");
    for request in &requests {
        assert_eq!(request.level, Level::DEBUG, "free at the default info filter");
        assert_eq!(request.parent, Some(caller_at), "a child of the caller's span: {request:?}");
        assert_eq!((request.fields["version"].as_str(), request.fields["batch_size"].as_str()), ("1.0", "4"));
        assert!(request.fields["queue_us"].parse::<u64>().is_ok(), "queue time recorded: {request:?}");
        let &[batch] = request.follows.as_slice() else { panic!("follows exactly one span: {request:?}") };
        let batch_span = &spans[batch];
        assert_eq!((batch_span.name, batch_span.level), ("batch", Level::DEBUG));
        assert_eq!(batch_span.fields["size"], "4");
        let worker = worker_of(&spans, batch).expect("a batch runs inside its worker's span");
        assert_eq!((worker.fields["model"].as_str(), worker.fields["worker"].as_str()), ("spans-batch", "0"));
        assert_eq!(batch_span.fields["worker"], "0");
    }
    let inference: BTreeSet<_> = requests.iter().map(|r| r.fields.get("inference_us")).collect();
    let [Some(took)] = inference.into_iter().collect::<Vec<_>>()[..] else {
        panic!("one batch, one inference time, recorded: {requests:?}")
    };
    assert!(took.parse::<u64>().is_ok(), "inference time in whole microseconds: {took}");
}

#[test]
fn a_workers_span_names_model_version_id_and_device_and_holds_its_log_lines() {
    let recorded = recorded();
    let fake = echo().on(Device::Cuda(1));
    fake.script.push(FakeStep::Fail("out of memory".into()));
    let model = start(&fake, named("spans-fail"));
    for (_, rx) in submit_all(&model, 0..BATCH) {
        assert!(answer(rx).is_err(), "the scripted failure reaches every request");
    }

    let recorded = recorded.lock();
    let spans = &recorded.spans;
    let failed = recorded
        .events
        .iter()
        .filter(|e| e.message == "batch failed")
        .find(|e| {
            e.scope.first().is_some_and(|&at| worker_of(spans, at).is_some_and(|w| is(w, "worker", "spans-fail")))
        })
        .expect("the failed batch is logged inside the worker's span");
    assert_eq!(spans[failed.scope[0]].name, "batch", "inside the batch's span first: {failed:?}");
    let worker = worker_of(spans, failed.scope[0]).expect("found above");
    assert_eq!((worker.level, worker.parent), (Level::INFO, None), "a root span at INFO: {worker:?}");
    let named: Vec<_> = ["model", "version", "worker", "device"].iter().map(|k| worker.fields[*k].as_str()).collect();
    assert_eq!(named, ["spans-fail", "1.0", "0", "cuda:1"]);
}
