//! What the local platform reads from `/proc`: a process's `stat` (state, process group, start
//! time), its command line and owner, whether it is alive, and who listens on a port.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    pub(super) state: char,
    pub(super) pgrp: i32,
    /// Field 9: the kernel's flags for the process.
    pub(super) flags: u64,
    /// Clock ticks after boot: field 22.
    pub(super) start_time: u64,
}

impl ProcStat {
    pub(super) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    pub(super) fn is_kernel_thread(&self) -> bool {
        const PF_KTHREAD: u64 = 0x0020_0000;
        self.flags & PF_KTHREAD != 0
    }
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of stat(5).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        flags: fields.get(6)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub(super) fn read_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Liveness {
    Alive,
    /// Exited, not reaped yet.
    Zombie,
    /// No such process, or the pid now names another process.
    Gone,
}

pub(super) fn liveness(pid: i32, start_time: u64) -> Liveness {
    if pid <= 1 {
        return Liveness::Gone;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return Liveness::Gone;
    }
    match read_stat(pid) {
        Some(stat) if stat.start_time != start_time => Liveness::Gone,
        Some(stat) if stat.is_dead() => Liveness::Zombie,
        Some(_) => Liveness::Alive,
        None => Liveness::Gone,
    }
}

pub(super) fn all_processes() -> Vec<(i32, ProcStat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

pub(super) fn read_cmdline(pid: i32) -> Option<Vec<String>> {
    let data = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        data.split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// Live processes whose command line holds `--name <name>`: the engine's Spark process, and
/// its launcher while it starts.
pub(super) fn find_engine_processes(name: &str) -> Vec<(i32, ProcStat, Vec<String>)> {
    let me = std::process::id();
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    all_processes()
        .into_iter()
        .filter(|(pid, stat)| {
            u32::try_from(*pid).ok() != Some(me) && !stat.is_dead() && !stat.is_kernel_thread()
        })
        // Only Rucat's own user's processes: on a shared host another user's process may carry
        // an engine's name, and is never the engine's.
        .filter(|(pid, _)| owner_uid(*pid) == Some(uid))
        .filter_map(|(pid, stat)| {
            let args = settled_cmdline(pid)?;
            args.windows(2)
                .any(|pair| pair[0] == "--name" && pair[1] == name)
                .then_some((pid, stat, args))
        })
        .collect()
}

/// The user that owns process `pid`.
pub(super) fn owner_uid(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// The command line of a user process. It reads empty for an instant while the process
/// `exec`s (the launcher scripts of Spark exec several times): read it again then.
pub(super) fn settled_cmdline(pid: i32) -> Option<Vec<String>> {
    for _ in 0..20 {
        let args = read_cmdline(pid)?;
        if !args.is_empty() {
            return Some(args);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PortOwner {
    /// Nothing listens on the port yet.
    Nobody,
    /// The engine's process listens on it.
    Engine,
    /// Another process does.
    Other,
}

/// The first port of the kernel's ephemeral range (from which `bind(0)` picks).
pub(super) fn ephemeral_floor() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Who listens on `port`, as seen from process `pid`'s network namespace.
pub(super) fn port_owner(pid: i32, port: u16) -> PortOwner {
    let mut inodes = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        inodes.extend(listening_inodes(&text, port));
    }
    if inodes.is_empty() {
        return PortOwner::Nobody;
    }
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.filter_map(Result::ok).map(|fd| fd.path()));
    listener_among(fds, &inodes)
}

/// Whether one of a process's open files (`fds`: the links of its `/proc/PID/fd`) is one of
/// the listening sockets `inodes`. Files that cannot be listed (no permission: the process is
/// not Rucat's user's) cannot tell, and are never taken for the engine's.
fn listener_among(
    fds: std::io::Result<impl Iterator<Item = PathBuf>>,
    inodes: &HashSet<u64>,
) -> PortOwner {
    let Ok(mut fds) = fds else {
        return PortOwner::Other;
    };
    let owns = fds.any(|fd| {
        fs::read_link(fd).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    });
    if owns {
        PortOwner::Engine
    } else {
        PortOwner::Other
    }
}

/// The inodes of the sockets listening on `port` in a `/proc/net/tcp{,6}` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let (_, local_port) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(local_port, 16).ok()?;
            (local_port == port && *fields.get(3)? == LISTEN)
                .then(|| fields.get(9)?.parse::<u64>().ok())
                .flatten()
        })
        .filter(|&inode| inode != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_whose_files_cannot_be_listed_does_not_own_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        let table = fs::read_to_string(format!("/proc/{me}/net/tcp")).unwrap();
        let inodes: HashSet<u64> = listening_inodes(&table, port).into_iter().collect();
        assert!(!inodes.is_empty());
        let own_fds = || {
            fs::read_dir(format!("/proc/{me}/fd"))
                .map(|dir| dir.filter_map(Result::ok).map(|fd| fd.path()))
        };
        assert_eq!(listener_among(own_fds(), &inodes), PortOwner::Engine);
        assert_eq!(port_owner(me, port), PortOwner::Engine);
        // Before the fix, a /proc/PID/fd that could not be read counted as the engine's.
        let denied: std::io::Result<std::iter::Empty<PathBuf>> =
            Err(std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(listener_among(denied, &inodes), PortOwner::Other);
        drop(listener);
    }

    #[test]
    fn stat_lines_are_parsed_whatever_the_command_name() {
        let line =
            "4242 (java (x) y) S 1 4242 4242 0 -1 2097152 1 2 3 4 5 6 7 8 20 0 40 0 987654 1 2";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(stat.is_kernel_thread());
        let me = read_stat(std::process::id() as i32).unwrap();
        assert!(!me.is_kernel_thread());
        assert_eq!(
            liveness(std::process::id() as i32, me.start_time),
            Liveness::Alive
        );
        assert_eq!(
            liveness(std::process::id() as i32, me.start_time + 1),
            Liveness::Gone
        );
    }

    #[test]
    fn listening_sockets_are_found_in_proc_net_tables() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0 100 0 0 10 0\n\
   1: 0100007F:3A98 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 15000), vec![123456]);
        assert!(listening_inodes(table, 15001).is_empty());
    }
}
