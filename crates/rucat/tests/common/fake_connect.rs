//! A stand-in Spark Connect server for tests of the monitor where no Spark runs (a Kubernetes
//! API double plays the cluster): it answers every gRPC call with a status, OK while healthy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub struct FakeSparkConnect {
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSparkConnect {
    /// Serves on 127.0.0.1, on the current runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let healthy = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicUsize::new(0));
        let (h, c) = (healthy.clone(), calls.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, c) = (h.clone(), c.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        c.fetch_add(1, Ordering::Relaxed);
                        let code = if h.load(Ordering::Relaxed) { "0" } else { "14" };
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(StatusCode::OK)
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", code)
                                    .body(Empty::<Bytes>::new())
                                    .expect("a response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeSparkConnect {
            addr,
            healthy,
            calls,
            task,
        }
    }

    /// From now on calls are answered UNAVAILABLE (`false`) or OK.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for FakeSparkConnect {
    fn drop(&mut self) {
        self.task.abort();
    }
}
