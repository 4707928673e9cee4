//! Whether a gRPC (HTTP/2) server, such as Spark Connect, serves at an address.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the gRPC probe waits for the server's SETTINGS frame.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTP/2 client connection preface, followed by an empty SETTINGS frame.
const H2_CLIENT_HELLO: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// A SETTINGS acknowledgement, then a GOAWAY (last stream 0, NO_ERROR): a polite goodbye.
const H2_SETTINGS_ACK: [u8; 9] = [0, 0, 0, 4, 1, 0, 0, 0, 0];
const H2_GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const H2_FRAME_SETTINGS: u8 = 0x4;

/// Whether a gRPC (HTTP/2) server serves at `addr`: it accepts a connection and answers the
/// HTTP/2 client preface with its SETTINGS frame within `timeout`. Stronger than a TCP accept:
/// Spark Connect answers only once its gRPC server runs.
pub async fn grpc_serves(addr: SocketAddr, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe_http2(addr))
        .await
        .unwrap_or(false)
}

async fn probe_http2(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(H2_CLIENT_HELLO).await.is_err() {
        return false;
    }
    // The server's connection preface starts with a SETTINGS frame: 3 bytes of length, its
    // type, flags, and stream 0.
    let mut header = [0u8; 9];
    if stream.read_exact(&mut header).await.is_err() {
        return false;
    }
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let serves = header[3] == H2_FRAME_SETTINGS && stream_id == 0 && length.is_multiple_of(6);
    if serves {
        let mut bye = H2_SETTINGS_ACK.to_vec();
        bye.extend_from_slice(&H2_GOAWAY);
        let _ = stream.write_all(&bye).await;
        let _ = stream.shutdown().await;
    }
    serves
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn grpc_probe_needs_an_http2_settings_frame() {
        // A closed port.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(!grpc_serves(closed_addr, Duration::from_secs(1)).await);

        // A TCP server that accepts and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let silent_task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        // Given up after its own timeout (the outer one only keeps a broken probe from hanging
        // the test).
        let probed = tokio::time::timeout(
            Duration::from_secs(30),
            grpc_serves(silent_addr, Duration::from_millis(500)),
        )
        .await;
        assert_eq!(probed, Ok(false));

        // An HTTP/1 server.
        let http1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http1_addr = http1.local_addr().unwrap();
        let http1_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = http1.accept().await {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        assert!(!grpc_serves(http1_addr, Duration::from_secs(1)).await);

        // A server that speaks HTTP/2.
        let h2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h2_addr = h2.local_addr().unwrap();
        let h2_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = h2.accept().await {
                let mut preface = [0u8; 24];
                if stream.read_exact(&mut preface).await.is_ok()
                    && &preface == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                {
                    let _ = stream
                        .write_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])
                        .await;
                }
            }
        });
        assert!(grpc_serves(h2_addr, Duration::from_secs(1)).await);
        assert_eq!(H2_CLIENT_HELLO.len(), 24 + 9);

        silent_task.abort();
        http1_task.abort();
        h2_task.abort();
    }
}
