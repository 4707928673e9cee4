//! What the local platform's tests share: engines, a fake Spark distribution, a platform on
//! temporary directories, and the clean-up of what a failed test left running.

use std::fs;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::process::{engine_process_name, signal_group};
use super::procfs::{all_processes, find_engine_processes, liveness, Liveness};
use super::records::{read_record, ProcessRecord, ENGINES_DIR};
use super::{LocalPlatform, HOST};
use crate::engine::{Engine, EngineId, EngineName, EngineState, EngineType};
use crate::platform::{Platform, ResourceState};

const FAKE_SUBMIT: &str = include_str!("../../../tests/fixtures/local_platform/spark-submit");
const FAKE_SERVER: &str = include_str!("../../../tests/fixtures/local_platform/fake_connect.py");

pub(super) fn engine(configs: &[(&str, &str)]) -> Engine {
    let now = Utc::now();
    Engine {
        id: EngineId::generate(),
        name: EngineName::parse("test").expect("a valid engine name"),
        owner: "tester".to_owned(),
        engine_type: EngineType::Spark,
        version: "4.3.0".to_owned(),
        state: EngineState::TriggerStart,
        error: None,
        configs: configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        endpoint: None,
        create_time: now,
        update_time: now,
        next_update_time: None,
        idle_timeout_minutes: 0,
        secret: None,
        generation: 0,
        failures: 0,
        failing_since: None,
        pool: None,
        handover_secret: None,
    }
}

/// A fake Spark distribution whose spark-submit runs tests/fixtures/local_platform.
pub(super) fn fake_spark_home(core_jar: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("temp dir");
    let bin = home.path().join("bin");
    let jars = home.path().join("jars");
    fs::create_dir_all(&bin).expect("bin");
    fs::create_dir_all(&jars).expect("jars");
    let submit = bin.join("spark-submit");
    fs::write(&submit, FAKE_SUBMIT).expect("spark-submit");
    fs::set_permissions(&submit, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(bin.join("fake_connect.py"), FAKE_SERVER).expect("fake server");
    fs::write(jars.join(core_jar), b"").expect("core jar");
    fs::write(jars.join("spark-connect_2.13-4.3.0.jar"), b"").expect("connect jar");
    home
}

pub(super) struct Fixture {
    pub(super) home: tempfile::TempDir,
    pub(super) data: tempfile::TempDir,
    pub(super) platform: LocalPlatform,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let home = fake_spark_home("spark-core_2.13-4.3.0.jar");
        let data = tempfile::tempdir().expect("temp dir");
        let platform = Self::platform_on(&home, &data);
        Fixture {
            home,
            data,
            platform,
        }
    }

    fn platform_on(home: &tempfile::TempDir, data: &tempfile::TempDir) -> LocalPlatform {
        LocalPlatform::new(
            home.path().to_owned(),
            data.path().to_owned(),
            "local[2]".to_owned(),
        )
        .expect("platform")
    }

    /// Another platform on the same data directory: Rucat after a restart.
    pub(super) fn restarted(&self) -> LocalPlatform {
        Self::platform_on(&self.home, &self.data)
    }

    pub(super) fn record(&self, id: &EngineId) -> ProcessRecord {
        read_record(&self.platform.engine_dir(id))
            .expect("state file readable")
            .expect("state file present")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        kill_leftovers(self.data.path());
    }
}

/// Ends whatever engine processes a failed test left behind under `data_dir`.
fn kill_leftovers(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir.join(ENGINES_DIR)) else {
        return;
    };
    for id in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(EngineId::parse))
    {
        if let Ok(Some(record)) = read_record(&data_dir.join(ENGINES_DIR).join(id.as_str())) {
            if liveness(record.pid, record.proc_start_time) != Liveness::Gone {
                signal_group(record.pgid, libc::SIGKILL);
            }
        }
        for (_, stat, _) in find_engine_processes(&engine_process_name(&id)) {
            signal_group(stat.pgrp, libc::SIGKILL);
        }
    }
}

pub(super) struct KillLeftovers<'a>(pub(super) &'a Path);

impl Drop for KillLeftovers<'_> {
    fn drop(&mut self) {
        kill_leftovers(self.0);
    }
}

pub(super) async fn wait_for_state(
    platform: &LocalPlatform,
    engine: &Engine,
    timeout: Duration,
    done: impl Fn(&ResourceState) -> bool,
) -> ResourceState {
    let deadline = Instant::now() + timeout;
    loop {
        let state = platform.state(engine).await.expect("state");
        if done(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "engine still {state:?} after {timeout:?}; log:\n{}",
            platform
                .logs(&engine.id, 4000)
                .await
                .ok()
                .flatten()
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn is_running(state: &ResourceState) -> bool {
    matches!(state, ResourceState::Running { .. })
}

pub(super) fn group_members(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|(_, stat)| stat.pgrp == pgid && !stat.is_dead())
        .map(|(pid, _)| pid)
        .collect()
}

pub(super) fn engine_leaders(id: &EngineId) -> Vec<i32> {
    find_engine_processes(&engine_process_name(id))
        .into_iter()
        .filter(|(pid, stat, _)| *pid == stat.pgrp)
        .map(|(pid, _, _)| pid)
        .collect()
}

pub(super) fn port_of(state: &ResourceState) -> u16 {
    let ResourceState::Running { endpoint } = state else {
        panic!("not running: {state:?}");
    };
    endpoint
        .strip_prefix("sc://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected endpoint {endpoint}"))
}

pub(super) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(HOST, port))
}

/// `sh -c 'sleep 60' --name NAME`: a process whose command line carries an engine's name,
/// run as `uid` when given (the tests run as root, which may start processes of any user).
pub(super) fn impostor(name: &str, uid: Option<u32>) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("/bin/sh");
    // Two commands, so that the shell stays (it would exec a single one, losing the name).
    command
        .args(["-c", "sleep 60; true", "--name", name])
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command
        .spawn()
        .expect("start a process (as another user: the tests must run as root)")
}
