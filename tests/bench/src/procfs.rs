//! What /proc says about a process (CPU time, memory) and about the machine.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

/// User plus system CPU time of every thread of `pid` so far (`/proc/<pid>/stat`).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&text).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// utime + stime, in clock ticks, from the text of a `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may contain spaces, so fields are counted after the last `)`.
pub fn parse_stat_ticks(stat: &str) -> anyhow::Result<u64> {
    let (_, rest) = stat
        .rsplit_once(')')
        .context("no ')' after the command name")?;
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("only {} fields after the command name", fields.len());
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok(utime + stime)
}

/// CPU time the whole machine spent busy so far (every core: `/proc/stat`, all but idle and
/// iowait).
pub fn machine_busy() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse_busy_ticks(&text).context("parsing /proc/stat")?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Busy ticks of the `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq
/// steal ..., all but idle and iowait.
pub fn parse_busy_ticks(stat: &str) -> anyhow::Result<u64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("a field of the cpu line is not a number")?;
    if fields.len() < 8 {
        bail!("only {} fields on the cpu line", fields.len());
    }
    // guest and guest_nice (9th, 10th) are already counted in user and nice.
    Ok(fields[..8].iter().sum::<u64>() - fields[3] - fields[4])
}

/// `getconf CLK_TCK`: 100 on every Linux this runs on, asked once anyway.
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Resident memory of a process now and at its peak, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// VmRSS.
    pub rss_kib: u64,
    /// VmHWM: the peak resident set since the process started.
    pub hwm_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        parse_status(&text).with_context(|| format!("parsing /proc/{pid}/status"))
    }
}

pub fn parse_status(status: &str) -> anyhow::Result<Memory> {
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("no {name} line"))?;
        let value = line.trim_start_matches(':').split_whitespace().next();
        value
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad {name} line: {line:?}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
    })
}

/// MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The process among `pids` running `binary`.
pub fn find_process(pids: &[u32], binary: &Path) -> anyhow::Result<u32> {
    let binary = binary
        .canonicalize()
        .unwrap_or_else(|_| binary.to_path_buf());
    pids.iter()
        .copied()
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == binary))
        .with_context(|| format!("no running process of {}", binary.display()))
}

/// The 1-minute load average.
pub fn load_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// `/proc/loadavg`'s three load averages.
pub fn load_averages() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// CPU model, core count, memory and kernel, for the report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!(
        "{model}, {cores} cores, {:.1} GiB RAM, Linux {kernel}",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_command_name() {
        let stat = "4242 (mesh webhook) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 25 0 0 20 0 3 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat).expect("parse"), 175);
        assert!(parse_stat_ticks("1 (x) S 1").is_err());
    }

    #[test]
    fn busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 7 3 2 1 9 0\ncpu0 50 2 25 500 3 1 1 0 0 0\n";
        assert_eq!(parse_busy_ticks(stat).expect("parse"), 161);
        assert!(parse_busy_ticks("cpu0 1 2 3\n").is_err());
        assert!(machine_busy().is_ok());
    }

    #[test]
    fn status_memory_lines() {
        let status = "Name:\tmesh-webhook\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status).expect("parse"),
            Memory {
                rss_kib: 10240,
                hwm_kib: 20480
            }
        );
        assert!(parse_status("Name: x\n").is_err());
    }

    #[test]
    fn this_process_is_readable() {
        let pid = std::process::id();
        cpu_time(pid).expect("cpu");
        assert!(Memory::of(pid).expect("memory").rss_kib > 0);
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(find_process(&[pid], &exe).expect("found"), pid);
    }
}
