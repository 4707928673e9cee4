//! What the local platform keeps on disk per engine, under `<data dir>/engines/<engine id>/`
//! (the table in the local platform's documentation): the names of the files, the records
//! `process.json` and `exit_status.json`, writing them whole, reading the driver log's tail, and
//! the engine's lock file.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::EngineId;
use crate::platform::flock::FileLock;
use crate::platform::PlatformError;

pub(super) const ENGINES_DIR: &str = "engines";
pub(super) const STATE_FILE: &str = "process.json";
pub(super) const EXIT_FILE: &str = "exit_status.json";
pub(super) const LOG_FILE: &str = "driver.log";
pub(super) const CONF_FILE: &str = "engine.conf";
const LOCK_FILE: &str = "lock";
pub(super) const WORK_DIR: &str = "work";
pub(super) const SCRATCH_DIR: &str = "tmp";

/// How long `create`, `delete` and `forget` wait for another one on the same engine.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the driver log quoted in a failure message, and their bounds.
pub(super) const FAILURE_LOG_LINES: usize = 5;
const FAILURE_LOG_LINE_CHARS: usize = 400;
const FAILURE_LOG_BYTES: usize = 64 * 1024;

/// What `process.json` holds: enough to find the engine's process again, and to never mistake
/// another process (after pid reuse) for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ProcessRecord {
    pub(super) pid: i32,
    /// The process group (the process leads its own: equal to `pid`).
    pub(super) pgid: i32,
    /// The Spark Connect port on 127.0.0.1.
    pub(super) port: u16,
    /// The process's start time in clock ticks after boot: field 22 of `/proc/<pid>/stat`.
    pub(super) proc_start_time: u64,
    pub(super) started_at: DateTime<Utc>,
    pub(super) master: String,
    pub(super) spark_home: PathBuf,
    /// The engine's generation that started the process (0 in records of older Rucats).
    #[serde(default)]
    pub(super) generation: u64,
}

impl ProcessRecord {
    pub(super) fn is_valid(&self) -> bool {
        // Never let a damaged file make us signal pid 0, 1 or -1 (everything).
        self.pid > 1 && self.pgid > 1 && self.port != 0
    }
}

/// What `exit_status.json` holds: how a process started by this Rucat process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ExitRecord {
    pub(super) pid: i32,
    pub(super) proc_start_time: u64,
    pub(super) code: Option<i32>,
    pub(super) signal: Option<i32>,
    pub(super) exited_at: DateTime<Utc>,
}

impl ExitRecord {
    pub(super) fn is_of(&self, record: &ProcessRecord) -> bool {
        self.pid == record.pid && self.proc_start_time == record.proc_start_time
    }

    pub(super) fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}{}", signal_name(signal)),
            (None, None) => "ended, how is unknown".to_owned(),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGQUIT => " (SIGQUIT)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` whole or not at all (a temporary file renamed over it).
pub(super) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fn write(tmp: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(tmp, path)
    }
    let written = write(&tmp, path, &data);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes a file only its owner can read.
pub(super) fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(data)
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn read_record(dir: &Path) -> Result<Option<ProcessRecord>, PlatformError> {
    let path = dir.join(STATE_FILE);
    let record: Option<ProcessRecord> = read_json(&path).map_err(PlatformError::io(format!(
        "reading the state file {}",
        path.display()
    )))?;
    match record {
        Some(record) if !record.is_valid() => Err(PlatformError::Inspect(format!(
            "the state file {} names no valid process (pid {}, process group {}, port {})",
            path.display(),
            record.pid,
            record.pgid,
            record.port
        ))),
        record => Ok(record),
    }
}

pub(super) fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub(super) fn remove_dir_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The last `max_bytes` (at most) of a file, starting at a character boundary; `None` if there
/// is no such file.
pub(super) fn read_tail(path: &Path, max_bytes: usize) -> io::Result<Option<String>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let max = u64::try_from(max_bytes).unwrap_or(u64::MAX);
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    file.take(max).read_to_end(&mut data)?;
    // Skip a character cut by the start (UTF-8 continuation bytes are 0b10xx_xxxx).
    let skip = if start > 0 {
        data.iter()
            .take(3)
            .take_while(|&&b| b & 0xc0 == 0x80)
            .count()
    } else {
        0
    };
    Ok(Some(String::from_utf8_lossy(&data[skip..]).into_owned()))
}

/// The last few meaningful lines of a driver log, for a failure message: stack frames are left
/// out (the exception's message says more), lines are bounded. When Spark logged an error
/// before the last lines (it logs its whole shutdown after the error that ended it), the error
/// and the line after it (usually the exception) come first.
pub(super) fn last_log_lines(path: &Path) -> String {
    let Ok(Some(tail)) = read_tail(path, FAILURE_LOG_BYTES) else {
        return String::new();
    };
    let lines: Vec<&str> = tail
        .lines()
        .map(str::trim_end)
        .filter(|line| {
            let trimmed = line.trim_start();
            let stack_frame = trimmed.starts_with("at ")
                || (trimmed.starts_with("... ") && trimmed.ends_with(" more"));
            !trimmed.is_empty() && !stack_frame
        })
        .collect();
    let first = lines.len().saturating_sub(FAILURE_LOG_LINES);
    let mut picked: Vec<&str> = Vec::new();
    if let Some(error) = lines[..first]
        .iter()
        .rposition(|line| line.contains(" ERROR "))
    {
        picked.extend(&lines[error..(error + 2).min(first)]);
        picked.push("…");
    }
    let rest = FAILURE_LOG_LINES
        .saturating_sub(picked.len().saturating_sub(1))
        .max(1);
    picked.extend(&lines[lines.len().saturating_sub(rest)..]);
    picked
        .iter()
        .map(|line| {
            if line.chars().count() > FAILURE_LOG_LINE_CHARS {
                let cut: String = line.chars().take(FAILURE_LOG_LINE_CHARS).collect();
                format!("{cut}…")
            } else {
                (*line).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Holds the engine's lock file while an engine is created, deleted or forgotten.
pub(super) async fn lock_engine(dir: &Path, id: &EngineId) -> Result<FileLock, PlatformError> {
    FileLock::acquire(
        &dir.join(LOCK_FILE),
        &format!("engine {id} (another create, delete or forget)"),
        LOCK_TIMEOUT,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tails_start_at_a_character_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        assert_eq!(read_tail(&path, 10).unwrap(), None);
        fs::write(&path, "ééééé").unwrap(); // 10 bytes
        assert_eq!(read_tail(&path, 100).unwrap().unwrap(), "ééééé");
        assert_eq!(read_tail(&path, 5).unwrap().unwrap(), "éé");
        assert_eq!(read_tail(&path, 4).unwrap().unwrap(), "éé");
        assert_eq!(read_tail(&path, 0).unwrap().unwrap(), "");

        let log = "INFO starting\nException in thread \"main\" java.lang.IllegalStateException: boom\n\
\tat org.apache.spark.Foo.bar(Foo.scala:1)\n\tat org.apache.spark.Foo.baz(Foo.scala:2)\n\t... 3 more\n";
        fs::write(&path, log).unwrap();
        assert_eq!(
            last_log_lines(&path),
            "INFO starting\nException in thread \"main\" java.lang.IllegalStateException: boom"
        );

        // What Spark Connect logs when it cannot bind: the error, then its whole shutdown.
        let mut log =
            String::from("26/11/23 09:36:30 INFO SparkContext: Running Spark version 4.3.0\n");
        log.push_str(
            "26/11/23 09:36:41 ERROR SparkConnectServer: Error starting Spark Connect server\n",
        );
        log.push_str("java.net.BindException: Failed to bind to address 999.1.1.1:15997\n");
        log.push_str("\tat org.sparkproject.connect.grpc.Foo.bar(Foo.java:1)\n");
        for i in 0..30 {
            log.push_str(&format!(
                "26/11/23 09:36:41 INFO ShutdownHookManager: step {i}\n"
            ));
        }
        fs::write(&path, &log).unwrap();
        let lines = last_log_lines(&path);
        assert_eq!(
            lines.lines().collect::<Vec<_>>(),
            vec![
                "26/11/23 09:36:41 ERROR SparkConnectServer: Error starting Spark Connect server",
                "java.net.BindException: Failed to bind to address 999.1.1.1:15997",
                "…",
                "26/11/23 09:36:41 INFO ShutdownHookManager: step 27",
                "26/11/23 09:36:41 INFO ShutdownHookManager: step 28",
                "26/11/23 09:36:41 INFO ShutdownHookManager: step 29",
            ]
        );
    }
}
