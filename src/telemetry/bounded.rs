//! The bounded export queue. The SDK's batch processor already has a
//! bounded queue, but it only logs its drops; agentd counts them for the
//! metrics. So this wrapper keeps the bound itself: a span enters the
//! batch processor only while fewer than `cap` spans are queued or being
//! exported (the exporter wrapper gives the room back when an export
//! returns, sent or failed); otherwise it is dropped and counted at once.
//! The inner queue is sized above `cap`, so it never drops on its own.
//! A collector that is down makes exports fail (or time out) on the export
//! thread; the agent's code only ever does an atomic add here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};

/// Spans queued or in export at most, unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise.
pub const DEFAULT_QUEUE: usize = 2048;

pub fn processor<E: SpanExporter + 'static>(exporter: E, cap: usize, dropped: &'static AtomicU64) -> Bounded {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let exporter = Settling {
        inner: exporter,
        in_flight: in_flight.clone(),
    };
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(cap.saturating_mul(2).max(2))
        .build();
    Bounded {
        inner: BatchSpanProcessor::builder(exporter).with_batch_config(config).build(),
        in_flight,
        cap,
        dropped,
    }
}

#[derive(Debug)]
pub struct Bounded {
    inner: BatchSpanProcessor,
    in_flight: Arc<AtomicUsize>,
    cap: usize,
    dropped: &'static AtomicU64,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.cap).then_some(n + 1));
        match taken {
            Ok(_) => self.inner.on_end(span),
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, giving back the room of every batch it has finished with.
#[derive(Debug)]
struct Settling<E> {
    inner: E,
    in_flight: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Settling<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| Some(f.saturating_sub(n)));
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
