//! A moto server (the AWS emulator) on loopback, for the AWS adapters' tests: S3, DynamoDB,
//! SQS and S3 Vectors (without QueryVectors) answer on one port. Installed by
//! `scripts/setup.sh` into the workspace's `.venv`. The process is killed when the last handle
//! is dropped; tests name their buckets, tables and queues uniquely, so they can share one.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long moto may take to answer after starting (it is ready in about a second).
const STARTUP: Duration = Duration::from_secs(30);

pub struct MotoServer {
    child: Child,
    url: String,
}

/// The server the tests of one process share while at least one of them holds it.
static SHARED: Mutex<Weak<MotoServer>> = Mutex::new(Weak::new());

fn python() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))
}

/// moto's server with DynamoDB's per-item atomicity (see the script).
fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/moto/server.py"))
}

impl MotoServer {
    /// Starts a server of its own on a free port and waits until it accepts connections.
    pub fn start() -> MotoServer {
        let bin = python();
        if !bin.exists() {
            panic!("moto server not installed: run scripts/setup.sh");
        }
        // Port 0 picks a free port; moto takes a port number, so the listener is closed first.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut child = Command::new(&bin)
            .arg(script())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + STARTUP;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto server exited at start-up: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("moto server did not answer on port {port} within {STARTUP:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        MotoServer {
            child,
            url: format!("http://{addr}"),
        }
    }

    /// The server already running for other tests of this process, or a new one.
    pub fn shared() -> Arc<MotoServer> {
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = slot.upgrade() {
            return server;
        }
        let server = Arc::new(MotoServer::start());
        *slot = Arc::downgrade(&server);
        server
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// SDK configuration for this server: region us-east-1, dummy static credentials.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }

    /// S3 with path-style addressing (no bucket subdomains on 127.0.0.1).
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk_config().await)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config().await)
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    pub async fn s3vectors(&self) -> aws_sdk_s3vectors::Client {
        aws_sdk_s3vectors::Client::new(&self.sdk_config().await)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A name no other test (of this run or another) has used: `prefix`, then the process id, the
/// clock and a counter in lowercase hex (valid for buckets, tables, queues and vector indexes).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{:x}-{nanos:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
