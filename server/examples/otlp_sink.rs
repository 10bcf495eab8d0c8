//! A minimal OTLP/gRPC trace receiver for benchmarks (`benches/obs-cost.sh`): accepts every export on the address
//! given (default 127.0.0.1:4317), counts the spans, and prints the count when the count changes, at most once a
//! second. It keeps nothing.
//!
//! Usage: `cargo run --release -p ferroserve --example otlp_sink -- 127.0.0.1:4317`

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// Counts the spans it is sent.
#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let export = request.into_inner();
        let spans: usize = export.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args().nth(1).as_deref().unwrap_or("127.0.0.1:4317").parse()?;
    let sink = Sink::default();
    let count = Arc::clone(&sink.0);
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = count.load(Ordering::Relaxed);
            if now != last {
                println!("spans {now}");
                last = now;
            }
        }
    });
    println!("listening on {addr}");
    tonic::transport::Server::builder().add_service(TraceServiceServer::new(sink)).serve(addr).await?;
    Ok(())
}
