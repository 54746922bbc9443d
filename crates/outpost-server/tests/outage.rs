//! A database outage is answered with 503 `database_unavailable`, and the server recovers by
//! itself when the database comes back: no restart, no lost state.
//!
//! The outage is real: the server talks to PostgreSQL through a TCP proxy in this test, and
//! the proxy is torn down (listener closed, every open connection cut) and brought back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const PG: &str = "127.0.0.1:5432";

#[allow(dead_code)]
#[path = "common/db.rs"]
mod db;

/// A TCP proxy that can be cut and restored on the same port.
struct Proxy {
    addr: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Proxy {
    async fn start(addr: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(addr).await.expect("binding the proxy port");
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(PG).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { addr, tasks: Some(tasks) }
    }

    /// Closes the listener and cuts every proxied connection (dropping the JoinSets aborts them).
    fn cut(&mut self) {
        self.tasks.take();
    }
}

fn postgres_available() -> bool {
    std::net::TcpStream::connect_timeout(&PG.parse().unwrap(), Duration::from_secs(2)).is_ok()
}

fn get(url: &str, token: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut r = agent.get(url).header("authorization", format!("Bearer {token}")).call().expect("server reachable");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
}

async fn get_async(url: String, token: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || get(&url, &token)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_gives_503_and_the_server_recovers_without_restart() {
    if !postgres_available() {
        assert!(std::env::var_os("CI").is_none(), "PostgreSQL on {PG} is required under CI=true");
        eprintln!("WARNING: PostgreSQL not reachable on {PG}; outage test not run");
        return;
    }
    let direct = db::postgres_url().await.expect("a fresh PostgreSQL schema");
    // Same database and schema, but through the proxy's port.
    let mut proxy = Proxy::start("127.0.0.1:0".parse().unwrap()).await;
    let port = proxy.addr.port();
    let data = tempfile::tempdir().unwrap();
    let config = outpost_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        database: Some(direct.replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"))),
        ..Default::default()
    };
    let server = outpost_server::Server::start(config).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap().trim().to_string();

    let (status, _) = get_async(format!("{base}/v1/devices"), token.clone()).await;
    assert_eq!(status, 200, "healthy before the outage");

    proxy.cut();
    let cut_at = Instant::now();
    let (status, body) = get_async(format!("{base}/v1/devices"), token.clone()).await;
    assert_eq!(status, 503, "during the outage: {body}");
    assert!(body.contains("database_unavailable"), "{body}");
    assert!(cut_at.elapsed() < Duration::from_secs(15), "503 must come quickly, took {:?}", cut_at.elapsed());
    let (status, _) = get_async(format!("{base}/readyz"), token.clone()).await;
    assert_eq!(status, 503, "/readyz reports the outage");
    let (status, _) = get_async(format!("{base}/healthz"), token.clone()).await;
    assert_eq!(status, 200, "the process itself is alive");

    let _proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get_async(format!("{base}/v1/devices"), token.clone()).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery within 30 s: {status} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _) = get_async(format!("{base}/readyz"), token.clone()).await;
    assert_eq!(status, 200);
    server.shutdown().await.expect("clean shutdown");
}
