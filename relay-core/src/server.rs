//! The TCP front door for the router: plain HTTP or HTTPS (rustls), one
//! hyper HTTP/1.1 connection per client, with the limits that keep hostile
//! clients from holding the relay: a bounded number of connections, a
//! deadline for the TLS handshake and for each request's headers (which also
//! ends idle keep-alive connections), a cap on header count and size, and a
//! graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;

/// Connection limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// Headers per request at most; past it the client gets 431.
    pub max_headers: usize,
}

impl Limits {
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_s),
            handshake_timeout: Duration::from_secs(server.header_read_timeout_s),
            max_connections: server.max_connections,
            max_headers: 64,
        }
    }
}

/// Marks a request that arrived over TLS.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Serves `app` on `listener` until `stop` turns true, then lets requests in
/// flight finish (the caller bounds how long it waits).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(64 * 1024);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = connection_service(app.clone(), peer, acceptor.is_some());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(err) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(err) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn connection_service(
    app: Router,
    peer: SocketAddr,
    tls: bool,
) -> TowerToHyperService<
    tower::util::MapRequest<
        Router,
        impl Fn(Request<Incoming>) -> Request<Incoming> + Clone + Send + Sync + 'static,
    >,
> {
    let tag = move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if tls {
            req.extensions_mut().insert(OverTls);
        }
        req
    };
    TowerToHyperService::new(tower::ServiceExt::map_request(app, tag))
}
