//! A local `nats-server` with JetStream, for `beacon up`, `beacon bench` and tests:
//! found on disk, started on loopback (a free port unless one is configured),
//! supervised, and stopped cleanly.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::connect::{MIN_SERVER_VERSION, version_supported};

/// Why no local server could be run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "no nats-server {}.{}+ found{old} (looked at nats.server_binary, on PATH and in {tools}).\n\
         Install one with `scripts/install-nats-server.sh` (it puts the pinned release in tools/), \
         set BEACON_NATS__SERVER_BINARY=/path/to/nats-server, or use a running server with --nats-url",
        MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
    )]
    NotFound { tools: String, old: String },
    #[error("{path}: {problem}")]
    BadBinary { path: PathBuf, problem: String },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server did not start: {log_tail}")]
    Exited { log_tail: String },
    #[error("nats-server did not report its port within {0:?}")]
    Timeout(Duration),
    /// Another process runs a server on this store; two would corrupt it.
    #[error(
        "{path} is in use by another Beacon process (another `beacon up` on the same data directory?)"
    )]
    InUse { path: PathBuf },
}

/// The version a nats-server binary reports, e.g. `2.12.8`.
pub fn binary_version(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    Some(version.to_owned())
}

/// Find a nats-server 2.11+: the configured one, else on PATH, else in a `tools/`
/// folder beside the working directory or the `beacon` executable (or above them).
pub fn find_server_binary(configured: Option<&Path>) -> Result<PathBuf, ServerError> {
    if let Some(path) = configured {
        return match binary_version(path) {
            Some(v) if version_supported(&v) => Ok(path.to_owned()),
            Some(v) => Err(ServerError::BadBinary {
                path: path.to_owned(),
                problem: format!(
                    "nats-server {v} is too old; Beacon needs {}.{}+",
                    MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
                ),
            }),
            None => Err(ServerError::BadBinary {
                path: path.to_owned(),
                problem: "not a runnable nats-server".into(),
            }),
        };
    }
    let mut old = Vec::new();
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for candidate in on_path.into_iter().filter(|p| p.is_file()) {
        match binary_version(&candidate) {
            Some(v) if version_supported(&v) => return Ok(candidate),
            Some(v) => old.push(format!("{} is {v}", candidate.display())),
            None => {}
        }
    }
    let tool_dirs = tools_dirs();
    let mut best: Option<(semver::Version, PathBuf)> = None;
    for dir in &tool_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let candidate = entry.path().join("bin").join("nats-server");
            let Some(v) = binary_version(&candidate) else {
                continue;
            };
            match semver::Version::parse(&v) {
                Ok(parsed)
                    if version_supported(&v) && best.as_ref().is_none_or(|(b, _)| parsed > *b) =>
                {
                    best = Some((parsed, candidate));
                }
                _ => {}
            }
        }
    }
    best.map(|(_, path)| path)
        .ok_or_else(|| ServerError::NotFound {
            tools: tool_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            old: if old.is_empty() {
                String::new()
            } else {
                format!(" ({})", old.join("; "))
            },
        })
}

/// `tools/` folders at and above the working directory and the running executable.
pub fn tools_dirs() -> Vec<PathBuf> {
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        starts.push(dir.to_owned());
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for start in starts {
        for ancestor in start.ancestors() {
            let tools = ancestor.join("tools");
            if tools.is_dir() && !dirs.contains(&tools) {
                dirs.push(tools);
            }
        }
    }
    dirs
}

/// A running nats-server child process with JetStream on loopback.
///
/// It holds a lock on its store for its whole life, and the server writes its
/// pid into the store: if the process that started it is killed without a
/// chance to stop it, the next start on the same store finds the orphan by that
/// pid and stops it before starting a new one, and a second process trying the
/// same store while the first lives is refused.
#[derive(Debug)]
pub struct LocalServer {
    child: Option<Child>,
    /// Held while this process owns the store; the OS drops it when the process dies.
    _lock: std::fs::File,
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    options: ServerOptions,
}

/// How a local server is run, beyond its binary, folder and port.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// JetStream on (Beacon needs it; tests turn it off to check the refusal).
    pub jetstream: bool,
    /// The server's name; JetStream peers in a cluster must each have their own.
    pub server_name: String,
    /// Join a cluster (routes on loopback); `None` runs a single server.
    pub cluster: Option<ClusterOptions>,
    /// More nats-server arguments, e.g. `--user`/`--pass` or `--config`.
    pub extra_args: Vec<String>,
}

/// One member's part of a cluster on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// The cluster's name, the same on every member.
    pub name: String,
    /// This member's route port. Fixed, not picked at start, because the other
    /// members must know it before it runs (and again after a restart).
    pub port: u16,
    /// The other members' route ports.
    pub routes: Vec<u16>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            jetstream: true,
            server_name: "beacon-local".to_owned(),
            cluster: None,
            extra_args: Vec::new(),
        }
    }
}

/// How long a starting server may take to report its port.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// In the store: locked by the process that runs the server on it.
const LOCK_FILE: &str = "beacon.lock";
/// In the store: the running server's pid, written by nats-server itself.
const PID_FILE: &str = "nats-server.pid";

/// Stop a server left running on `dir` by a process that died without stopping
/// it. Only a live process whose command line names this store is signalled, so
/// a pid the system has since given to another program is left alone.
async fn stop_orphan(dir: &Path) {
    let pid_path = dir.join(PID_FILE);
    let Some(pid) = std::fs::read_to_string(&pid_path)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
    else {
        return;
    };
    let serves_dir = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|b| *b == 0)
                .any(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)) == dir)
        })
    };
    if !serves_dir(pid) {
        let _ = std::fs::remove_file(&pid_path);
        return;
    }
    tracing::warn!(pid, store = %dir.display(), "stopping a nats-server left running by an earlier Beacon");
    let pid_t = Pid::from_raw(pid);
    let _ = kill(pid_t, Signal::SIGTERM);
    for _ in 0..500 {
        if !serves_dir(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = kill(pid_t, Signal::SIGKILL);
    while serves_dir(pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl LocalServer {
    /// Start `binary` with its JetStream store and log in `dir`, on `port` (0: a free one).
    pub async fn start(binary: &Path, dir: &Path, port: u16) -> Result<Self, ServerError> {
        Self::start_with(binary, dir, port, ServerOptions::default()).await
    }

    /// As [`LocalServer::start`], with options (tests run servers without JetStream,
    /// or requiring credentials).
    pub async fn start_with(
        binary: &Path,
        dir: &Path,
        port: u16,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let io = |source| ServerError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let dir = dir.canonicalize().map_err(io)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::File::create(&lock_path).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ServerError::InUse { path: dir });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        stop_orphan(&dir).await;
        let mut server = LocalServer {
            child: None,
            _lock: lock,
            binary: binary.to_owned(),
            dir,
            port,
            options,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<(), ServerError> {
        let io = |source| ServerError::Io {
            path: self.dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&self.dir).map_err(io)?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "ports") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let log_path = self.dir.join("nats-server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io)?;
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let mut command = Command::new(&self.binary);
        if self.options.jetstream {
            command.arg("--jetstream");
        }
        if let Some(cluster) = &self.options.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            command
                .args(["--cluster_name", &cluster.name])
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", cluster.port))
                .arg("--routes")
                .arg(routes.join(","));
        }
        command.args(&self.options.extra_args);
        let child = command
            .args([
                "--addr",
                "127.0.0.1",
                "--port",
                &port,
                "--server_name",
                &self.options.server_name,
            ])
            .arg("--store_dir")
            .arg(&self.dir)
            .arg("--ports_file_dir")
            .arg(&self.dir)
            .arg("--pid")
            .arg(self.dir.join(PID_FILE))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| ServerError::Io {
                path: self.binary.clone(),
                source,
            })?;
        let pid = child.id();
        self.child = Some(child);
        let ports_file = self.dir.join(format!(
            "{}_{pid}.ports",
            self.binary
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("nats-server")
        ));
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(port) = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|t| port_from_ports_file(&t))
            {
                self.port = port;
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return Err(ServerError::Exited {
                    log_tail: tail(&log_path),
                });
            }
            if tokio::time::Instant::now() > deadline {
                self.kill();
                return Err(ServerError::Timeout(START_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (false once it exited on its own).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Stop cleanly: SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        for _ in 0..500 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stop as a crash would: SIGKILL, no chance to flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze the process (SIGSTOP), as an overloaded or stalled server looks to
    /// its clients: connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Let a paused process run again (SIGCONT).
    pub fn unpause(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Start again on the same port with the same store (after `stop` or `kill`).
    pub async fn resume(&mut self) -> Result<(), ServerError> {
        if self.is_running() {
            return Ok(());
        }
        self.spawn().await
    }

    /// Stop cleanly and start again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), ServerError> {
        self.stop().await;
        self.spawn().await
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn port_from_ports_file(text: &str) -> Option<u16> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let url = value.get("nats")?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_files_give_the_client_port() {
        let text = r#"{"nats":["nats://127.0.0.1:40123"],"monitoring":["http://127.0.0.1:8222"]}"#;
        assert_eq!(port_from_ports_file(text), Some(40123));
        assert_eq!(port_from_ports_file("{}"), None);
    }
}
