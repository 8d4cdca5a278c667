//! Memory available to this process before a load: the host's `MemAvailable`, or the room left
//! under a cgroup memory limit when that is smaller (a container's limit is not the node's free
//! memory). cgroup v2: `memory.max - memory.current` of this process's cgroup and each of its
//! ancestors ("max" meaning none); cgroup v1, likewise: `memory.limit_in_bytes -
//! memory.usage_in_bytes` (a huge number meaning none).
//! The paths are fields so tests can point them at sample files.

use std::path::{Path, PathBuf};

/// Where the numbers are read from.
#[derive(Clone, Debug)]
pub struct MemorySources {
    pub meminfo: PathBuf,
    /// This process's cgroup membership (`/proc/self/cgroup`).
    pub self_cgroup: PathBuf,
    /// Where the cgroup filesystem is mounted.
    pub cgroup_root: PathBuf,
}

impl Default for MemorySources {
    fn default() -> MemorySources {
        MemorySources {
            meminfo: "/proc/meminfo".into(),
            self_cgroup: "/proc/self/cgroup".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
        }
    }
}

/// The memory a load may use, and which limit set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    pub limit: Limit,
}

/// Which limit applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The host's `MemAvailable`.
    Host,
    /// A cgroup v2 `memory.max` in this folder.
    CgroupV2(PathBuf),
    /// The cgroup v1 `memory.limit_in_bytes` in this folder.
    CgroupV1(PathBuf),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Host => f.write_str("MemAvailable in /proc/meminfo"),
            Limit::CgroupV2(dir) => write!(f, "cgroup v2 memory.max in {}", dir.display()),
            Limit::CgroupV1(dir) => {
                write!(f, "cgroup v1 memory.limit_in_bytes in {}", dir.display())
            }
        }
    }
}

/// The smallest of the limits that can be read; none when no source can be read.
pub fn available(src: &MemorySources) -> Option<Available> {
    let host = read(&src.meminfo)
        .and_then(|t| parse_meminfo(&t))
        .map(|bytes| Available {
            bytes,
            limit: Limit::Host,
        });
    [host, cgroup_v2(src), cgroup_v1(src)]
        .into_iter()
        .flatten()
        .min_by_key(|a| a.bytes)
}

/// `MemAvailable` in bytes from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// This process's cgroup path from `/proc/self/cgroup` text (`id:controllers:path` lines): the
/// v2 one (`0::/a/b`) for `controller` "", else the v1 hierarchy holding `controller`.
pub fn parse_self_cgroup<'a>(text: &'a str, controller: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let found = if controller.is_empty() {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        found.then_some(path)
    })
}

/// The room under a limit: `limit - usage`, or none when the limit is "max" or unreadable.
/// cgroup v1 writes "no limit" as a huge number (a page-aligned `i64::MAX`), taken as none.
pub fn parse_headroom(limit: &str, usage: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

/// The tightest `memory.max` from this process's cgroup up to the root.
fn cgroup_v2(src: &MemorySources) -> Option<Available> {
    let leaf = leaf(src, "");
    let (bytes, dir) = tightest(&src.cgroup_root, &leaf, "memory.max", "memory.current")?;
    Some(Available {
        bytes,
        limit: Limit::CgroupV2(dir),
    })
}

/// The tightest `memory.limit_in_bytes` of the v1 memory controller, from this process's cgroup
/// up to the hierarchy's root (which is the container's own cgroup where the mount is private).
fn cgroup_v1(src: &MemorySources) -> Option<Available> {
    let top = src.cgroup_root.join("memory");
    let leaf = leaf(src, "memory");
    let limit = "memory.limit_in_bytes";
    let (bytes, dir) = tightest(&top, &leaf, limit, "memory.usage_in_bytes")?;
    Some(Available {
        bytes,
        limit: Limit::CgroupV1(dir),
    })
}

/// This process's cgroup path for `controller` (see `parse_self_cgroup`); "/" when unknown.
fn leaf(src: &MemorySources, controller: &str) -> String {
    read(&src.self_cgroup)
        .and_then(|t| parse_self_cgroup(&t, controller).map(str::to_string))
        .unwrap_or_else(|| "/".into())
}

/// The least room under `limit_file` from `top/leaf` up to `top` (folders that do not exist,
/// as a host path seen from inside a container, are skipped), with the folder that set it.
fn tightest(top: &Path, leaf: &str, limit_file: &str, usage_file: &str) -> Option<(u64, PathBuf)> {
    let mut dir = top.join(leaf.trim_start_matches('/'));
    let mut best: Option<(u64, PathBuf)> = None;
    loop {
        let room = read(&dir.join(limit_file))
            .zip(read(&dir.join(usage_file)))
            .and_then(|(limit, usage)| parse_headroom(&limit, &usage));
        if let Some(bytes) = room.filter(|b| best.as_ref().is_none_or(|(least, _)| b < least)) {
            best = Some((bytes, dir.clone()));
        }
        if dir == top || !dir.pop() || !dir.starts_with(top) {
            return best;
        }
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str =
        "MemTotal:       16314336 kB\nMemFree:         1101212 kB\nMemAvailable:    8000000 kB\n";

    #[test]
    fn meminfo_gives_mem_available_in_bytes() {
        assert_eq!(parse_meminfo(MEMINFO), Some(8_000_000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn headroom_is_limit_minus_usage_and_max_means_none() {
        assert_eq!(
            parse_headroom("1073741824\n", "73741824\n"),
            Some(1_000_000_000)
        );
        assert_eq!(parse_headroom("max\n", "5\n"), None);
        assert_eq!(parse_headroom("100", "200"), Some(0));
        // cgroup v1 without a limit.
        assert_eq!(parse_headroom("9223372036854771712\n", "5\n"), None);
    }

    #[test]
    fn the_cgroup_path_comes_from_the_unified_or_the_memory_line() {
        let text = "12:cpu,memory:/legacy\n1:name=systemd:/s\n0::/kubepods/pod1/ctr\n";
        assert_eq!(parse_self_cgroup(text, ""), Some("/kubepods/pod1/ctr"));
        assert_eq!(parse_self_cgroup(text, "memory"), Some("/legacy"));
        assert_eq!(parse_self_cgroup("4:memory:/x\n", ""), None);
        assert_eq!(parse_self_cgroup("0::/\n", "memory"), None);
    }

    /// A fake /proc and cgroup tree under a temp folder.
    struct Fake(PathBuf);

    impl Fake {
        fn new(name: &str) -> Fake {
            let dir = std::env::temp_dir().join(format!("ls-mem-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("cg")).unwrap();
            std::fs::write(dir.join("meminfo"), MEMINFO).unwrap();
            Fake(dir)
        }
        fn file(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        fn sources(&self) -> MemorySources {
            MemorySources {
                meminfo: self.0.join("meminfo"),
                self_cgroup: self.0.join("self_cgroup"),
                cgroup_root: self.0.join("cg"),
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_cgroup_v2_limit_below_mem_available_applies() {
        let f = Fake::new("v2");
        f.file("self_cgroup", "0::/\n");
        f.file("cg/memory.max", "2147483648\n");
        f.file("cg/memory.current", "1073741824\n");
        let a = available(&f.sources()).unwrap();
        assert_eq!(a.bytes, 1 << 30);
        assert_eq!(a.limit, Limit::CgroupV2(f.0.join("cg")));
    }

    #[test]
    fn the_tightest_ancestor_limit_applies_and_max_is_no_limit() {
        let f = Fake::new("v2-nested");
        f.file("self_cgroup", "0::/pod/ctr\n");
        f.file("cg/pod/ctr/memory.max", "max\n");
        f.file("cg/pod/ctr/memory.current", "100\n");
        f.file("cg/pod/memory.max", "1000000\n");
        f.file("cg/pod/memory.current", "400000\n");
        let a = available(&f.sources()).unwrap();
        assert_eq!(a.bytes, 600_000);
        assert_eq!(a.limit, Limit::CgroupV2(f.0.join("cg/pod")));
    }

    #[test]
    fn mem_available_applies_when_it_is_smaller_or_there_is_no_limit() {
        let f = Fake::new("host");
        f.file("self_cgroup", "0::/\n");
        f.file("cg/memory.max", "max\n");
        f.file("cg/memory.current", "100\n");
        let a = available(&f.sources()).unwrap();
        assert_eq!((a.bytes, a.limit), (8_000_000 * 1024, Limit::Host));
        f.file("cg/memory.max", "999999999999\n");
        assert_eq!(available(&f.sources()).unwrap().limit, Limit::Host);
    }

    #[test]
    fn a_cgroup_v1_limit_applies_without_v2() {
        let f = Fake::new("v1");
        // The host's path, absent inside the container: its mount's root is the container's.
        f.file("self_cgroup", "5:memory:/docker/abc\n0::/\n");
        f.file("cg/memory/memory.limit_in_bytes", "536870912\n");
        f.file("cg/memory/memory.usage_in_bytes", "36870912\n");
        let a = available(&f.sources()).unwrap();
        assert_eq!(a.bytes, 500_000_000);
        assert_eq!(a.limit, Limit::CgroupV1(f.0.join("cg/memory")));
    }

    #[test]
    fn a_cgroup_v1_limit_on_this_process_s_own_cgroup_applies() {
        let f = Fake::new("v1-nested");
        f.file("self_cgroup", "4:memory:/jobs/j1\n");
        f.file("cg/memory/memory.limit_in_bytes", "9223372036854771712\n");
        f.file("cg/memory/memory.usage_in_bytes", "5\n");
        f.file("cg/memory/jobs/j1/memory.limit_in_bytes", "2000000\n");
        f.file("cg/memory/jobs/j1/memory.usage_in_bytes", "500000\n");
        let a = available(&f.sources()).unwrap();
        assert_eq!(a.bytes, 1_500_000);
        assert_eq!(a.limit, Limit::CgroupV1(f.0.join("cg/memory/jobs/j1")));
    }

    #[test]
    fn nothing_readable_means_no_check() {
        let f = Fake::new("none");
        std::fs::remove_file(f.0.join("meminfo")).unwrap();
        assert_eq!(available(&f.sources()), None);
    }
}
