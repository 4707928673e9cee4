//! A closed-loop HTTP/1.1 load: keep-alive connections (hyper), one task each, one request at a
//! time, for a fixed time. Shared by the benchmarks that measure request rates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long a request may take before the round is abandoned.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one load round did.
pub struct Round {
    pub requests: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Round {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// GETs `paths` on `addr` over `connections` connections for `duration` (connection `c` cycles
/// over the paths starting at `c`), with `authorization` as the header when given. Any answer but
/// 200 fails the round.
pub async fn load(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    connections: usize,
    duration: Duration,
    authorization: Option<Arc<str>>,
) -> Result<Round, Error> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for c in 0..connections {
        tasks.spawn(connection(
            addr,
            paths.clone(),
            c,
            connections,
            deadline,
            authorization.clone(),
        ));
    }
    let mut round = Round {
        requests: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        let (requests, bytes) = joined??;
        round.requests += requests;
        round.bytes += bytes;
    }
    round.elapsed = started.elapsed();
    Ok(round)
}

/// One connection: requests one at a time until `deadline`. Returns (requests, body bytes).
async fn connection(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    first: usize,
    step: usize,
    deadline: Instant,
    authorization: Option<Arc<str>>,
) -> Result<(u64, u64), Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let (mut requests, mut bytes) = (0u64, 0u64);
    let mut i = first;
    while Instant::now() < deadline {
        let mut request = Request::get(paths[i % paths.len()].as_str())
            .header(hyper::header::HOST, addr.to_string());
        if let Some(value) = &authorization {
            request = request.header(hyper::header::AUTHORIZATION, value.as_ref());
        }
        let request = request.body(Empty::<Bytes>::new())?;
        i += step;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Error>((status, body.len()))
        };
        let (status, len) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| "request timed out")??;
        if status != StatusCode::OK {
            return Err(format!("GET answered {status}").into());
        }
        requests += 1;
        bytes += len as u64;
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    Ok((requests, bytes))
}
