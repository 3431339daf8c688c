//! Receivers for the actions tests: a webhook endpoint that records every
//! request and fails or stalls on demand, and an SMTP sink that speaks just
//! enough SMTP for a mail client to hand it messages.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub attempt: String,
    pub signature: Option<String>,
    pub body: Bytes,
    /// The status the receiver answered; 0 while it holds the request.
    pub status: u16,
}

/// A webhook receiver on a free port. It fails (500) while `failures` is
/// positive, counting down, and always when it is negative; before that, it
/// holds the first `stalls` requests without answering for ten minutes.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    failures: Arc<AtomicI64>,
    stalls: Arc<AtomicI64>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let failures = Arc::new(AtomicI64::new(0));
        let stalls = Arc::new(AtomicI64::new(0));
        let state = (got.clone(), failures.clone(), stalls.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (got, failures, stalls) = state.clone();
                async move {
                    let stall = stalls.fetch_sub(1, Ordering::SeqCst) > 0;
                    let left = failures.load(Ordering::SeqCst);
                    let fail = left != 0;
                    if left > 0 {
                        failures.fetch_sub(1, Ordering::SeqCst);
                    }
                    let status = if fail {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    got.lock().expect("lock").push(Received {
                        key: header("Beacon-Idempotency-Key").unwrap_or_default(),
                        attempt: header("Beacon-Attempt").unwrap_or_default(),
                        signature: header("Beacon-Signature"),
                        body,
                        status: if stall { 0 } else { status.as_u16() },
                    });
                    if stall {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                    }
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            got,
            failures,
            stalls,
        }
    }

    /// Fail the next `n` requests; -1 fails every one until changed.
    pub fn fail(&self, n: i64) {
        self.failures.store(n, Ordering::SeqCst);
    }

    /// Hold the next `n` requests unanswered (status 0 in [`Received`]).
    pub fn stall(&self, n: i64) {
        self.stalls.store(n, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Wait (bounded) until `done` holds for what was received.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        for _ in 0..600 {
            let got = self.received();
            if done(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the receiver never saw {what}: {:?}", self.received());
    }
}

/// One message the SMTP sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent, dot-unstuffed.
    pub data: String,
}

/// An SMTP server on a free port that accepts every message (no TLS, no
/// authentication) and keeps it.
#[derive(Debug, Clone)]
pub struct SmtpSink {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let kept = mails.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, kept.clone()));
            }
        });
        SmtpSink { port, mails }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("lock").clone()
    }

    /// Wait (bounded) until a message satisfies `wanted`.
    pub async fn wait_for(&self, what: &str, wanted: impl Fn(&Mail) -> bool) -> Mail {
        for _ in 0..1_800 {
            if let Some(mail) = self.mails().into_iter().find(|m| wanted(m)) {
                return mail;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the SMTP sink never got {what}: {:?}", self.mails());
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Some(line) = lines.next_line().await? {
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
            "HELO" | "RSET" | "NOOP" => b"250 ok\r\n",
            "MAIL" => {
                from = line.get(10..).unwrap_or("").trim().to_owned();
                to.clear();
                b"250 ok\r\n"
            }
            "RCPT" => {
                to.push(line.get(8..).unwrap_or("").trim().to_owned());
                b"250 ok\r\n"
            }
            "DATA" => {
                write.write_all(b"354 go on\r\n").await?;
                let mut data = String::new();
                while let Some(line) = lines.next_line().await? {
                    if line == "." {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push('\n');
                }
                mails.lock().expect("lock").push(Mail {
                    from: from.clone(),
                    to: to.clone(),
                    data,
                });
                b"250 kept\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 not here\r\n",
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
